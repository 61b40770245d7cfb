"""/docs and /redoc work without internet (issue 22): their scripts come from the installed
fastapi-offline wheel, served by the service itself; no script or stylesheet URL leaves the host."""
from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings

ASSET = re.compile(r"""<(?:script|link)\b[^>]*?(?:src|href)\s*=\s*["']([^"']+)["']""", re.IGNORECASE)


@pytest.fixture
def client(tmp_path):
    with TestClient(create_app(Settings(data_dir=tmp_path / "data", broker_url=None))) as c:
        yield c


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_load_their_assets_from_the_service(client, page):
    r = client.get(page)
    assert r.status_code == 200 and "text/html" in r.headers["content-type"]
    urls = ASSET.findall(r.text)
    assert any(u.endswith(".js") for u in urls), urls
    assert not re.search(r"""https?://[^"'\s]*\.(?:js|css)""", r.text), "a CDN URL in " + page
    for url in urls:
        assert not url.startswith(("http://", "https://", "//")), url
        asset = client.get(url)
        assert asset.status_code == 200 and len(asset.content) > 1000, url
    assert client.get("/openapi.json").status_code == 200


def test_the_page_and_its_scripts_are_served_from_the_service(client):
    """The page at / loads only same-origin scripts (NiiVue from the npm install), under a CSP that
    forbids any other origin."""
    r = client.get("/")
    assert r.status_code == 200 and "text/html" in r.headers["content-type"]
    assert "script-src 'self'" in r.headers["content-security-policy"]
    scripts = re.findall(r"""<script\b[^>]*\bsrc\s*=\s*["']([^"']+)["']""", r.text)
    assert "/web/vendor/niivue.js" in scripts and "/web/app.js" in scripts
    for url in scripts + ["/web/style.css"]:
        assert not url.startswith(("http://", "https://", "//")), url
        asset = client.get(url)
        assert asset.status_code == 200 and len(asset.content) > 1000, url
    assert "/" not in client.get("/openapi.json").json()["paths"]  # the page is no API route
