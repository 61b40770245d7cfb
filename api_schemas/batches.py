"""Many analyses submitted at once, followed as one unit, with a signed webhook at the end."""
from __future__ import annotations

from datetime import datetime
from enum import Enum

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from api_schemas.jobs import Job
from api_schemas.limits import MAX_BATCH_ITEMS, MAX_CODE_CHARS, MAX_PROMPT_CHARS, MAX_VOLUMES_PER_ANALYSIS
from api_schemas.requests import VolumeInput, check_not_blank


class BatchItem(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prompt: str | None = Field(default=None, min_length=1, max_length=MAX_PROMPT_CHARS)
    code: str | None = Field(default=None, min_length=1, max_length=MAX_CODE_CHARS)
    volumes: list[VolumeInput] = Field(min_length=1, max_length=MAX_VOLUMES_PER_ANALYSIS)
    label: str | None = Field(default=None, max_length=200, description="Case identifier, echoed in results/CSV.")

    _not_blank = field_validator("prompt", "code")(check_not_blank)


class BatchRequest(BaseModel):
    """One prompt (or program) over many cases, or a list of distinct analyses."""

    model_config = ConfigDict(extra="forbid")

    prompt: str | None = Field(default=None, min_length=1, max_length=MAX_PROMPT_CHARS,
                               description="Default for items without one.")
    code: str | None = Field(default=None, min_length=1, max_length=MAX_CODE_CHARS,
                             description="Default for items without one.")
    items: list[BatchItem] = Field(min_length=1, max_length=MAX_BATCH_ITEMS)
    webhook_url: str | None = Field(default=None, max_length=2000, pattern=r"^https?://",
                                    description="POSTed once when every item has finished.")
    webhook_secret: str | None = Field(default=None, min_length=16, max_length=256,
                                       description="HMAC-SHA256 key for the X-Voxagent-Signature header.")

    _not_blank = field_validator("prompt", "code")(check_not_blank)

    @model_validator(mode="after")
    def _each_item_has_work(self) -> "BatchRequest":
        for i, item in enumerate(self.items):
            if item.prompt is not None and item.code is not None:
                raise ValueError(f"item {i}: give exactly one of 'prompt' or 'code'")
            if item.prompt is None and item.code is None and (self.prompt is None) == (self.code is None):
                raise ValueError(f"item {i}: give exactly one of 'prompt' or 'code' (on the item or the batch)")
        if self.webhook_url and not self.webhook_secret:
            raise ValueError("a webhook_url needs a webhook_secret to sign deliveries")
        return self


class BatchStatus(str, Enum):
    running = "running"
    completed = "completed"


class WebhookState(BaseModel):
    url: str
    delivered: bool = False
    attempts: int = 0
    last_error: str | None = None


class Batch(BaseModel):
    id: str
    status: BatchStatus = Field(description="'running' until every item has finished, then 'completed'.")
    created_at: datetime
    finished_at: datetime | None = None
    total: int
    counts: dict[str, int] = Field(description="Jobs per status.")
    job_ids: list[str]
    labels: list[str | None] = Field(default_factory=list)
    webhook: WebhookState | None = None
    links: dict[str, str] = Field(default_factory=dict)


class BatchResults(BaseModel):
    id: str
    items: list[Job]
