"""Request dependencies: the service state, the caller's tenant, backpressure."""
from __future__ import annotations

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from service import auth
from service.errors import ProblemError
from service.observability import REJECTED
from service.state import ServiceState

# Listing offsets beyond this are refused (422): no tenant holds a billion records, and the record
# stores' integers (SQLite's are 64-bit) must never see an unbounded client number.
MAX_LIST_OFFSET = 10**9

_api_key = APIKeyHeader(name="X-API-Key", auto_error=False, description="API key: vxa_<id>_<secret>")
_bearer = HTTPBearer(auto_error=False, description="The API key as a bearer token")


def get_state(request: Request) -> ServiceState:
    return request.app.state.service


def get_principal(request: Request, state: ServiceState = Depends(get_state),
                  key: str | None = Depends(_api_key),
                  bearer: HTTPAuthorizationCredentials | None = Depends(_bearer)) -> auth.Principal:
    if state.settings.auth == "off":
        return auth.Principal(tenant="default", key_id=None)
    principal = auth.authenticate(state.records, key or (bearer.credentials if bearer else None))
    if principal is None:
        raise ProblemError(401, "a valid API key is required (X-API-Key header or Authorization: Bearer)",
                           headers={"WWW-Authenticate": 'Bearer realm="voxagent"'})
    request.state.tenant = principal.tenant
    return principal


def key_unless_open(setting: str):
    """A dependency: the caller's principal, unless the boolean setting ``setting`` opens the route to
    anyone (then None). For routes that infrastructure calls without a key (probes, scrapers)."""

    def dependency(request: Request, state: ServiceState = Depends(get_state),
                   key: str | None = Depends(_api_key),
                   bearer: HTTPAuthorizationCredentials | None = Depends(_bearer)) -> auth.Principal | None:
        if getattr(state.settings, setting):
            return None
        return get_principal(request, state, key, bearer)

    return dependency


def admit(state: ServiceState, tenant: str, n: int = 1) -> None:
    """Refuse new work when the tenant or the whole queue is full (429 + Retry-After)."""
    s = state.settings
    retry = {"Retry-After": str(s.retry_after_s)}
    if state.records.count_active(tenant) + n > s.tenant_concurrency:
        REJECTED.labels("tenant").inc()
        raise ProblemError(429, f"tenant has too many queued or running jobs (limit {s.tenant_concurrency})",
                           headers=retry)
    if state.records.count_active(None) + n > s.queue_limit:
        REJECTED.labels("queue").inc()
        raise ProblemError(429, f"the job queue is full (limit {s.queue_limit})", headers=retry)
