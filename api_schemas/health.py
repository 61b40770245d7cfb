"""Liveness and readiness: which components answer."""
from __future__ import annotations

from pydantic import BaseModel


class ComponentHealth(BaseModel):
    name: str
    ok: bool
    detail: str | None = None
    consumers: int | None = None  # queue components: live worker processes consuming the queue
    model_loaded: int | None = None  # queue components: how many of them hold the queue's model


class Health(BaseModel):
    status: str  # "ok" or "unavailable"
    mode: str  # "embedded" or "distributed"
    components: list[ComponentHealth]
    reason: str | None = None  # why not ready: the failing components, in words
