"""What a client sends to start an analysis: a prompt (or a program) and the volumes it is about."""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from api_schemas.limits import (
    MAX_CODE_CHARS,
    MAX_PROMPT_CHARS,
    MAX_VOLUMES_PER_ANALYSIS,
    blank_text_problem,
    scan_name_problem,
)


def check_scan_name(name: str) -> str:
    """Scan names become variables in the agent's program: identifiers that shadow no library
    function and no keyword (`api_schemas.limits`, the sandbox's own rule)."""
    problem = scan_name_problem(name)
    if problem:
        raise ValueError(problem)
    return name


def check_not_blank(value: str | None, info: ValidationInfo) -> str | None:
    """A prompt or program of only whitespace is refused (422), see ``blank_text_problem``."""
    problem = blank_text_problem(info.field_name or "text", value)
    if problem:
        raise ValueError(problem)
    return value


class VolumeInput(BaseModel):
    """A stored volume (by id) as it should appear to the analysis."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1, max_length=80, pattern=r"^[A-Za-z0-9_.-]+$",
                    description="Volume id from POST /v1/volumes.")
    name: str | None = Field(default=None, description="Variable name in the program; default scan, scan2, ...")
    modality: str | None = Field(default=None, max_length=32,
                                 description="e.g. T1, T2, FLAIR, CT; overrides the volume's own.")
    date: str | None = Field(default=None, pattern=r"^\d{4}-\d{2}-\d{2}$", description="Acquisition date (ISO 8601).")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str | None) -> str | None:
        return None if v is None else check_scan_name(v)


class AnalysisRequest(BaseModel):
    """Exactly one of ``prompt`` (the agent writes the program) or ``code`` (run as given)."""

    model_config = ConfigDict(extra="forbid")

    prompt: str | None = Field(default=None, min_length=1, max_length=MAX_PROMPT_CHARS)
    code: str | None = Field(default=None, min_length=1, max_length=MAX_CODE_CHARS,
                             description="A program in the sandbox language; runs without the language model.")
    volumes: list[VolumeInput] = Field(min_length=1, max_length=MAX_VOLUMES_PER_ANALYSIS)
    wait: float = Field(default=0.0, ge=0.0, le=30.0,
                        description="Seconds to wait for completion before answering 202 (bounded).")

    _not_blank = field_validator("prompt", "code")(check_not_blank)

    @model_validator(mode="after")
    def _one_of(self) -> "AnalysisRequest":
        if (self.prompt is None) == (self.code is None):
            raise ValueError("give exactly one of 'prompt' or 'code'")
        names = [v.name for v in self.volumes if v.name]
        if len(set(names)) != len(names):
            raise ValueError("scan names must be unique")
        return self

    def scan_names(self) -> list[str]:
        """Names in order: the given ones, else scan, scan2, scan3 ..."""
        out: list[str] = []
        used = {v.name for v in self.volumes if v.name}
        n = 1
        for v in self.volumes:
            if v.name:
                out.append(v.name)
                continue
            while True:
                cand = "scan" if n == 1 else f"scan{n}"
                n += 1
                if cand not in used:
                    break
            used.add(cand)
            out.append(cand)
        return out
