"""Warnings on results: thick slices, low-confidence instructions, retried steps (issue #20)."""
from __future__ import annotations

import numpy as np

from agent.phi_bank import PhiBank
from agent.result_warnings import instruction_warnings, mod_sites, thick_slice_warnings
from agent.state import ScanInfo


def test_thick_and_anisotropic_scans_are_named_and_isotropic_ones_are_not():
    scans = [ScanInfo("t1", "T1", spacing=(1.0, 1.0, 1.0)), ScanInfo("flair", "FLAIR", spacing=(0.9, 0.9, 5.0)),
             ScanInfo("ct", "CT", spacing=(3.2, 3.2, 3.2)), ScanInfo("x", None, spacing=None),
             ScanInfo("t2", "T2", spacing=(1.0, 1.0, 2.4))]
    warnings = thick_slice_warnings(scans)
    assert len(warnings) == 2
    assert warnings[0].startswith("scan flair has 0.9x0.9x5 mm voxels")
    assert warnings[1].startswith("scan ct has 3.2x3.2x3.2 mm voxels")


def test_each_mod_is_paired_with_its_call_and_target_in_order():
    code = ('e = encode(pre<MOD>, post<MOD>)\nm = generate(e, pre<MOD>, "brain")\n'
            'v = volume(generate(e, post<MOD>, "left hippocampus"))')
    assert mod_sites(code) == [("encode", None), ("encode", None), ("generate", "brain"),
                               ("generate", "left hippocampus")]
    assert mod_sites("m = generate(e, pre<MOD>, 'brain')") == [("generate", "brain")]


def test_an_instruction_far_from_the_banks_is_a_warning_and_a_close_one_is_not():
    bank = PhiBank.default()
    code = 'e = encode(t1<MOD>)\nb = generate(e, t1<MOD>, "brain")\nw = generate(e, t1<MOD>, "white matter")'
    close = bank.generate_phi("brain") + 0.01
    far = bank.generate_phi("white matter") * 0.2 + bank.generate_phi("lesion")  # points at the lesion
    encode_phi_anything = np.zeros_like(close) + 5.0  # encode phis are not judged here
    warnings = instruction_warnings(3, code, [encode_phi_anything, close, far], bank)
    assert len(warnings) == 1
    assert warnings[0].startswith("step 3: the instruction for 'white matter' is far from the one")
    cos = float(far @ bank.generate_phi("white matter")
                / (np.linalg.norm(far) * np.linalg.norm(bank.generate_phi("white matter"))))
    assert f"(cosine {cos:.2f})" in warnings[0]
    # an unknown target is the sandbox's error to report, not a warning
    assert instruction_warnings(0, 'm = generate(e, t1<MOD>, "optic chiasm")', [far], bank) == []
