"""Modality names: one spelling per modality, whatever spelling a client, a header or a flag used.

The modality of a scan is an input of the model twice over: the agent reads it in its prompt state
(``modality=T1``) and scripted programs take the encode phi of that modality from the phi bank. So
``t1``, ``T1w`` and ``MPRAGE`` must reach both as ``T1``; otherwise the same scan and question gave
different volumes by the spelling of a field (issue 23: 1,723-1,780 mL). A modality that is not
known here passes through stripped of surrounding whitespace (the bank maps it to its "unknown" phi).
Plain Python: any package may import it.
"""
from __future__ import annotations

import re

# canonical spelling -> spellings that mean it (compared upper-case, with '-', '_', ' ' and '+' removed)
_SYNONYMS: dict[str, tuple[str, ...]] = {
    "T1": ("T1", "T1W", "T1WEIGHTED", "MPRAGE", "SPGR", "T1MPRAGE", "T13D"),
    "T1c": ("T1C", "T1CE", "T1GD", "T1POST", "T1WC", "T1WCE", "T1CONTRAST"),
    "T2": ("T2", "T2W", "T2WEIGHTED", "T2TSE", "T2FSE"),
    "FLAIR": ("FLAIR", "T2FLAIR", "T2WFLAIR"),
    "PD": ("PD", "PDW", "PDWEIGHTED"),
    "DWI": ("DWI", "DW", "DIFFUSION", "TRACE"),
    "ADC": ("ADC",),
    "SWI": ("SWI",),
    "CT": ("CT",),
    "MR": ("MR", "MRI"),
}
_CANONICAL = {spelling: name for name, spellings in _SYNONYMS.items() for spelling in spellings}
_NOISE = re.compile(r"[\s_+\-]+")


def canonical_modality(value: str | None) -> str | None:
    """The one spelling of ``value`` (``None`` and blank text stay unknown: ``None``)."""
    if value is None:
        return None
    text = str(value).strip()
    if not text:
        return None
    return _CANONICAL.get(_NOISE.sub("", text).upper(), text)


__all__ = ["canonical_modality"]
