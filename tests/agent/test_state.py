from __future__ import annotations

import numpy as np
import torch

from agent.sandbox.outcome import Feedback
from agent.state import (
    IGNORE_INDEX,
    ScanInfo,
    StepRecord,
    build_training_sequence,
    feedback_tokens,
    initial_state_ids,
    mod_positions,
)
from tests.agent.conftest import vectors

SCANS = [ScanInfo("t1", "T1", "2021-03-04", (1.0, 1.0, 1.0)), ScanInfo("flair", "FLAIR", "2021-03-04", (0.9, 0.9, 5.0))]
STEP_CODE = 'e = encode(t1<MOD>, flair<MOD>, t2<MOD>)\nm = generate(e, flair<MOD>, "lesion")\nread(volume(m))\n'


def test_initial_state_holds_prompt_and_every_scan(tokenizer):
    text = tokenizer.decode(initial_state_ids(tokenizer, "How big is the lesion?", SCANS)[1:])
    assert text.startswith("prompt: How big is the lesion?\n")
    assert "scan t1: modality=T1; date=2021-03-04; spacing=1.00x1.00x1.00 mm\n" in text
    assert "scan flair: modality=FLAIR; date=2021-03-04; spacing=0.90x0.90x5.00 mm\n" in text


def test_phi_positions_for_several_volume_arguments(tokenizer, random_model):
    ids = tokenizer.encode(STEP_CODE)
    positions = mod_positions(ids, tokenizer.mod_id)
    assert len(positions) == 4
    # each <MOD> follows the argument it marks, in textual order
    names = [tokenizer.decode(ids[:p]).rsplit("(", 1)[-1].rsplit(", ", 1)[-1] for p in positions]
    assert names == ["t1", "flair", "t2", "flair"]
    seq = build_training_sequence(tokenizer, "segment the lesion", SCANS,
                                  [StepRecord(STEP_CODE), StepRecord("stop()\n")], 256)
    assert seq.mod_positions.numel() == 4 and seq.step_mod_counts == [4, 0]
    assert all(seq.input_ids[p].item() == tokenizer.mod_id for p in seq.mod_positions)
    with torch.no_grad():
        out = random_model(seq.input_ids, seq.enc_vectors)
        phis = random_model.phis(out.hidden, seq.input_ids.unsqueeze(0))
        expected = random_model.phi_head(out.hidden[0, seq.mod_positions])
    assert phis.shape == (4, 32)
    assert torch.equal(phis, expected)
    assert (phis >= -0.2785).all()  # SiLU lower bound: the head ends in SiLU


def test_training_sequence_layout_and_labels(tokenizer):
    d = 256
    steps = [
        StepRecord(STEP_CODE, feedback=[Feedback(text="12.5 mL"), Feedback(vectors=vectors(3, d, 0))]),
        StepRecord("x = 1\n", error="name 'y' is not defined"),
        StepRecord('respond("done")\nstop()\n'),
    ]
    seq = build_training_sequence(tokenizer, "p", SCANS, steps, d)
    ids = seq.input_ids.tolist()
    assert ids.count(tokenizer.step_id) == 3
    assert ids.count(tokenizer.fb_open_id) == ids.count(tokenizer.fb_close_id) == 2  # no z after the last step
    assert ids.count(tokenizer.enc_id) == seq.enc_vectors.shape[0] == 3
    labelled = seq.labels != IGNORE_INDEX
    text = tokenizer.decode(seq.input_ids[labelled].tolist())
    assert text == STEP_CODE + "<STEP>" + "x = 1\n<STEP>" + 'respond("done")\nstop()\n<STEP>'
    z = feedback_tokens(tokenizer, steps[0].feedback, None, d)
    assert tokenizer.decode(z.ids) == "<FB>12.5 mL\n<ENC><ENC><ENC>\n</FB>"
    z_err = feedback_tokens(tokenizer, [], "bad <ENC> thing", d)
    assert tokenizer.enc_id not in z_err.ids and "error: bad" in tokenizer.decode(z_err.ids)
    assert np.array_equal(z.vectors, steps[0].feedback[1].vectors)
