"""/v1/models, /healthz, /readyz, /metrics."""
from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from api_schemas.health import ComponentHealth, Health
from api_schemas.models import ModelInfo
from service.auth import Principal
from service.deps import get_principal, get_state
from service.model_info import describe
from service.observability import QUEUE_DEPTH
from service.state import ServiceState

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


@router.get("/readyz", response_model=Health, summary="Readiness: broker, stores and models",
            responses={503: {"model": Health}})
def readyz(response: Response, state: ServiceState = Depends(get_state)):
    from service.tasks import resources

    comps = [_check("job_store", state.records.ping), _check("artifact_store", state.artifacts.ping),
             _check("dispatcher", state.dispatcher.ping)]
    info = describe(state.settings.models_dir)
    loaded = resources.loaded()
    comps.append(ComponentHealth(name="models", ok=True,
                                 detail=f"{info.name} ({'trained' if info.trained else 'random-init'}); "
                                        f"loaded in this process: {', '.join(loaded) or 'none (workers load them)'}"))
    ok = all(c.ok for c in comps)
    body = Health(status="ok" if ok else "unavailable", mode=state.dispatcher.mode, components=comps)
    response.status_code = 200 if ok else 503
    return body


@router.get("/metrics", summary="Prometheus metrics", response_class=Response,
            responses={200: {"content": {"text/plain": {}}}})
def metrics(state: ServiceState = Depends(get_state)):
    try:
        QUEUE_DEPTH.set(state.records.count_active(None))
    except Exception:  # noqa: BLE001 - a scrape must not fail because the store blinked
        pass
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
