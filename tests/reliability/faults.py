"""Real processes for the fault tests: redis-server with AOF on a loopback port that survives a restart,
named Celery workers, `voxagent serve`, and the test gate that holds jobs at their start.

Lease, heartbeat and reaper intervals are set small (`FAST`), so a lost worker is noticed in
seconds; every wait is a bounded poll of a state (a marker file, a job status, /readyz), never a
guessed sleep.
"""
from __future__ import annotations

import os
import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import httpx

from tests.service import procs

T = TypeVar("T")

# lease 4 s, beats every 0.5 s, sweeps every 0.5 s, 3 starts per job
FAST = {"VOXAGENT_LEASE_S": "4", "VOXAGENT_HEARTBEAT_S": "0.5", "VOXAGENT_REAPER_INTERVAL_S": "0.5",
        "VOXAGENT_MAX_ATTEMPTS": "3", "VOXAGENT_STORE_RETRY_S": "60", "VOXAGENT_RETRY_AFTER_S": "2",
        "VOXAGENT_AGENT_MAX_WALL_S": "3", "VOXAGENT_AGENT_MAX_STEPS": "2"}


def wait_for(fetch: Callable[[], T], done: Callable[[T], bool], timeout_s: float, what: str,
             logs: Callable[[], str] = lambda: "") -> T:
    """Poll ``fetch()`` until ``done(value)``; the bound turns a hang into a failure with the logs."""
    deadline = time.monotonic() + timeout_s
    value = None
    while time.monotonic() < deadline:
        try:
            value = fetch()
        except (httpx.HTTPError, OSError) as exc:
            value = exc  # type: ignore[assignment]
        else:
            if done(value):
                return value
        time.sleep(0.05)
    raise AssertionError(f"{what}: not reached in {timeout_s} s (last: {value!r})\n{logs()}")


class Redis:
    """redis-server with AOF (fsync on every write) in ``tmp``, restartable on the same port."""

    def __init__(self, tmp: Path) -> None:
        self.tmp, self.port = tmp, procs.free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: procs.Proc | None = None
        self.starts = 0

    def start(self) -> None:
        exe = shutil.which("redis-server")
        assert exe, "redis-server is not installed (make system-deps)"
        self.starts += 1
        self.proc = procs.Proc([exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                "--appendonly", "yes", "--appendfsync", "always", "--dir", str(self.tmp)],
                               dict(os.environ), self.tmp / f"redis-{self.starts}.log")
        import redis

        def ping():
            try:
                return redis.Redis.from_url(self.url, socket_timeout=1).ping()
            except redis.RedisError:  # refused, or still loading the AOF
                return False

        wait_for(ping, bool, 30, "redis-server answers", self.proc.tail)

    def kill(self) -> None:
        """A crash: SIGKILL, no shutdown save (the AOF, fsynced per write, is all that survives)."""
        assert self.proc is not None
        os.killpg(self.proc.p.pid, signal.SIGKILL)
        self.proc.p.wait(10)
        self.proc.stop()

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()


def start_worker(env: dict[str, str], tmp: Path, queues: str, name: str) -> procs.Proc:
    return procs.Proc([*procs.VOXAGENT, "worker", "--queues", queues, "--name", name], env, tmp / f"worker-{name}.log")


def start_api(env: dict[str, str], tmp: Path, name: str, warm: bool = False) -> tuple[procs.Proc, str]:
    port = procs.free_port()
    argv = [*procs.VOXAGENT, "serve", "--host", "127.0.0.1", "--port", str(port)] + ([] if warm else ["--no-warm"])
    proc = procs.Proc(argv, env, tmp / f"{name}.log")
    url = f"http://127.0.0.1:{port}"

    def healthy():
        assert proc.alive(), "API exited:\n" + proc.tail()
        return httpx.get(url + "/healthz", timeout=1).status_code

    wait_for(healthy, lambda s: s == 200, 90, f"{name} answers /healthz", proc.tail)
    return proc, url


def upload_volume(client, path: Path, headers: dict[str, str]) -> str:  # noqa: ANN001 - an httpx.Client
    """POST ``path`` to /v1/volumes; the new volume's id."""
    with open(path, "rb") as fh:
        r = client.post("/v1/volumes", files={"file": (path.name, fh)}, headers=headers)
    assert r.status_code == 201, r.text
    return r.json()["id"]


def sigkill(proc: procs.Proc) -> None:
    os.killpg(proc.p.pid, signal.SIGKILL)
    proc.p.wait(10)
    proc.stop()


class Gate:
    """The test gate of service.tasks.gate: jobs wait at their start while it is closed."""

    def __init__(self, root: Path) -> None:
        self.dir = root
        self.dir.mkdir(parents=True, exist_ok=True)

    def close(self) -> None:
        (self.dir / "closed").write_text("")

    def open(self) -> None:
        (self.dir / "closed").unlink(missing_ok=True)

    def started(self, job_id: str, attempt: int) -> Path:
        return self.dir / f"started.{job_id}.{attempt}"

    def wait_started(self, job_id: str, attempt: int, timeout_s: float, logs: Callable[[], str]) -> str:
        """The lease owner (node/host/pid/boot) of that attempt, once it has started."""
        p = self.started(job_id, attempt)
        wait_for(p.exists, bool, timeout_s, f"job {job_id} attempt {attempt} started", logs)
        return p.read_text()


def owner_pid(owner: str) -> int:
    return int(owner.rsplit("/", 3)[2])
