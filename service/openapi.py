"""The error responses every route documents: RFC 9457 problem+json for each status it may send.

Declared once, where the routers are included (``include_router(responses=...)``), so a new route
cannot forget them; a route's own entry for a status (e.g. /readyz's 503 body) takes precedence.
The ``Problem`` schema is added to the document's components here, since no route returns it as
its model.
"""
from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from api_schemas.problem import Problem
from service.errors import PROBLEM_JSON

_REF = {"$ref": "#/components/schemas/Problem"}
_WHY = {
    400: "Malformed request (e.g. a broken multipart body)",
    401: "No valid API key",
    404: "Not found (or owned by another tenant)",
    413: "Too large: request body, upload, or an upload's decompressed size",
    415: "Unsupported media type",
    422: "Validation failed or the input is unusable (the detail says why)",
    429: "Too many queued or running jobs (Retry-After)",
    503: "A store, the broker or the memory budget is unavailable for now (Retry-After)",
}
PROBLEM_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"description": why, "content": {PROBLEM_JSON: {"schema": _REF}}} for status, why in _WHY.items()
}


def install(app: FastAPI) -> None:
    """Wrap ``app.openapi`` so the generated document holds the Problem schema."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = generate()
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            components.setdefault("Problem", Problem.model_json_schema(ref_template="#/components/schemas/{model}"))
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI documents this override
