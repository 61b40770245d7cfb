"""`voxagent serve`: placeholder until the service lands (issue 7); keeps `make run` meaningful."""
from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="start the HTTP service (embedded default)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from service.cli import CommandError

    raise CommandError("the HTTP service is not implemented yet (issue 7)")
