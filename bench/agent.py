"""Agent LM speed: greedy decoding throughput and first-step latency (tiny preset; paper preset too).

Definitions
- tokens_per_s: greedy decoding with the KV cache, one token per forward, after a ~70-token
  prompt; includes everything the runtime does per token (forward, lm head, argmax, phi check).
- first_step_ms: from "prompt and scan metadata known" to "first step of code decoded": tokenize
  mu_1, open a session (static KV cache), prefill mu_1, decode 32 tokens (a typical first step such
  as ``e = encode(t1<MOD>, flair<MOD>)\\nm = generate(e, flair<MOD>, "lesion")`` is 25-40 tokens).

Tiny uses shipped weights from models/voxagent-tiny/ when present, else a random init of the same
shapes (decoding cost does not depend on the weight values). Paper is always random init with the
paper's 32,000-token vocabulary. The headline keys use the runtime's default of one torch thread
while decoding (``AgentRuntime(decode_threads=1)``: on a shared 2-core machine two OpenMP threads
stall each other at every op); ``*_2threads`` keys show the same with two threads.
Run: ``.venv/bin/python -m bench.agent``.
"""
from __future__ import annotations

import argparse
import time

import torch

from agent.checkpoint import has_agent, load_agent
from agent.config import AgentConfig
from agent.corpus import seed_corpus
from agent.model import VoxAgentModel
from agent.state import ScanInfo, initial_state_ids
from agent.tokenizer import AgentTokenizer, train_tokenizer
from bench.common import report, time_median
from service.settings import DEFAULT_MODELS_DIR

SHIPPED = DEFAULT_MODELS_DIR
PROMPT = "Segment the lesion on the FLAIR scan and report its volume in mL and the hemisphere it is in."
SCANS = [ScanInfo("t1", "T1", "2023-05-02", (1.0, 1.0, 1.0)), ScanInfo("flair", "FLAIR", "2023-05-02", (0.9, 0.9, 5.0))]
FIRST_STEP_TOKENS = 32
DECODE_TOKENS = 256


def decode(model: VoxAgentModel, session, first_logits: torch.Tensor, n: int) -> None:
    """The runtime's per-token work, without stopping at <STEP> (we want a fixed token count)."""
    logits, mod_id = first_logits, model.cfg.mod_id
    for _ in range(n):
        next_id = int(torch.argmax(logits))
        hidden = session.feed([next_id])
        if next_id == mod_id:
            model.phi_head(hidden[-1])
        logits = model.next_token_logits(hidden[-1])


def measure(model: VoxAgentModel, tokenizer: AgentTokenizer, repeats: int) -> dict[str, float]:
    model.eval()
    mu1 = initial_state_ids(tokenizer, PROMPT, SCANS)

    def first_step() -> None:
        ids = initial_state_ids(tokenizer, PROMPT, SCANS)
        session = model.start_session(1024)
        hidden = session.feed(ids)
        decode(model, session, model.next_token_logits(hidden[-1]), FIRST_STEP_TOKENS)

    def throughput() -> None:
        decode(model, state["session"], state["logits"], DECODE_TOKENS)

    state: dict = {}

    def fresh() -> None:
        state["session"] = model.start_session(1024)
        state["logits"] = model.next_token_logits(state["session"].feed(mu1)[-1])

    with torch.inference_mode():
        first_s, _ = time_median(first_step, repeats=repeats, warmup=2)
        samples, cpu_s = [], 0.0
        fresh()
        throughput()  # warm-up
        for _ in range(repeats):
            fresh()
            c0 = time.process_time()
            t, _ = time_median(throughput, repeats=1, warmup=0)
            cpu_s += time.process_time() - c0
            samples.append(t)
        samples.sort()
        decode_s = samples[len(samples) // 2]
    # CPU seconds per token show the cost of our own work even when the machine is oversubscribed
    return {"tokens_per_s": DECODE_TOKENS / decode_s, "tokens_per_cpu_s": DECODE_TOKENS * repeats / cpu_s,
            "first_step_ms": first_s * 1000, "prompt_tokens": len(mu1)}


def tiny_model() -> tuple[VoxAgentModel, AgentTokenizer, str]:
    if has_agent(SHIPPED):
        model, tokenizer = load_agent(SHIPPED)
        return model, tokenizer, f"shipped ({SHIPPED.relative_to(SHIPPED.parent.parent)})"
    tokenizer = train_tokenizer(seed_corpus(2000), vocab_size=3000, num_threads=1)
    torch.manual_seed(0)
    # the preset's vocabulary size even if the seed corpus yields fewer pieces: same lm-head cost
    model = VoxAgentModel(AgentConfig.from_preset("tiny", tokenizer, vocab_size=max(3000, tokenizer.vocab_size)))
    return model, tokenizer, "random init (no shipped weights)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--skip-paper", action="store_true")
    args = parser.parse_args(argv)
    model, tokenizer, source = tiny_model()
    print(f"tiny preset: {source}; {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters, "
          f"vocab {model.cfg.vocab_size}")
    results: dict[str, float | int | str] = {"weights": source, "decode_threads": 1}
    torch.set_num_threads(2)
    results.update({f"{k}_2threads": v for k, v in measure(model, tokenizer, args.repeats).items()
                    if k in ("tokens_per_s", "first_step_ms")})
    torch.set_num_threads(1)
    results.update(measure(model, tokenizer, args.repeats))
    goals = {"tokens_per_s": ">= 300", "first_step_ms": "<= 150"}

    if not args.skip_paper:
        torch.manual_seed(0)
        paper = VoxAgentModel(AgentConfig.from_preset("paper", tokenizer, vocab_size=32000))
        print(f"paper preset: random init; {sum(p.numel() for p in paper.parameters()) / 1e6:.1f} M parameters")
        results.update({f"paper_{k}": v for k, v in measure(paper, tokenizer, max(3, args.repeats // 2)).items()})
        del paper

    if torch.cuda.is_available():
        paper = VoxAgentModel(AgentConfig.from_preset("paper", tokenizer, vocab_size=32000))
        for name, m in (("gpu", model), ("gpu_paper", paper)):
            results.update({f"{name}_{k}": v for k, v in measure(m.cuda(), tokenizer, args.repeats).items()})
    report("agent", results, goals)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
