"""`voxagent worker --queues agent|vision|agent,vision`: a Celery worker of the distributed deployment."""
from __future__ import annotations

import argparse
import os
import socket

QUEUES = {"agent", "vision"}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("worker", help="run a Celery worker (needs VOXAGENT_BROKER_URL)")
    p.add_argument("--queues", default="agent,vision", help="comma-separated: agent, vision")
    p.add_argument("--concurrency", type=int, default=1, help="agent workers: processes (prefork)")
    p.add_argument("--name", default=None, help="node name (default <queues>-<pid>@<host>)")
    p.add_argument("--metrics-port", type=int, default=None, help="serve Prometheus metrics on this port")
    p.add_argument("--check", action="store_true",
                   help="health check, runs no worker: exit 0 if a worker of these queues on this host answers "
                        "a Celery ping (docker-compose.yml's healthcheck), else 1")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cli.errors import CommandError

    queues = [q.strip() for q in args.queues.split(",") if q.strip()]
    if not queues or set(queues) - QUEUES:
        raise CommandError(f"--queues must name some of {sorted(QUEUES)}, got {args.queues!r}")
    from service.settings import get_settings

    if args.check:
        return _check(queues, args.name)
    name = args.name or f"{'-'.join(queues)}-{os.getpid()}@{socket.gethostname()}"
    # the environment carries the queues and the node name (job leases, presence for /readyz) to
    # this process's settings and to prefork children
    os.environ["VOXAGENT_WORKER_QUEUES"] = ",".join(queues)
    os.environ["VOXAGENT_WORKER_NAME"] = name
    get_settings.cache_clear()
    if not get_settings().broker_url:
        raise CommandError("set VOXAGENT_BROKER_URL=redis://host:6379/0 to run a worker")
    if "vision" in queues:
        # this worker's own queue: later vision calls of a job come back to the encodings it holds
        queues.append(f"vision.{name}")
    if args.metrics_port:
        from prometheus_client import start_http_server

        start_http_server(args.metrics_port)
    from service.workers.celery_app import app

    # vision workers hold encodings in process memory, so they run one process (threads share it)
    pool = ["--pool", "threads", "--concurrency", "2"] if "vision" in queues else \
        ["--pool", "prefork" if args.concurrency > 1 else "solo", "--concurrency", str(args.concurrency)]
    argv = ["worker", "--queues", ",".join(queues), "--hostname", name, "--loglevel",
            args.log_level if args.log_level != "WARNING" else "INFO", *pool]
    if "--pool" in argv and argv[argv.index("--pool") + 1] != "prefork":
        _warm_in_process()  # solo/threads pools run tasks in this process: load models here, once
    app.worker_main(argv)
    return 0


def _check(queues: list[str], name: str | None) -> int:
    """Ping this host's worker of ``queues``. The default node name holds the worker's pid, which a
    health check cannot know, so any answering node named ``<queues>-*@<this host>`` counts (the
    container's hostname is its own); with ``--name`` given, exactly that node."""
    from service.settings import get_settings
    from service.workers.celery_app import app

    if not get_settings().broker_url:
        return 1
    prefix, host = f"{'-'.join(queues)}-", f"@{socket.gethostname()}"
    try:
        replies = app.control.ping(timeout=3.0)
    except Exception:  # noqa: BLE001 - a broker that cannot be reached is an unhealthy worker, not a crash
        return 1
    nodes = {node for reply in replies for node in reply}
    ok = name in nodes if name else any(n.startswith(prefix) and n.endswith(host) for n in nodes)
    return 0 if ok else 1


def _warm_in_process() -> None:
    """Solo/threads pools never fire worker_process_init."""
    from service.workers.celery_app import _warm_models

    _warm_models()
