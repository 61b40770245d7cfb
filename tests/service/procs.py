"""Start and stop the real processes the integration tests talk to (redis-server, celery, uvicorn)."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[2]
VOXAGENT = [sys.executable, "-m", "cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Proc:
    """A child process in its own process group, stopped by its id (never by name)."""

    def __init__(self, argv: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        self._fh = open(log, "wb")
        self.p = subprocess.Popen(argv, env=env, cwd=REPO, stdout=self._fh, stderr=subprocess.STDOUT,
                                  start_new_session=True)

    def alive(self) -> bool:
        return self.p.poll() is None

    def tail(self, n: int = 4000) -> str:
        return self.log.read_bytes()[-n:].decode("utf-8", "replace")

    def stop(self, timeout: float = 10.0) -> None:
        if self.p.poll() is None:
            os.killpg(self.p.pid, signal.SIGTERM)
            try:
                self.p.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.p.pid, signal.SIGKILL)
                self.p.wait(5)
        self._fh.close()


def base_env(data_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOXAGENT_")}
    env.update({"VOXAGENT_DATA_DIR": str(data_dir), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
                "VOXAGENT_WEBHOOK_BACKOFF_S": "0.2"})
    env.update(extra)
    return env


def start_redis(tmp: Path) -> tuple[Proc, str]:
    exe = shutil.which("redis-server")
    if exe is None:
        raise RuntimeError("redis-server is not installed (make test installs it: apt-get install redis-server)")
    port = free_port()
    proc = Proc([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                 "--dir", str(tmp)], dict(os.environ), tmp / "redis.log")
    url = f"redis://127.0.0.1:{port}/0"
    import redis

    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            if redis.Redis.from_url(url).ping():
                return proc, url
        except redis.ConnectionError:
            time.sleep(0.05)
    proc.stop()
    raise RuntimeError("redis-server did not start:\n" + proc.tail())


def start_api(env: dict[str, str], tmp: Path, name: str = "api") -> tuple[Proc, str]:
    port = free_port()
    proc = Proc([*VOXAGENT, "serve", "--host", "127.0.0.1", "--port", str(port), "--no-warm"], env,
                tmp / f"{name}.log")
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError("API exited:\n" + proc.tail())
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.stop()
    raise RuntimeError("API did not start:\n" + proc.tail())


def start_worker(env: dict[str, str], tmp: Path, queues: str) -> Proc:
    name = queues.replace(",", "-")
    return Proc([*VOXAGENT, "worker", "--queues", queues, "--name", f"{name}-test@localhost"], env,
                tmp / f"worker-{name}.log")


def wait_workers(broker_url: str, names: list[str], procs: list[Proc], timeout: float = 120) -> None:
    from celery import Celery

    app = Celery(broker=broker_url)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            for p in procs:
                if not p.alive():
                    raise RuntimeError("worker exited:\n" + p.tail())
            replies = app.control.ping(timeout=1.0) or []
            seen = {k for r in replies for k in r}
            if all(n in seen for n in names):
                return
        raise RuntimeError("workers did not answer ping:\n" + "\n".join(p.tail() for p in procs))
    finally:
        app.close()


def make_key(env: dict[str, str], tenant: str) -> str:
    out = subprocess.run([*VOXAGENT, "keys", "create", "--tenant", tenant], env=env, cwd=REPO,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()
