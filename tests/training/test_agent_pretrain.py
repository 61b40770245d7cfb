"""Stage-2 agent pretraining: episodes, the phi loss, a run that checkpoints, resumes and exports."""
from __future__ import annotations

import dataclasses
import queue
import signal
import threading

import numpy as np
import pytest
import torch

from agent.checkpoint import has_agent, load_agent
from agent.phi_bank import DEFAULT_TARGETS, PhiBank
from tests.training.synthseg_phantom import write_phantom_root
from training.agent_episodes import EpisodeWorker, label_source, load_frozen_vision, run_episode, training_episode
from training.agent_pretrain import (
    VARIANTS,
    AgentPretrainer,
    evaluate_exact_match,
    export,
    pack,
    phi_loss,
    phi_targets,
)
from training.tasks import sample_task
from vision.checkpoint import save_vision
from vision.model import build_vision_net
from vision.targets import TARGETS as VISION_TARGETS


@pytest.fixture(scope="module")
def vision_dir(tmp_path_factory):
    """A random tiny vision net and a bank over every target the tasks may ask for."""
    root = tmp_path_factory.mktemp("vision")
    torch.manual_seed(0)
    save_vision(build_vision_net("tiny"), root)
    PhiBank.default(targets=list(DEFAULT_TARGETS) + list(VISION_TARGETS)).save(root / "phi_bank.safetensors")
    return root


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return write_phantom_root(tmp_path_factory.mktemp("synthseg"), numbers=(1, 2, 17))


@pytest.fixture
def smoke(data_root):
    return lambda **changes: dataclasses.replace(VARIANTS["smoke"], threads=1, data_root=str(data_root), **changes)


def test_episode_reads_frozen_encoder_vectors(vision_dir, data_root):
    bank = PhiBank.load(vision_dir / "phi_bank.safetensors")
    net = load_frozen_vision(vision_dir)
    sample, case = sample_task(5, family="volume")
    episode = run_episode(sample, case, bank, net)
    assert [s.code for s in episode.steps] == sample.steps
    vectors = [fb.vectors for s in episode.steps for fb in s.feedback if fb.vectors is not None]
    assert vectors and vectors[0].shape == (1, net.config.encoding_dim)
    assert np.abs(vectors[0]).sum() > 0  # the encoder's vectors, not the oracle's zeros
    assert episode.mod_labels is not None and episode.mod_labels[0].startswith("encode:")
    assert len(episode.mod_labels) == sum(c.count("<MOD>") for c in sample.steps)
    # the same index gives the same episode: a resumed worker continues the same sequence
    source = label_source(data_root)
    a, b = training_episode(0, 3, bank, net, source), training_episode(0, 3, bank, net, source)
    assert a.prompt == b.prompt and [s.code for s in a.steps] == [s.code for s in b.steps]
    # real-anatomy episodes speak the vision table's targets (hippocampus, ventricles, ...)
    targets = {lab for i in range(40) for lab in (training_episode(0, i, bank, net, source).mod_labels or [])}
    assert targets & {f"generate:{t}" for t in VISION_TARGETS if t not in DEFAULT_TARGETS}


def test_several_tasks_per_case(vision_dir, data_root):
    """Variants reuse one synthesized case; the first is the plain draw; all execute."""
    from training.agent_episodes import training_episodes
    from training.tasks import sample_task_variants

    source = label_source(data_root)
    for seed in (3, 11):
        tasks = sample_task_variants(seed, 4, labels=source)
        plain, _ = sample_task(seed, labels=source)
        assert tasks[0][0].prompt == plain.prompt and tasks[0][0].steps == plain.steps
        assert all(case is tasks[0][1] for _, case in tasks)
        assert len({t.prompt for t, _ in tasks}) > 1
        assert len({t.family for t, _ in tasks}) == 1
    bank = PhiBank.load(vision_dir / "phi_bank.safetensors")
    episodes = training_episodes(0, 2, bank, load_frozen_vision(vision_dir), source, variants=3)
    assert 1 <= len(episodes) <= 3 and episodes[0].prompt == training_episode(0, 2, bank, None, source).prompt


