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
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cli.errors import CommandError

    queues = [q.strip() for q in args.queues.split(",") if q.strip()]
    if not queues or set(queues) - QUEUES:
        raise CommandError(f"--queues must name some of {sorted(QUEUES)}, got {args.queues!r}")
    from service.settings import get_settings

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


def _warm_in_process() -> None:
    """Solo/threads pools never fire worker_process_init."""
    from service.workers.celery_app import _warm_models

    _warm_models()
