"""Multipart uploads parsed as they arrive: file parts go straight to disk through an
ArtifactWriter, so the size limit stops an oversized upload at the first byte past it, and no
part is ever held whole in memory."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request

from service.errors import ProblemError
from service.storage.artifacts import ArtifactWriter, UploadTooLarge

MAX_FIELD_BYTES = 64 * 1024
MAX_PARTS = 32


@dataclass
class UploadedFile:
    field: str
    filename: str
    artifact: str
    size: int
    sha256: str


@dataclass
class ParsedForm:
    fields: dict[str, list[str]] = field(default_factory=dict)
    files: list[UploadedFile] = field(default_factory=list)

    def one(self, name: str) -> str | None:
        values = self.fields.get(name)
        return values[-1] if values else None


async def parse_multipart(request: Request, open_writer: Callable[[str], tuple[str, ArtifactWriter]],
                          max_file_bytes: int) -> ParsedForm:
    """Stream ``request`` into fields (small, in memory) and files (to disk via ``open_writer``)."""
    ctype, params = parse_options_header(request.headers.get("content-type", ""))
    if ctype != b"multipart/form-data" or b"boundary" not in params:
        raise ProblemError(415, "expected multipart/form-data with a boundary")
    form = ParsedForm()
    state: dict = {"headers": {}, "hname": b"", "hvalue": b"", "writer": None, "artifact": None,
                   "name": None, "filename": None, "buf": bytearray(), "parts": 0, "error": None}

    def on_part_begin() -> None:
        state.update(headers={}, writer=None, artifact=None, name=None, filename=None, buf=bytearray())
        state["parts"] += 1
        if state["parts"] > MAX_PARTS:
            raise ProblemError(413, f"too many form parts (max {MAX_PARTS})")

    def on_header_field(data: bytes, start: int, end: int) -> None:
        state["hname"] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        state["hvalue"] += data[start:end]

    def on_header_end() -> None:
        state["headers"][state["hname"].decode("latin-1").lower()] = state["hvalue"]
        state["hname"], state["hvalue"] = b"", b""

    def on_headers_finished() -> None:
        disp, opts = parse_options_header(state["headers"].get("content-disposition", b""))
        if disp != b"form-data" or b"name" not in opts:
            raise ProblemError(400, "every form part needs Content-Disposition: form-data; name=...")
        state["name"] = opts[b"name"].decode("utf-8", "replace")
        if b"filename" in opts:
            state["filename"] = opts[b"filename"].decode("utf-8", "replace") or "upload"
            state["artifact"], state["writer"] = open_writer(state["filename"])

    def on_part_data(data: bytes, start: int, end: int) -> None:
        if state["writer"] is not None:
            state["writer"].write(data[start:end])
        else:
            state["buf"] += data[start:end]
            if len(state["buf"]) > MAX_FIELD_BYTES:
                raise ProblemError(413, f"form field {state['name']!r} exceeds {MAX_FIELD_BYTES} bytes")

    def on_part_end() -> None:
        writer: ArtifactWriter | None = state["writer"]
        if writer is not None:
            digest = writer.commit()
            form.files.append(UploadedFile(state["name"], state["filename"], state["artifact"], writer.size, digest))
            state["writer"] = None
        elif state["name"] is not None:
            form.fields.setdefault(state["name"], []).append(bytes(state["buf"]).decode("utf-8", "replace"))

    parser = MultipartParser(params[b"boundary"], {
        "on_part_begin": on_part_begin, "on_header_field": on_header_field, "on_header_value": on_header_value,
        "on_header_end": on_header_end, "on_headers_finished": on_headers_finished,
        "on_part_data": on_part_data, "on_part_end": on_part_end})
    try:
        async for chunk in request.stream():
            parser.write(chunk)
        parser.finalize()
    except UploadTooLarge as exc:
        _cleanup(state, form, open_writer)
        raise ProblemError(413, str(exc), title="Upload too large") from exc
    except ProblemError:
        _cleanup(state, form, open_writer)
        raise
    except Exception as exc:  # malformed multipart framing
        _cleanup(state, form, open_writer)
        raise ProblemError(400, f"malformed multipart body: {exc}") from exc
    if state["writer"] is not None:  # body ended inside a file part
        _cleanup(state, form, open_writer)
        raise ProblemError(400, "malformed multipart body: truncated file part")
    return form


def _cleanup(state: dict, form: ParsedForm, open_writer) -> None:
    if state.get("writer") is not None:
        state["writer"].abort()
    discard = getattr(open_writer, "discard", None)
    if discard is not None:
        for f in form.files:
            discard(f.artifact)
    form.files.clear()
