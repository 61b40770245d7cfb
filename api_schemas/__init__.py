"""pydantic v2 models: the only contract between API, workers and clients."""
from api_schemas.problem import Problem
from api_schemas.results import AnalysisResult, AnalysisStatus, Metric, OutputVolume, ReportSentence, StepTrace

__all__ = ["AnalysisResult", "AnalysisStatus", "Metric", "OutputVolume", "Problem", "ReportSentence", "StepTrace"]
