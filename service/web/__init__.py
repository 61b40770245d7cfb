"""The web page at ``/``: upload scans, run a prompt, check the answer with the masks over the scans.

The page is static (``static/``: plain HTML, CSS and JavaScript) and talks to the public API only,
with the user's API key, so it can do nothing a script with the same key could not. Its one
third-party asset, the NiiVue viewer, is the browser bundle that npm installs from
``package.json`` / ``package-lock.json`` into ``node_modules/`` (``make install`` runs ``npm ci``);
it is never copied into the repository, and the service serves it from there, so the page works on
a machine without internet, like /docs.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from service.errors import ProblemError

log = logging.getLogger(__name__)

WEB_DIR = Path(__file__).resolve().parent
STATIC_DIR = WEB_DIR / "static"
# npm's install beside this file (a checkout), or where VOXAGENT_WEB_NODE_MODULES says (an image that
# installs the package into site-packages and runs `npm ci` elsewhere, see the Dockerfile)
NODE_MODULES = Path(os.environ.get("VOXAGENT_WEB_NODE_MODULES") or WEB_DIR / "node_modules")
NIIVUE_BUNDLE = NODE_MODULES / "@niivue" / "niivue" / "dist" / "niivue.umd.js"

# The page's own scripts only: no inline script, no eval, no other origin. blob: URLs carry the scans
# and masks the page fetched with its key (NiiVue loads them like files).
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
       "connect-src 'self' blob: data:; worker-src 'self' blob:; object-src 'none'; base-uri 'none'; "
       "frame-ancestors 'none'; form-action 'none'")


def mount(app: FastAPI) -> None:
    """Add ``/`` (the page), ``/web/...`` (its files) and ``/web/vendor/niivue.js`` to ``app``."""

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html",
                            headers={"Content-Security-Policy": CSP, "Cache-Control": "no-cache"})

    @app.get("/web/vendor/niivue.js", include_in_schema=False)
    def niivue() -> FileResponse:
        if not NIIVUE_BUNDLE.is_file():
            log.warning("NiiVue bundle missing", extra={"path": str(NIIVUE_BUNDLE)})
            raise ProblemError(503, "the viewer is not installed on this server: run `make install` "
                                    "(npm ci in service/web)", title="Viewer not installed")
        return FileResponse(NIIVUE_BUNDLE, media_type="text/javascript")

    app.mount("/web", StaticFiles(directory=STATIC_DIR), name="web")
