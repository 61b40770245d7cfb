"""`voxagent functions [--json] [--targets]`: the function library agent code may call, and the
targets ``generate`` knows (the table in ``vision.targets``: names, synonyms, labels, side)."""
from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("functions", help="list the functions agent code (and `voxagent exec`) may call")
    p.add_argument("--json", action="store_true", help="print a JSON list of {name, signature, description}")
    p.add_argument("--targets", action="store_true",
                   help="list generate()'s targets instead: name, kind, side, synonyms, FreeSurfer labels")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json

    if args.targets:
        return targets(args.json)
    from agent.functions import default_registry

    listing = default_registry().describe()
    if args.json:
        print(json.dumps(listing, indent=2))
        return 0
    width = max(len(item["signature"]) for item in listing)
    for item in listing:
        print(f"{item['signature']:<{width}}  {item['description']}")
    return 0


def targets(as_json: bool) -> int:
    import json

    from vision.targets import TARGETS

    rows = [{"name": t.name, "kind": t.kind, "side": t.side, "synonyms": list(t.synonyms),
             "labels": sorted(t.labels)} for t in TARGETS.values()]
    if as_json:
        print(json.dumps(rows, indent=2))
        return 0
    width = max(len(r["name"]) for r in rows)
    for r in rows:
        also = f"  (also: {', '.join(r['synonyms'])})" if r["synonyms"] else ""
        print(f"{r['name']:<{width}}  {r['kind']:<7}  labels {','.join(map(str, r['labels']))}{also}")
    return 0
