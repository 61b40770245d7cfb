"""Fixtures for the agent LM tests: one tokenizer trained on the seed corpus, tiny random models."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from agent.config import AgentConfig
from agent.corpus import seed_corpus
from agent.model import VoxAgentModel
from agent.sandbox.outcome import Feedback, StepOutcome
from agent.tokenizer import AgentTokenizer, train_tokenizer


@pytest.fixture(autouse=True)
def one_torch_thread():
    """The tiny LM is latency-bound; two OpenMP threads on the shared 2-core machine stall each other."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def tokenizer(tmp_path_factory) -> AgentTokenizer:
    out = tmp_path_factory.mktemp("tok") / "tokenizer.model"
    return train_tokenizer(seed_corpus(800, seed=0), vocab_size=1000, out_path=out, num_threads=1)


@pytest.fixture(scope="session")
def tiny_cfg(tokenizer) -> AgentConfig:
    # tiny preset shapes, 2 layers to keep the suite fast (the path under test is the same)
    return AgentConfig.from_preset("tiny", tokenizer, num_layers=2, max_positions=1024)


@pytest.fixture(scope="session")
def random_model(tiny_cfg) -> VoxAgentModel:
    torch.manual_seed(0)
    return VoxAgentModel(tiny_cfg).eval()


class RecordingExecutor:
    """A scripted stand-in for the sandbox: returns prepared outcomes and records what it was given."""

    def __init__(self, outcomes: list[StepOutcome] | None = None, default: StepOutcome | None = None) -> None:
        self.outcomes = list(outcomes or [])
        self.default = default or StepOutcome(error="name 'x' is not defined")
        self.calls: list[tuple[str, list[torch.Tensor]]] = []
        self.inference_mode: list[bool] = []  # the sandbox must run outside the LM's inference mode
        self.threads: list[int] = []

    def execute_step(self, code, phis=None):
        self.calls.append((code, list(phis or [])))
        self.inference_mode.append(torch.is_inference_mode_enabled())
        self.threads.append(torch.get_num_threads())
        outcome = self.outcomes.pop(0) if self.outcomes else self.default
        outcome.phis_used = outcome.phis_used or len(phis or [])
        return outcome


def vectors(n: int, d: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)


def text_and_vector_outcome(d: int, seed: int = 1) -> StepOutcome:
    return StepOutcome(feedback=[Feedback(text="1234.5 mL"), Feedback(vectors=vectors(2, d, seed))])
