"""Idempotency-Key on POSTs: a retried request gets the first answer back instead of a second job.

Entries are per tenant, method and path. A key reused with a different JSON body is refused
(422); a key whose first request is still in flight answers 409.
"""
from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from fastapi import Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from service.errors import ProblemError
from service.state import ServiceState, utcnow

KIND = "idem"
HEADER = "Idempotency-Key"


@dataclass(frozen=True)
class Created:
    """What a POST handler produced: the body (serialized by the route's ``response_model``), its
    status code and its Location."""

    body: BaseModel
    status_code: int
    location: str | None = None


def _answer(created: Created, response: Response) -> BaseModel:
    response.status_code = created.status_code
    if created.location:
        response.headers["Location"] = created.location
    return created.body


async def idempotent(request: Request, response: Response, state: ServiceState, tenant: str,
                     produce: Callable[[], Awaitable[Created]], fingerprint_body: bool = True
                     ) -> BaseModel | JSONResponse:
    """The produced model (status and Location set on ``response``), or, for a replayed key, the
    first answer as stored."""
    key = request.headers.get(HEADER)
    if key is None:
        return _answer(await produce(), response)
    if not 1 <= len(key) <= 255:
        raise ProblemError(400, f"{HEADER} must be 1-255 characters")
    rid = hashlib.sha256(f"{tenant}\n{request.method}\n{request.url.path}\n{key}".encode()).hexdigest()
    fp = hashlib.sha256(await request.body()).hexdigest() if fingerprint_body else None
    _, ts = utcnow()
    existing = state.records.put_if_absent(KIND, {"id": rid, "tenant": tenant, "pending": True,
                                                 "fingerprint": fp, "created_at_ts": ts})
    if existing is not None:
        if existing.get("fingerprint") != fp:
            raise ProblemError(422, f"{HEADER} was already used with a different request body")
        if existing.get("pending"):
            raise ProblemError(409, f"a request with this {HEADER} is still being processed",
                               headers={"Retry-After": "1"})
        return JSONResponse(existing["body"], status_code=existing["status_code"],
                            headers={**existing.get("headers", {}), "Idempotent-Replayed": "true"})
    try:
        created = await produce()
    except BaseException:
        state.records.delete(KIND, rid)
        raise
    headers = {"Location": created.location} if created.location else {}
    state.records.update(KIND, rid, {"pending": False, "status_code": created.status_code,
                                     "body": created.body.model_dump(mode="json"), "headers": headers})
    return _answer(created, response)
