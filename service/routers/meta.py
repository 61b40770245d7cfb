"""/v1/models, /healthz, /readyz, /metrics."""
from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from api_schemas.health import ComponentHealth, Health
from api_schemas.models import ModelInfo
from service.auth import Principal
from service.deps import get_principal, get_state, key_unless_open
from service.model_info import describe
from service.observability import QUEUE_DEPTH
from service.state import ServiceState
from service.workers.presence import QUEUE_MODELS

router = APIRouter(tags=["service"])


@router.get("/v1/models", response_model=ModelInfo, summary="The loaded model, presets, targets, function library")
def models(principal: Principal = Depends(get_principal), state: ServiceState = Depends(get_state)):
    return describe(state.settings.models_dir)


@router.get("/healthz", response_model=Health, summary="Liveness: the process answers")
def healthz(state: ServiceState = Depends(get_state)):
    return Health(status="ok", mode=state.dispatcher.mode, components=[])


def _check(name: str, fn) -> ComponentHealth:
    try:
        result = fn()
        ok, detail = result if isinstance(result, tuple) else (bool(result), None)
        return ComponentHealth(name=name, ok=ok, detail=detail)
    except Exception as exc:  # noqa: BLE001 - a failing check is reported as unhealthy, not raised
        return ComponentHealth(name=name, ok=False, detail=f"{type(exc).__name__}: {exc}")


@router.get("/readyz", response_model=Health, summary="Readiness: stores, broker, queue consumers and models",
            responses={503: {"model": Health}})
def readyz(request: Request, response: Response, state: ServiceState = Depends(get_state),
           _: Principal | None = Depends(key_unless_open("readyz_public"))):
    """Open unless ``readyz_public`` is off (settings). Ready means a job sent now will run: the
    stores answer, and either this process runs jobs with its models loaded (embedded), or every
    queue has a live worker holding its model (distributed)."""
    comps = [_check("job_store", state.records.ping), _check("artifact_store", state.artifacts.ping),
             _check("dispatcher", state.dispatcher.ping)]
    if state.settings.distributed:
        comps += _queue_components(state)
    comps.append(_models_component(state, getattr(request.app.state, "models_required", False)))
    ok = all(c.ok for c in comps)
    reason = None if ok else "; ".join(f"{c.name}: {c.detail}" for c in comps if not c.ok)
    body = Health(status="ok" if ok else "unavailable", mode=state.dispatcher.mode, components=comps, reason=reason)
    response.status_code = 200 if ok else 503
    if not ok:
        response.headers["Retry-After"] = str(state.settings.retry_after_s)
    return body


def _queue_components(state: ServiceState) -> list[ComponentHealth]:
    """Per queue: the worker processes whose presence (service.workers.presence) has not expired."""
    try:
        consumers = state.dispatcher.consumers() or []
    except Exception as exc:  # noqa: BLE001 - unreadable presence is reported, not raised
        return [ComponentHealth(name=f"queue:{q}", ok=False, detail=f"worker presence unreadable: {exc}")
                for q in QUEUE_MODELS]
    out = []
    for queue, model in QUEUE_MODELS.items():
        serving = [c for c in consumers if queue in c.queues]
        ready = [c for c in serving if c.ready_for(queue)]
        if not serving:
            detail = f"no worker consumes it (none seen in the last {state.settings.lease_s:g} s)"
        else:
            names = ", ".join(sorted({c.node for c in serving}))
            detail = f"{len(serving)} consumer(s) ({names}); {model} model loaded in {len(ready)}"
        out.append(ComponentHealth(name=f"queue:{queue}", ok=bool(ready), detail=detail, consumers=len(serving),
                                   model_loaded=len(ready)))
    return out


def _models_component(state: ServiceState, required: bool) -> ComponentHealth:
    from service.tasks import resources

    info = describe(state.settings.models_dir)
    loaded = resources.loaded()
    name = f"{info.name} ({'trained' if info.trained else 'random-init'})"
    if state.settings.distributed:
        return ComponentHealth(name="models", ok=True, detail=f"{name}; loaded by the workers (see queue:*)")
    missing = [m for m in ("agent", "vision") if m not in loaded]
    if not missing:
        return ComponentHealth(name="models", ok=True, detail=f"{name}; loaded")
    if not required:  # started with --no-warm: loaded by the first job, by choice
        return ComponentHealth(name="models", ok=True, detail=f"{name}; loads on the first job (warm-up off)")
    return ComponentHealth(name="models", ok=False, detail=f"{name}; not loaded: {', '.join(missing)}")


@router.get("/metrics", summary="Prometheus metrics (an API key unless `metrics_public`)", response_class=Response,
            responses={200: {"content": {"text/plain": {}}}})
def metrics(state: ServiceState = Depends(get_state),
            _: Principal | None = Depends(key_unless_open("metrics_public"))):
    try:
        QUEUE_DEPTH.set(state.records.count_active(None))
    except Exception:  # noqa: BLE001 - a scrape must not fail because the store blinked
        pass
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
