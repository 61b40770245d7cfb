"""API keys mapped to tenants. Only a sha256 digest of each key is stored.

A key reads ``vxa_<key id>_<secret>``: the id finds the record in one lookup and the digest of
the whole key is compared in constant time. Keys are 256-bit random, so a fast digest is
enough (no password stretching needed for high-entropy secrets).
"""
from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass

from service.storage.records import RecordStore

KIND = "apikey"
_TENANT = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_KEY = re.compile(r"^vxa_([0-9a-f]{12})_([A-Za-z0-9_-]{20,64})$")


@dataclass(frozen=True)
class Principal:
    tenant: str
    key_id: str | None


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def validate_tenant(tenant: str) -> str:
    if not _TENANT.fullmatch(tenant):  # fullmatch: "$" would let "acme\n" through
        raise ValueError("tenant must be 1-64 characters of letters, digits, '_' or '-'")
    return tenant


def create_key(store: RecordStore, tenant: str, name: str = "") -> tuple[str, dict]:
    """Returns the plain key (shown once) and the stored record (digest only)."""
    validate_tenant(tenant)
    key_id = secrets.token_hex(6)
    key = f"vxa_{key_id}_{secrets.token_urlsafe(32)}"
    now = time.time()
    record = {"id": key_id, "tenant": tenant, "name": name, "sha256": digest(key), "created_at_ts": now,
              "revoked": False}
    store.put(KIND, record)
    return key, record


def list_keys(store: RecordStore, tenant: str | None = None) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "sha256"} for r in store.list(KIND, tenant, limit=10_000)]


def revoke_key(store: RecordStore, key_id: str) -> bool:
    return store.update(KIND, key_id, {"revoked": True, "revoked_at_ts": time.time()}) is not None


def authenticate(store: RecordStore, key: str | None) -> Principal | None:
    if not key:
        return None
    m = _KEY.match(key.strip())
    if not m:
        return None
    record = store.get(KIND, m.group(1))
    if record is None or record.get("revoked"):
        return None
    if not hmac.compare_digest(record["sha256"], digest(key.strip())):
        return None
    return Principal(tenant=record["tenant"], key_id=record["id"])
