"""Property-based API fuzzing from the OpenAPI schema: whatever the input, never a 5xx,
and every error is problem+json."""
from __future__ import annotations

import pytest
from hypothesis import HealthCheck, settings

schemathesis = pytest.importorskip("schemathesis", reason="schemathesis is in the [test] extras")

import tempfile  # noqa: E402 - below the importorskip that skips the module
from pathlib import Path  # noqa: E402 - below importorskip

from service import auth  # noqa: E402 - below importorskip
from service.app import create_app  # noqa: E402 - below importorskip
from service.settings import Settings  # noqa: E402 - below importorskip

_tmp = Path(tempfile.mkdtemp(prefix="voxagent-fuzz-"))
app = create_app(Settings(data_dir=_tmp, broker_url=None, max_upload_bytes=100_000))
schema = schemathesis.openapi.from_asgi("/openapi.json", app)


@schemathesis.serializer("multipart/related")
def _related(ctx, value) -> bytes:
    """STOW-RS bodies (multipart/related DICOM): the generated value as raw bytes, whatever it is."""
    return value if isinstance(value, bytes) else str(value).encode()


@pytest.fixture(scope="module")
def key():
    from fastapi.testclient import TestClient

    with TestClient(app):  # keeps the lifespan (stores, pool) running while schemathesis calls the app
        k, _ = auth.create_key(app.state.service.records, "fuzz")
        yield k


@pytest.mark.slow
@schema.parametrize()
@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_server_errors(case, key):
    response = case.call(headers={"X-API-Key": key})
    assert response.status_code < 500, (case.method, case.formatted_path, response.text[:500])
    if response.status_code >= 400:
        assert response.headers["content-type"][0].startswith("application/problem+json") \
            if isinstance(response.headers["content-type"], list) else \
            response.headers["content-type"].startswith("application/problem+json"), response.text[:300]
