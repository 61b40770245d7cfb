"""Idempotency-Key on POSTs: a retried request gets the first answer back instead of a second job.

Entries are per tenant, method and path. A key reused with a different JSON body is refused
(422); a key whose first request is still in flight answers 409.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Awaitable, Callable

from fastapi import Request
from fastapi.responses import JSONResponse

from service.errors import ProblemError
from service.state import ServiceState, utcnow

KIND = "idem"
HEADER = "Idempotency-Key"


async def idempotent(request: Request, state: ServiceState, tenant: str,
                     produce: Callable[[], Awaitable[JSONResponse]], fingerprint_body: bool = True) -> JSONResponse:
    key = request.headers.get(HEADER)
    if key is None:
        return await produce()
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
        response = await produce()
    except BaseException:
        state.records.delete(KIND, rid)
        raise
    headers = {k: v for k, v in response.headers.items() if k.lower() in ("location",)}
    state.records.update(KIND, rid, {"pending": False, "status_code": response.status_code,
                                     "body": json.loads(response.body), "headers": headers})
    return response
