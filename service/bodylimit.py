"""A bound on request bodies that are read whole (JSON), enforced before they are read.

FastAPI reads a JSON body completely before validation sees it, so a 300 MB body would sit in memory
(and then as parsed objects, several times over) only to be refused. This ASGI middleware answers
413 problem+json at once when ``Content-Length`` says too much, and otherwise counts the bytes as
they arrive, buffering at most ``max_bytes`` before the route runs; a chunked body that grows past
the bound is refused without reading the rest.

Multipart bodies are exempt: the upload routes stream them to disk with their own size limit
(:mod:`service.uploads`, ``max_upload_bytes``), as does STOW-RS (``multipart/related``).
"""
from __future__ import annotations

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import problem_response
from service.memory import mb

METHODS_WITH_BODIES = frozenset({"POST", "PUT", "PATCH", "DELETE"})


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in METHODS_WITH_BODIES or _is_streamed(scope):
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await self._refuse(scope, receive, send, f"the request body is {mb(declared)}")
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body = message.get("body", b"")
            size += len(body)
            if size > self.max_bytes:
                await self._refuse(scope, receive, send, "the request body grew past the limit")
                return
            chunks.append(body)
            if not message.get("more_body", False):
                break
        await self.app(scope, _replay(b"".join(chunks), receive), send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, what: str) -> None:
        response = problem_response(Request(scope), 413, "Request body too large",
                                    f"{what}; at most {mb(self.max_bytes)} is accepted for this kind of request "
                                    "(volumes go to the multipart upload routes)",
                                    type_="https://voxagent.dev/problems/too-large",
                                    headers={"Connection": "close"}, limit_bytes=self.max_bytes)
        await response(scope, receive, send)


def _is_streamed(scope: Scope) -> bool:
    for name, value in scope.get("headers", ()):
        if name == b"content-type":
            return value.split(b";", 1)[0].strip().lower().startswith(b"multipart/")
    return False


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _replay(body: bytes, receive: Receive) -> Receive:
    """The buffered body as one message, then whatever the client sends next (a disconnect)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