def test_phi_targets_and_loss(vision_dir):
    bank = PhiBank.load(vision_dir / "phi_bank.safetensors")
    t = phi_targets(bank, ["generate:brain", "encode:T1", "encode:NOT-A-MODALITY"])
    assert torch.allclose(t[0], torch.from_numpy(bank.generate_phi("brain")))
    assert torch.allclose(t[2], torch.from_numpy(bank.encode_phi("unknown")))
    loss, cos = phi_loss(t.clone(), t)
    assert float(loss) == pytest.approx(0.0, abs=1e-6) and float(cos) == pytest.approx(1.0)
    worse, _ = phi_loss(-t, t)
    assert float(worse) > 2.0
    with pytest.raises(ValueError):
        phi_targets(bank, ["generate:optic chiasm"])


def test_steps_learn_code_and_phi(tmp_path, vision_dir, smoke):
    """On a fixed batch the language loss falls and the phis turn towards the bank's."""
    trainer = AgentPretrainer(tmp_path / "run", smoke(lr=3e-3, warmup_steps=1), vision_dir)
    try:
        batch = trainer.pool[:2]
        first = trainer.train_step(batch)
        for _ in range(25):
            last = trainer.train_step(batch)
    finally:
        trainer._worker().close()
    assert last.ce < 0.6 * first.ce
    assert last.phi_cos > first.phi_cos + 0.3
    assert trainer.step == 26


def test_run_checkpoints_resumes_exports(tmp_path, vision_dir, smoke):
    run_dir = tmp_path / "run"
    trainer = AgentPretrainer(run_dir, smoke(), vision_dir)
    trainer.fit(max_steps=3, progress=False)
    assert trainer.step == 3
    for name in ("config.json", "log.csv", "eval.jsonl", "train_state.pt", "episodes.pt",
                 "vision/phi_bank.safetensors"):
        assert (run_dir / name).is_file(), name
    assert has_agent(run_dir / "agent") and has_agent(run_dir / "best")
    again = AgentPretrainer(run_dir, None, None)  # resume: the snapshot is the run's own
    assert again.step == 3 and len(again.pool) >= len(trainer.pool) - 1
    again.fit(max_steps=1, progress=False)
    assert again.step == 4
    with pytest.raises(ValueError, match="phi_lambda"):
        AgentPretrainer(run_dir, smoke(phi_lambda=0.5))
    packed = pack(run_dir, tmp_path / "packed")  # what git keeps: fp16 weights, counters, no optimizer
    assert not (packed / "train_state.pt").exists() and not (packed / "episodes.pt").exists()
    resumed = AgentPretrainer(packed, None, None)
    assert resumed.step == 4 and resumed.model.llama.lm_head.weight.dtype == torch.float32
    resumed._worker().close()
    out = export(run_dir, tmp_path / "model")
    model, tok = load_agent(out)
    assert model.cfg.phi_activation == "identity"
    for name in ("vision.safetensors", "vision_config.json", "phi_bank.safetensors", "tokenizer.model"):
        assert (out / name).is_file(), name


def test_take_gives_up_waiting_when_told_to_stop():
    worker = object.__new__(EpisodeWorker)  # its queue only: no producer process
    worker.queue, worker.next_index = queue.Queue(), 0
    worker.queue.put((0, ["episode"]))
    calls = []

    def stop() -> bool:  # stop once the first episode has arrived
        calls.append(1)
        return len(calls) > 1

    assert worker.take(at_least=5, at_most=8, stop=stop) == ["episode"] and worker.next_index == 1
    with pytest.raises(RuntimeError, match="produced nothing"):
        worker.take(at_least=1, timeout_s=0.01)


def test_a_signal_while_the_pool_fills_stops_the_run_without_a_step(tmp_path, vision_dir, smoke):
    """Seen: SIGTERM during a 3,000-episode pool fill was ignored for minutes."""
    trainer = AgentPretrainer(tmp_path / "run", smoke(min_pool=100_000), vision_dir)
    waiting = threading.Event()
    take = trainer._worker().take

    def take_and_note(*args, **kwargs):
        waiting.set()
        return take(*args, **kwargs)

    trainer._episode_worker.take = take_and_note  # type: ignore[method-assign]
    threading.Thread(target=lambda: waiting.wait() and trainer._on_signal(signal.SIGTERM, None)).start()
    trainer.fit(max_steps=5, progress=False)
    assert trainer.step == 0 and (tmp_path / "run" / "train_state.pt").is_file()


