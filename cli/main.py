"""`voxagent` command line. Each subcommand lives in its own module under `cli/commands/`.

A command module defines ``register(subparsers)`` which adds its parser and sets
``func=<callable(args) -> int>``. Modules import heavy dependencies (torch, the model) inside
their functions so that `voxagent --help` stays fast.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import sys

import cli.commands as commands_pkg
from cli.errors import CommandError, validation_message

__all__ = ["CommandError", "build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="voxagent", description="Language-driven 3D brain image analysis.")
    parser.add_argument("--log-level", default="WARNING", help="logging level (DEBUG, INFO, WARNING, ...)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(commands_pkg.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{commands_pkg.__name__}.{info.name}")
        register = getattr(module, "register", None)
        if register is not None:
            register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format='{"level":"%(levelname)s","logger":"%(name)s","msg":"%(message)s"}')
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except CommandError as exc:
        print(f"voxagent {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:
        # a pydantic ValidationError (a ValueError) that a command did not translate: still one line
        from pydantic import ValidationError

        if not isinstance(exc, ValidationError):
            raise
        print(f"voxagent {args.command}: error: {validation_message(exc)}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:
        if exc.name != "training" and not (exc.name or "").startswith("training."):
            raise
        # serving images ship without the trainer (Dockerfile): say so instead of a traceback
        print(f"voxagent {args.command}: error: this installation has no training package; "
              "run training and evaluation commands from a source checkout (pip install -e .)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
