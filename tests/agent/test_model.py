from __future__ import annotations

import numpy as np
import pytest
import torch

from agent.checkpoint import has_agent, load_agent, save_agent
from agent.config import AgentConfig
from agent.model import VoxAgentModel
from agent.runtime import AgentRuntime, RuntimeLimits
from agent.state import StepRecord, build_training_sequence, collate_sequences
from tests.agent.conftest import RecordingExecutor, text_and_vector_outcome
from tests.agent.test_state import SCANS, STEP_CODE


def test_presets_build_in_code(tokenizer):
    paper = AgentConfig.from_preset("paper", tokenizer)
    assert (paper.num_layers, paper.hidden_size, paper.num_heads, paper.intermediate_size) == (16, 512, 32, 2048)
    tiny = AgentConfig.from_preset("tiny", tokenizer)
    assert tiny.hidden_size == 256 and tiny.vocab_size == tokenizer.vocab_size
    with pytest.raises(ValueError):
        AgentConfig.from_preset("huge")


def test_cached_session_matches_full_forward_with_encodings(tokenizer, random_model):
    d = random_model.cfg.hidden_size
    feedback = text_and_vector_outcome(d).feedback
    steps = [StepRecord(STEP_CODE, feedback=[feedback[0], feedback[1]]),
             StepRecord("stop()\n")]
    seq = build_training_sequence(tokenizer, "how big", SCANS, steps, d)
    with torch.no_grad():
        ref = random_model(seq.input_ids, seq.enc_vectors).hidden[0]
    session = random_model.start_session(512)
    ids = seq.input_ids.tolist()
    enc_pos = [i for i, t in enumerate(ids) if t == tokenizer.enc_id]
    split = enc_pos[0] - 3
    parts = [session.feed(ids[:10]), *(session.feed([t]) for t in ids[10:split]),
             session.feed(ids[split:], seq.enc_vectors)]
    got = torch.cat(parts)
    assert got.shape == ref.shape
    torch.testing.assert_close(got, ref, atol=2e-5, rtol=1e-4)


