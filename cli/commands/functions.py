"""`voxagent functions [--json]`: the function library agent code may call."""
from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("functions", help="list the functions agent code (and `voxagent exec`) may call")
    p.add_argument("--json", action="store_true", help="print a JSON list of {name, signature, description}")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json

    from agent.functions import default_registry

    listing = default_registry().describe()
    if args.json:
        print(json.dumps(listing, indent=2))
        return 0
    width = max(len(item["signature"]) for item in listing)
    for item in listing:
        print(f"{item['signature']:<{width}}  {item['description']}")
    return 0