def test_exact_match_counts_a_perfect_program(tmp_path, vision_dir, smoke):
    """The evaluation must score 1.0 for a model that writes the ground truth and 0 for one that does not."""
    trainer = AgentPretrainer(tmp_path / "run", smoke(), vision_dir)
    trainer._worker().close()
    episodes = trainer.pool[:1]
    # overfit one episode hard: its greedy decode must then reproduce the ground truth exactly
    trainer.config = dataclasses.replace(trainer.config, lr=3e-3, warmup_steps=1)
    before = evaluate_exact_match(trainer.model, trainer.tokenizer, trainer.bank, 1, episodes=episodes)
    for _ in range(15):  # Adam at a high rate can still flip a token right after the loss is ~0: train on
        for _ in range(20):
            trainer.train_step(episodes)
        after = evaluate_exact_match(trainer.model, trainer.tokenizer, trainer.bank, 1, episodes=episodes)
        if after["program_exact"] == 1.0:
            break
    assert before["program_exact"] == 0.0
    assert after["program_exact"] == 1.0 and after["step_exact"] == 1.0
    assert after["phi_cos"] > 0.9
    # the teacher-forced score claims greedy decoding reproduces the steps: check it by decoding
    from agent.state import feedback_tokens, initial_state_ids
    from training.agent_pretrain import decode_step

    e = episodes[0]
    ids = initial_state_ids(trainer.tokenizer, e.prompt, e.scans)
    vectors = []
    for step in e.steps:
        enc = torch.from_numpy(np.concatenate(vectors)) if vectors else None
        code, _ = decode_step(trainer.model, trainer.tokenizer, ids, enc)
        assert code == step.code
        ids = ids + trainer.tokenizer.encode(step.code) + [trainer.tokenizer.step_id]
        z = feedback_tokens(trainer.tokenizer, step.feedback, step.error, trainer.model.cfg.hidden_size)
        ids += z.ids
        if len(z.vectors):
            vectors.append(z.vectors)


def test_sentence_encoder_front_end(tmp_path, vision_dir, smoke):
    """The 'sentence' variant feeds MiniLM's prompt vector; training and decoding both see it."""
    from agent.prompt_encoder import SENTENCE_DIM, shared_encoder

    enc = shared_encoder()
    a, b, c = enc.encode(["What is the volume of the hippocampus?", "hippocampal volume please",
                          "Remove the skull from the CT."])
    assert a.shape == (SENTENCE_DIM,) and abs(float(np.linalg.norm(a)) - 1) < 1e-5
    assert float(a @ b) > float(a @ c)  # a paraphrase sits nearer than another request
    trainer = AgentPretrainer(tmp_path / "run", smoke(sentence_encoder=True, lr=3e-3, warmup_steps=1), vision_dir)
    trainer._worker().close()
    assert trainer.model.cfg.prompt_vector_dim == SENTENCE_DIM
    episode = trainer.pool[:1]
    for _ in range(3):
        trainer.train_step(episode)
    assert episode[0].prompt_vector is not None and trainer.model.prompt_proj.weight.grad is not None
    # the decoder's output depends on the vector: the same tokens with another prompt vector differ
    from agent.state import initial_state_ids

    ids = initial_state_ids(trainer.tokenizer, episode[0].prompt, episode[0].scans)
    trainer.model.eval()
    s1, s2 = trainer.model.start_session(len(ids) + 6), trainer.model.start_session(len(ids) + 2)
    h1 = s1.feed(ids, prompt_vector=torch.from_numpy(a))
    h2 = s2.feed(ids, prompt_vector=torch.from_numpy(c))
    assert not torch.allclose(h1[-1], h2[-1])
    # later feeds (feedback chunks of several tokens) continue the sequence: no second prompt vector,
    # and the cached states equal one full forward of the whole sequence
    more = [trainer.tokenizer.step_id, *ids[1:4]]
    h_more = s1.feed(more)
    full = trainer.model(torch.tensor([ids + more]), prompt_vectors=torch.from_numpy(a)[None])
    assert torch.allclose(h_more, full.hidden[0, len(ids):], atol=1e-4)
    with pytest.raises(ValueError, match="prompt_vectors"):
        trainer.model(torch.tensor(ids))


