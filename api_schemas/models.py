"""What the service can do: the loaded model, its presets, targets and the function library."""
from __future__ import annotations

from pydantic import BaseModel, Field


class FunctionInfo(BaseModel):
    name: str
    signature: str | None = None
    doc: str | None = None


class ModelInfo(BaseModel):
    name: str
    version: str | None = None
    trained: bool = Field(description="False when no trained checkpoint was found and a random-init model answers.")
    preset: str | None = None
    presets: list[str] = Field(default_factory=list)
    tasks: list[str] = Field(default_factory=list)
    targets: list[str] = Field(default_factory=list)
    functions: list[FunctionInfo] = Field(default_factory=list)
    note: str | None = None
