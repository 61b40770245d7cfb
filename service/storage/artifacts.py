"""Content-checksummed files under ``<data_dir>/artifacts/<tenant>/``.

Files are addressed by an opaque id; the tenant is part of the path, so an id guessed from
another tenant resolves to nothing. Writes go to a temporary name and are renamed when
complete, so a crash never leaves a half file under a valid id.
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import uuid
from pathlib import Path

_SAFE = re.compile(r"^[A-Za-z0-9_.-]{1,80}$")


class UploadTooLarge(Exception):
    """Raised while streaming, as soon as the byte limit is passed."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"upload exceeds the limit of {limit} bytes")
        self.limit = limit


def _check(part: str, what: str) -> str:
    if not _SAFE.fullmatch(part) or part in {".", ".."}:  # fullmatch: "$" would let "x\n" through
        raise ValueError(f"invalid {what}: {part!r}")
    return part


class ArtifactWriter:
    """Streams bytes to disk, hashing them and enforcing a size limit on the way."""

    def __init__(self, final: Path, max_bytes: int) -> None:
        self.final = final
        self.tmp = final.with_name(f".{final.name}.part")
        self.max_bytes = max_bytes
        self.size = 0
        self._hash = hashlib.sha256()
        self._fh = open(self.tmp, "wb")

    def write(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > self.max_bytes:
            self.abort()
            raise UploadTooLarge(self.max_bytes)
        self._hash.update(chunk)
        self._fh.write(chunk)

    def commit(self) -> str:
        self._fh.close()
        os.replace(self.tmp, self.final)
        return self._hash.hexdigest()

    def abort(self) -> None:
        if not self._fh.closed:
            self._fh.close()
        self.tmp.unlink(missing_ok=True)


class ArtifactStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def _dir(self, tenant: str) -> Path:
        d = self.root / _check(tenant, "tenant")
        d.mkdir(parents=True, exist_ok=True)
        return d

    @staticmethod
    def new_id(prefix: str = "art") -> str:
        return f"{prefix}_{uuid.uuid4().hex}"

    def path(self, tenant: str, name: str) -> Path:
        """Where an artifact lives (it may not exist yet)."""
        return self._dir(tenant) / _check(name, "artifact name")

    def writer(self, tenant: str, name: str, max_bytes: int) -> ArtifactWriter:
        return ArtifactWriter(self.path(tenant, name), max_bytes)

    def put_file(self, tenant: str, name: str, src: Path) -> tuple[Path, str]:
        """Copy a finished file in (e.g. a worker's output mask); returns (path, sha256)."""
        dst = self.path(tenant, name)
        tmp = dst.with_name(f".{dst.name}.part")
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
        return dst, sha256_file(dst)

    def adopt(self, tenant: str, name: str, src: Path) -> tuple[Path, str]:
        """Move a file written inside this store (a job's output) to its artifact name: one write in
        all, no copy left behind. Falls back to copy-and-delete across file systems."""
        if not Path(src).resolve().is_relative_to(self._dir(tenant).resolve()):
            return self.put_file(tenant, name, src)  # not ours to move: copy
        dst = self.path(tenant, name)
        try:
            os.replace(src, dst)
        except OSError:
            self.put_file(tenant, name, src)
            Path(src).unlink(missing_ok=True)
        return dst, sha256_file(dst)

    def exists(self, tenant: str, name: str) -> bool:
        try:
            return self.path(tenant, name).is_file()
        except ValueError:
            return False

    def delete(self, tenant: str, name: str) -> bool:
        p = self.path(tenant, name)
        if p.is_file():
            p.unlink()
            return True
        return False

    def job_dir(self, tenant: str, job_id: str) -> Path:
        d = self._dir(tenant) / _check(job_id, "job id")
        d.mkdir(parents=True, exist_ok=True)
        return d

    def ping(self) -> bool:
        probe = self.root / ".probe"
        probe.write_bytes(b"ok")
        probe.unlink()
        return True


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()
