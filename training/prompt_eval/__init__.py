"""Judged evaluation of freely worded requests (`voxagent eval --prompts FILE`).

``cases`` synthesizes a case with known truth per request, ``program`` reads what the agent's code
did, ``targets`` maps target words and generate() targets onto the target table, ``judge`` scores a
run, ``runner`` ties them to the checkpoint and writes the report.
"""
from training.prompt_eval.runner import DEFAULT_OUT, evaluate_prompts, load_requests, markdown, write_report

__all__ = ["DEFAULT_OUT", "evaluate_prompts", "load_requests", "markdown", "write_report"]
