"""Liveness and readiness: which components answer."""
from __future__ import annotations

from pydantic import BaseModel


class ComponentHealth(BaseModel):
    name: str
    ok: bool
    detail: str | None = None


class Health(BaseModel):
    status: str  # "ok" or "unavailable"
    mode: str  # "embedded" or "distributed"
    components: list[ComponentHealth]