def test_prompt_noise_and_a_fixed_pool(tmp_path, vision_dir, smoke):
    """prompt_noise rewrites copies of the drawn prompts (the pool keeps its own); with refresh_pool
    off a full pool takes nothing more from the worker."""
    trainer = AgentPretrainer(tmp_path / "run", smoke(prompt_noise=1.0, refresh_pool=False, pool_size=4), vision_dir)
    try:
        assert len(trainer.pool) == 4
        before = [e.prompt for e in trainer.pool]
        taken = trainer.next_episode
        noisy = [trainer.perturb(trainer.pool) for _ in range(10)]
        assert any(n.prompt != b for batch in noisy for n, b in zip(batch, before))
        assert [e.prompt for e in trainer.pool] == before
        assert all(n.prompt_vector is None for batch in noisy for n, b in zip(batch, before) if n.prompt != b)
        for _ in range(3):
            batch = trainer.draw_batch()
            assert all(any(e is p for p in trainer.pool) for e in batch)
            trainer.train_step(batch)
        assert trainer.next_episode == taken and trainer.step == 3
    finally:
        trainer._worker().close()


def test_grow_adds_prompt_states_without_changing_the_agent(tmp_path, vision_dir, smoke):
    """A grown run starts computing exactly what its source did, then learns to use the states;
    decoding with the KV cache agrees with the training forward."""
    from agent.prompt_encoder import SENTENCE_DIM
    from agent.state import initial_state_ids
    from training.agent_pretrain import grow, prompt_state_batch, prompt_vectors

    src = tmp_path / "src"
    base = smoke(sentence_encoder=True, lr=3e-3, warmup_steps=1)
    trainer = AgentPretrainer(src, base, vision_dir)
    trainer.fit(max_steps=2, progress=False)
    with pytest.raises(ValueError, match="prompt_states"):
        grow(src, tmp_path / "bad", base)
    with pytest.raises(ValueError, match="vocab_size"):
        grow(src, tmp_path / "bad", dataclasses.replace(base, prompt_states=True, vocab_size=500))
    grown_dir = grow(src, tmp_path / "grown", dataclasses.replace(base, prompt_states=True, prompt_noise=0.5))
    grown = AgentPretrainer(grown_dir, None, None)
    assert grown.step == 2 and grown.model.cfg.prompt_state_dim == SENTENCE_DIM
    assert len(grown.optimizer.state) == len(trainer.optimizer.state)  # Adam moments carried over
    episodes = grown.pool[:2]
    old, _ = load_agent(src / "agent")
    ids = initial_state_ids(grown.tokenizer, episodes[0].prompt, episodes[0].scans)
    states = prompt_state_batch(grown.model, grown.tokenizer, episodes[:1])
    vec = prompt_vectors(grown.model, episodes[:1])
    grown.model.eval()
    with torch.no_grad():
        before = old(torch.tensor([ids]), prompt_vectors=vec).logits
        after = grown.model(torch.tensor([ids]), prompt_vectors=vec, prompt_states=states).logits
    torch.testing.assert_close(before, after)
    for _ in range(3):
        grown.train_step(episodes)
    assert float(grown.model.prompt_state_proj[1].weight.detach().abs().sum()) > 0
    grown.model.eval()
    session = grown.model.start_session(len(ids) + 2)
    with torch.no_grad():
        cached = session.feed(ids, prompt_vector=vec[0], prompt_states=states[0, :len(ids)])
        full = grown.model(torch.tensor([ids]), prompt_vectors=vec, prompt_states=states)
        plain = grown.model(torch.tensor([ids]), prompt_vectors=vec, prompt_states=torch.zeros_like(states))
    torch.testing.assert_close(cached, full.hidden[0], atol=1e-4, rtol=1e-4)
    assert not torch.allclose(full.hidden, plain.hidden)  # the states now change what the agent computes
    with pytest.raises(ValueError, match="prompt_states"):
        grown.model(torch.tensor([ids]), prompt_vectors=vec)
    grown._worker().close()