def test_scripted_decoder_layers_equal_the_eager_function(tokenizer, random_model):
    """The TorchScript kernel is the Python function compiled, not a second implementation."""
    from agent.decode_kernel import compiled_decoder_layers, decoder_layers

    scripted = compiled_decoder_layers()
    assert isinstance(scripted, torch.jit.ScriptFunction)
    cfg = random_model.cfg
    weights = [[w[k] for w in random_model.fused_weights()] for k in ("qkv_t", "o_t", "gate_up_t", "down_t")]
    session = random_model.start_session(64)
    torch.manual_seed(0)
    x = torch.randn(5, cfg.hidden_size)
    blocked = ~torch.ones(5, 5, dtype=torch.bool).tril()
    outs = []
    for fn in (decoder_layers, scripted):
        cache = torch.zeros_like(session.kv_cache)
        outs.append((fn(x, *weights, cache, session.rotation[:5], blocked, session.final_norm, 0,
                        cfg.num_heads, cfg.head_dim, cfg.rms_norm_eps), cache))
    torch.testing.assert_close(outs[0][0], outs[1][0], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(outs[0][1], outs[1][1], atol=1e-6, rtol=1e-5)
    assert outs[0][1][:, :, :, :5].abs().sum() > 0 and outs[0][1][:, :, :, 5:].abs().sum() == 0


class StepEveryN(VoxAgentModel):
    """The random model, except that every n-th decision is forced to <STEP> so steps end and
    feedback (text and encoding vectors) gets appended; it records the hidden state of each decision."""

    def __init__(self, cfg, n):
        super().__init__(cfg)
        self.n, self.seen = n, []

    def next_token_logits(self, hidden_last):
        self.seen.append(hidden_last.clone())
        logits = super().next_token_logits(hidden_last)
        if len(self.seen) % self.n == 0:
            logits = logits.clone()
            logits[self.cfg.step_id] = logits.max() + 1.0
        return logits


def test_kv_cached_multistep_decoding_matches_recompute(tokenizer, random_model):
    d = random_model.cfg.hidden_size
    model = StepEveryN(random_model.cfg, n=9).eval()
    model.load_state_dict(random_model.state_dict())
    executor = RecordingExecutor([text_and_vector_outcome(d, seed=s) for s in range(3)])
    # unconstrained: the forced <STEP> every n tokens must end steps wherever it falls
    runtime = AgentRuntime(model, tokenizer, executor, limits=RuntimeLimits(max_steps=3, max_step_tokens=24),
                           constrained=False)
    result = runtime.run("what is the lesion volume", SCANS)
    tr = runtime.last_transcript
    assert len(executor.calls) == 3 and len(result.trace) == 3
    assert tr.ids.count(tokenizer.enc_id) == 4 and len(tr.enc_vectors) == 2  # two feedbacks went in as embeddings
    ids = torch.tensor(tr.ids)
    enc = torch.from_numpy(np.concatenate(tr.enc_vectors))
    with torch.no_grad():
        full = random_model(ids, enc)  # one from-scratch forward over the whole state
    assert len(model.seen) >= len(tr.generated) > 20
    for k, (pos, chosen) in enumerate(tr.generated):
        torch.testing.assert_close(model.seen[k], full.hidden[0, pos - 1], atol=2e-5, rtol=1e-4)
        if (k + 1) % model.n:
            assert int(full.logits[0, pos - 1].argmax()) == chosen, f"token {pos} differs from recompute"


def test_loss_reaches_phi_head_and_feedback_projection(tokenizer, tiny_cfg):
    torch.manual_seed(1)
    model = VoxAgentModel(tiny_cfg)
    d = tiny_cfg.hidden_size
    seq = build_training_sequence(
        tokenizer, "p", SCANS,
        [StepRecord("e = encode(t1<MOD>)\nread(e)\n", feedback=[text_and_vector_outcome(d).feedback[1]]),
         StepRecord('m = generate(e, t1<MOD>, "brain")\nstop()\n')], d)
    out = model(seq.input_ids, seq.enc_vectors, labels=seq.labels)
    phis = model.phis(out.hidden, seq.input_ids.unsqueeze(0))
    (out.loss + phis.square().mean()).backward()
    assert out.loss.item() > 0 and phis.shape == (2, 32)
    assert model.phi_head[0].weight.grad.abs().sum() > 0
    assert model.feedback_proj[1].weight.grad.abs().sum() > 0


def test_checkpoint_round_trip(tokenizer, random_model, tmp_path):
    save_agent(random_model, tokenizer, tmp_path / "voxagent-test")
    assert has_agent(tmp_path / "voxagent-test")
    model, tok = load_agent(tmp_path / "voxagent-test")
    assert model.cfg == random_model.cfg and tok.encode(STEP_CODE) == tokenizer.encode(STEP_CODE)
    ids = torch.tensor(tokenizer.encode(STEP_CODE))
    with torch.no_grad():
        assert torch.equal(model(ids).logits, random_model(ids).logits)
    runtime = AgentRuntime.from_checkpoint(tmp_path / "voxagent-test", sandbox=RecordingExecutor())
    assert runtime.model_name == "voxagent-test" and runtime.model.cfg == random_model.cfg
    (tmp_path / "broken").mkdir()
    with pytest.raises(FileNotFoundError):
        load_agent(tmp_path / "broken")


def test_padded_batch_matches_single_sequences(tokenizer, random_model):
    d = random_model.cfg.hidden_size
    long_steps = [StepRecord(STEP_CODE, feedback=text_and_vector_outcome(d, 3).feedback), StepRecord("stop()\n")]
    short_steps = [StepRecord("e = encode(t1<MOD>)\nread(e)\n", feedback=text_and_vector_outcome(d, 4).feedback[1:]),
                   StepRecord("stop()\n")]
    seqs = [build_training_sequence(tokenizer, "a longer prompt about the lesion volume", SCANS, long_steps, d),
            build_training_sequence(tokenizer, "short", SCANS[:1], short_steps, d)]
    batch = collate_sequences(seqs, tokenizer.pad_id)
    with torch.no_grad():
        out = random_model(batch.input_ids, batch.enc_vectors, labels=batch.labels, attention_mask=batch.attention_mask)
        phis = random_model.phis(out.hidden, batch.input_ids)
        singles = [random_model(s.input_ids, s.enc_vectors) for s in seqs]
    assert phis.shape == (sum(s.mod_positions.numel() for s in seqs), 32)
    for row, (seq, single) in enumerate(zip(seqs, singles)):
        torch.testing.assert_close(out.hidden[row, : len(seq)], single.hidden[0], atol=2e-5, rtol=1e-4)
    expected = torch.cat([random_model.phi_head(single.hidden[0, s.mod_positions]) for s, single in zip(seqs, singles)])
    torch.testing.assert_close(phis, expected, atol=2e-5, rtol=1e-4)
    assert torch.isfinite(out.loss)
