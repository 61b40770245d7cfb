"""RFC 9457 problem details for every error response, validation errors included."""
from __future__ import annotations

import logging
from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from api_schemas.problem import Problem

log = logging.getLogger(__name__)
PROBLEM_JSON = "application/problem+json"


class ProblemError(Exception):
    """Raise anywhere in a request to answer with a problem document."""

    def __init__(self, status: int, detail: str | None = None, *, title: str | None = None,
                 type_: str = "about:blank", headers: dict[str, str] | None = None, **extra) -> None:
        super().__init__(detail or title)
        self.status = status
        self.detail = detail
        self.title = title or HTTPStatus(status).phrase
        self.type = type_
        self.headers = headers or {}
        self.extra = extra


def problem_response(request: Request, status: int, title: str | None = None, detail: str | None = None,
                     type_: str = "about:blank", headers: dict[str, str] | None = None, **extra) -> JSONResponse:
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Error"
    body = Problem(type=type_, title=title or phrase, status=status, detail=detail,
                   instance=str(request.url.path), **extra)
    rid = getattr(request.state, "request_id", None)
    if rid:
        body.request_id = rid  # type: ignore[attr-defined]  # Problem allows extension members (RFC 9457)
    return JSONResponse(body.model_dump(exclude_none=True), status_code=status, media_type=PROBLEM_JSON,
                        headers=headers)


def install(app: FastAPI) -> None:
    @app.exception_handler(ProblemError)
    async def _problem(request: Request, exc: ProblemError):
        return problem_response(request, exc.status, exc.title, exc.detail, exc.type, exc.headers, **exc.extra)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        detail = exc.detail if isinstance(exc.detail, str) else None
        return problem_response(request, exc.status_code, detail=detail, headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        errors = [{"loc": [str(p) for p in e.get("loc", ())], "msg": str(e.get("msg", "")), "type": e.get("type")}
                  for e in exc.errors()]
        detail = "; ".join(f"{'.'.join(e['loc'])}: {e['msg']}" for e in errors) or "invalid request"
        return problem_response(request, 422, "Validation failed", detail[:2000],
                                type_="https://voxagent.dev/problems/validation", errors=errors[:50])

    from service.storage.outage import outage_errors

    async def _outage(request: Request, exc: Exception):
        """The job store or the broker is unreachable (a Redis restart, a network cut): a 503 the
        client may retry, never a 500. The server log names the error; the client is told no more."""
        state = getattr(request.app.state, "service", None)
        retry = str(state.settings.retry_after_s if state is not None else 5)
        log.warning("store or broker unavailable on %s: %s: %s", request.url.path, type(exc).__name__, exc)
        return problem_response(request, 503, "Service Unavailable",
                                "the job store or the message broker is unavailable; retry later",
                                type_="https://voxagent.dev/problems/unavailable", headers={"Retry-After": retry})

    for cls in outage_errors():
        app.add_exception_handler(cls, _outage)

    @app.exception_handler(Exception)
    async def _unhandled(request: Request, exc: Exception):
        log.exception("unhandled error on %s", request.url.path)
        return problem_response(request, 500, detail="internal error; see the server log with this request_id")
