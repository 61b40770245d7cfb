"""`voxagent keys create|list|revoke`: API keys of tenants (only their sha256 is stored)."""
from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("keys", help="manage API keys (create prints the key once)")
    ks = p.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    c = ks.add_parser("create", help="create a key for a tenant")
    c.add_argument("--tenant", required=True)
    c.add_argument("--name", default="", help="a label to recognise the key by")
    c.add_argument("--json", action="store_true")
    ls = ks.add_parser("list", help="list keys (ids, tenants; never the secrets)")
    ls.add_argument("--tenant", default=None)
    ls.add_argument("--json", action="store_true")
    r = ks.add_parser("revoke", help="revoke a key by id")
    r.add_argument("key_id")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cli.errors import CommandError
    from service import auth
    from service.settings import Settings
    from service.storage import open_record_store

    store = open_record_store(Settings())
    try:
        if args.keys_command == "create":
            try:
                key, record = auth.create_key(store, args.tenant, args.name)
            except ValueError as exc:
                raise CommandError(str(exc)) from exc
            if args.json:
                print(json.dumps({"key": key, "id": record["id"], "tenant": record["tenant"]}))
            else:
                print(key)
            return 0
        if args.keys_command == "list":
            keys = auth.list_keys(store, args.tenant)
            if args.json:
                print(json.dumps(keys))
            else:
                for k in keys:
                    state = "revoked" if k.get("revoked") else "active"
                    print(f"{k['id']}\t{k['tenant']}\t{state}\t{k.get('name', '')}")
            return 0
        if not auth.revoke_key(store, args.key_id):
            raise CommandError(f"no key with id {args.key_id}")
        return 0
    finally:
        store.close()
