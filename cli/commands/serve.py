"""`voxagent serve`: the HTTP API under uvicorn (embedded default, or Celery with VOXAGENT_BROKER_URL)."""
from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="start the HTTP service (embedded default: 127.0.0.1, thread pool, SQLite)")
    p.add_argument("--host", default=None, help="bind address (default VOXAGENT_HOST or 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="port (default VOXAGENT_PORT or 8000)")
    p.add_argument("--data-dir", default=None, help="data directory (default VOXAGENT_DATA_DIR or ~/.voxagent)")
    p.add_argument("--no-warm", action="store_true", help="load models on first use instead of at start-up")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import os

    import uvicorn

    from service.app import create_app
    from service.observability import configure_logging
    from service.settings import Settings

    if args.data_dir:
        os.environ["VOXAGENT_DATA_DIR"] = args.data_dir
    settings = Settings()
    configure_logging(args.log_level if args.log_level != "WARNING" else "INFO", settings.log_json)
    from cli.errors import CommandError
    from service.dicom.routing import RoutingRulesError

    try:
        app = create_app(settings, warm_models=not args.no_warm)
    except RoutingRulesError as exc:  # VOXAGENT_ROUTING_RULES: the file, the rule and the field named
        raise CommandError(str(exc)) from None
    uvicorn.run(app, host=args.host or settings.host, port=args.port or settings.port, log_config=None,
                access_log=False)
    return 0
