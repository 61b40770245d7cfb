"""On-the-fly synthesis of training cases from the MNI152 template (SynthSeg-style + A.3 lesions)."""
from training.synth.case import Case, CaseSpec, LesionSpec, LesionTruth, ScanSpec, synthesize_case

__all__ = ["Case", "CaseSpec", "LesionSpec", "LesionTruth", "ScanSpec", "synthesize_case"]
