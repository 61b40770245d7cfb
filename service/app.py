"""The FastAPI application: routers, problem+json errors, request ids, latency metrics.

``create_app(settings)`` builds one; ``voxagent serve`` runs it under uvicorn. The embedded
default (no broker) runs jobs in a thread pool of this process and loads the models at start-up.
"""
from __future__ import annotations

import logging
import re
import time
import uuid
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi_offline import FastAPIOffline

from service import errors, openapi
from service.bodylimit import BodyLimitMiddleware
from service.observability import REQUEST_LATENCY, request_id_var
from service.openapi import PROBLEM_RESPONSES
from service.routers import analyses, artifacts, batches, dicom, meta, volumes
from service.settings import Settings, get_settings
from service.state import ServiceState

log = logging.getLogger("service.access")
_RID = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")


def create_app(settings: Settings | None = None, *, warm_models: bool = False) -> FastAPI:
    settings = settings or get_settings()
    if settings.routing_rules:  # a typo in the rules stops the start, with the place named
        from service.dicom.routing import config_of

        config_of(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        state = ServiceState.build(settings)
        app.state.service = state
        app.state.models_required = warm_models and not settings.distributed  # /readyz: loaded, or not ready
        if warm_models and not settings.distributed:
            from starlette.concurrency import run_in_threadpool

            await run_in_threadpool(_warm, settings)
        log.info("voxagent service ready (%s mode, data in %s)", state.dispatcher.mode, settings.data_dir)
        try:
            yield
        finally:
            state.close()

    # /docs and /redoc load Swagger UI and ReDoc from the installed fastapi-offline package, never a
    # CDN: a hospital machine has no internet, and a blank docs page there is no docs at all.
    app = FastAPIOffline(title="voxagent", version="1.0.0", lifespan=lifespan, static_url="/static-docs",
                         description="Language-driven analysis of 3D brain MRI/CT. Errors are RFC 9457 problem+json.")
    errors.install(app)
    # added before request_context, which therefore wraps it: refusals get a request id and a latency
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_json_body_bytes)

    @app.middleware("http")
    async def request_context(request: Request, call_next):
        incoming = request.headers.get("X-Request-ID", "")
        rid = incoming if _RID.match(incoming) else uuid.uuid4().hex
        request.state.request_id = rid
        token = request_id_var.set(rid)
        t0 = time.perf_counter()
        status = 500
        try:
            response = await call_next(request)
            status = response.status_code
            response.headers["X-Request-ID"] = rid
            return response
        finally:
            elapsed = time.perf_counter() - t0
            route = request.scope.get("route")
            REQUEST_LATENCY.labels(request.method, getattr(route, "path", "unmatched"), str(status)).observe(elapsed)
            log.info("request", extra={"method": request.method, "path": request.url.path, "status": status,
                                       "duration_ms": round(elapsed * 1000, 2)})
            request_id_var.reset(token)

    for r in (volumes.router, analyses.router, artifacts.router, batches.router, meta.router, dicom.router,
              dicom.dicomweb_router):
        app.include_router(r, responses=PROBLEM_RESPONSES)  # problem+json for every error status, every route
    openapi.install(app)
    from service import web

    web.mount(app)  # the page at / (static files; it calls the API above like any client)
    return app


def _warm(settings: Settings) -> None:
    """Load models once at start-up so the first request does not pay for it."""
    from service.tasks import resources

    try:
        resources.vision_engine(settings.models_dir)
    except Exception:  # noqa: BLE001 - the service starts; jobs load it on first use
        log.warning("vision engine not available", exc_info=True)
    try:
        resources.agent_runtime(settings.models_dir)
    except Exception:  # noqa: BLE001 - the service starts; jobs load it on first use
        log.warning("agent runtime not available", exc_info=True)
