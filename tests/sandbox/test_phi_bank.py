"""The phi bank: deterministic defaults, save/load round trip, the supported-target check."""
from __future__ import annotations

import numpy as np
import pytest

from agent.phi_bank import PHI_DIM, PhiBank, UnsupportedTargetError


def test_default_bank_is_deterministic_and_distinct():
    a, b = PhiBank.default(), PhiBank.default()
    np.testing.assert_array_equal(a.generate_phi("lesion"), b.generate_phi("lesion"))
    assert a.encode_phi("t1").shape == (PHI_DIM,) and a.encode_phi("t1").dtype == np.float32
    assert not np.allclose(a.encode_phi("T1"), a.encode_phi("FLAIR"))
    np.testing.assert_array_equal(a.encode_phi("never heard of it"), a.encode_phi(None))  # unknown modality
    np.testing.assert_array_equal(a.generate_phi(" Grey   Matter "), a.generate_phi("gray matter"))


def test_unsupported_target_lists_the_supported_ones():
    with pytest.raises(UnsupportedTargetError, match="supported: brain, gray matter"):
        PhiBank.default().generate_phi("unicorn")


def test_save_load_round_trip(tmp_path):
    bank = PhiBank({"T1": np.arange(32, dtype=np.float32)}, {"lesion": np.ones(32, dtype=np.float32)})
    loaded = PhiBank.load(bank.save(tmp_path / "phi_bank.safetensors"))
    assert loaded.targets == ("lesion",) and set(loaded.modalities) == {"T1", "UNKNOWN"}
    np.testing.assert_array_equal(loaded.encode_phi("t1"), np.arange(32))
    assert PhiBank.for_model_dir(tmp_path).targets == ("lesion",)
    assert "brain" in PhiBank.for_model_dir(tmp_path / "missing").targets
    with pytest.raises(ValueError, match="32 finite numbers"):
        PhiBank({"T1": np.zeros(31)}, {})
