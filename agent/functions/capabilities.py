"""What the system can do, in one answer: the text of a refusal or of an unknown-target reply.

Why a library function: the text is ~90 tokens, and a small decoder that has to write it out
garbles it (dev set: "... thalamus, thalamus, thalamus, amygdala, lateral ventricle ..."). A
program that answers ``respond(capabilities())`` gets it whole, and the text follows the loaded
model's targets instead of what the agent memorized.
"""
from __future__ import annotations

from agent.phi_bank import PhiBank

CAPABILITIES = ("I can't help with that request. I analyze brain MRI and CT scans: I can segment and measure the "
                "brain, gray matter, white matter, CSF, the left and right hemispheres and lesions (with their "
                "enhancing part and edema), and describe lesion signal, side, region, contrast enhancement, "
                "diffusion restriction and change between sessions.")
# a model that draws every structure of vision.targets (the v2 networks)
CAPABILITIES_V2 = ("I can't help with that request. I analyze brain MRI and CT scans: I can segment and measure "
                   "the brain, the intracranial volume, gray and white matter, the cerebral cortex, CSF, the "
                   "ventricles, the hemispheres, the deep structures (hippocampus, thalamus, caudate, putamen, "
                   "pallidum, amygdala, accumbens, ventral DC), the cerebellum and the brainstem, and lesions "
                   "(with their enhancing part and edema), and describe lesion signal, side, region, contrast "
                   "enhancement, diffusion restriction and change between sessions.")
# the structures CAPABILITIES_V2 names beyond CAPABILITIES: a bank must draw all of them to claim it
V2_TARGETS = ("intracranial volume", "cerebral cortex", "ventricles", "hippocampus", "thalamus", "caudate",
              "putamen", "pallidum", "amygdala", "accumbens", "ventral DC", "cerebellum", "brain-stem")


def capability_text(bank: PhiBank) -> str:
    """The capability answer that is true of ``bank``'s targets."""
    return CAPABILITIES_V2 if all(bank.supports(t) for t in V2_TARGETS) else CAPABILITIES


__all__ = ["CAPABILITIES", "CAPABILITIES_V2", "V2_TARGETS", "capability_text"]
