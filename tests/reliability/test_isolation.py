"""Issue 23, isolation: two tenants on one server, hostile names, outbound destinations.

* Every record of another tenant is a 404 indistinguishable from one that never existed (never a
  403, which would confirm it exists), on every route that takes an id; listings show only the
  caller's own; a tenant cannot reference, cancel, delete or join another's records.
* Hostile names (upload file names, scan names, output names, ids in paths: ``../../x``,
  ``a/../b``, NUL, newline) are refused (422) or neutralized: every file the server writes lies
  inside the tenant's own directory of the storage root.
* Webhook and DICOMweb (STOW-RS) destinations on loopback, private, link-local or otherwise
  internal addresses, in every spelling, are refused unless loopback is allowed, at submission
  and again at delivery, on what the name resolves to then (DNS rebinding). The resolver is the
  test's (no real DNS) and every socket connect is recorded: refusals make no connection attempt,
  and a connection to anything but loopback is blocked, so no test can send traffic off the host.

Extends tests/service/test_api.py (test_tenant_isolation, SSRF_URLS at batch submission) and
tests/service/test_dicom_api.py (STOW-RS, routing, a push to ``localhost``) without repeating them.
"""
from __future__ import annotations

import ipaddress
import json
import re
import socket
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service import auth, webhooks
from service.app import create_app
from service.dicom import dicomweb
from service.dicom.routing import RoutingRulesError, parse_rules
from service.settings import Settings
from service.storage.models import DeliveryRecord
from tests.service.conftest import CODE, write_scan
from tests.service.test_api import PROBLEM, SSRF_URLS, upload, wait_until
from tests.service.test_dicom_api import (
    StowReceiver,
    rules_yaml,
    series_files,
    stow_body,
    upload_zip,
    wait_study,
    zip_of,
)
from tests.service.webhook_receiver import Receiver

SECRET = "s3cret-s3cret-s3cret"
PUBLIC = "93.184.216.34"  # what the injected resolver answers for a "public" name: never connected to


# --------------------------------------------------------------------------- the network, instrumented


class Network:
    """The test's resolver and a record of every connection attempt.

    ``names`` maps a host name to the answers of successive lookups (the last one repeats): a name
    can resolve to a public address at submission and to a private one at delivery. Numeric hosts
    are resolved numerically (AI_NUMERICHOST: no DNS); any other name does not resolve. Connects
    to loopback go through (the tests' receivers); any other is recorded and blocked."""

    def __init__(self, monkeypatch) -> None:
        self.names: dict[str, list[list[str]]] = {}
        self.lookups: list[str] = []
        self.connects: list[tuple] = []
        real_getaddrinfo, real_connect, real_connect_ex = socket.getaddrinfo, socket.socket.connect, \
            socket.socket.connect_ex

        def getaddrinfo(host, port, family=0, type=0, proto=0, flags=0):
            name = host.decode() if isinstance(host, bytes) else str(host)
            self.lookups.append(name)
            try:
                return real_getaddrinfo(host, port, family, type, proto, flags | socket.AI_NUMERICHOST)
            except socket.gaierror:
                pass
            answers = self.names.get(name.lower().rstrip("."))
            if not answers:
                raise socket.gaierror(socket.EAI_NONAME, "Name or service not known (test resolver)")
            addresses = answers.pop(0) if len(answers) > 1 else answers[0]
            out = []
            for a in addresses:
                if ipaddress.ip_address(a).version == 6:
                    out.append((socket.AF_INET6, socket.SOCK_STREAM, 6, "", (a, int(port or 0), 0, 0)))
                else:
                    out.append((socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, int(port or 0))))
            return out

        def guard(address) -> None:
            self.connects.append(address)
            host = address[0] if isinstance(address, tuple) else address
            try:
                loopback = ipaddress.ip_address(str(host).split("%", 1)[0]).is_loopback
            except ValueError:
                loopback = False
            if not loopback:
                raise OSError(f"test network: connection to {host!r} blocked (only loopback is reachable)")

        def connect(sock, address):
            guard(address)
            return real_connect(sock, address)

        def connect_ex(sock, address):
            guard(address)
            return real_connect_ex(sock, address)

        monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
        monkeypatch.setattr(socket.socket, "connect", connect)
        monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)

    def resolve(self, name: str, *answers: list[str]) -> None:
        self.names[name] = list(answers)

    def outbound(self) -> list[tuple]:
        """Connection attempts other than the test client's own (there are none: TestClient is in-process)."""
        return list(self.connects)


@pytest.fixture
def net(monkeypatch) -> Network:
    return Network(monkeypatch)


# --------------------------------------------------------------------------- two tenants


def _api(tmp_path: Path, **overrides) -> TestClient:
    settings = Settings(**{"data_dir": tmp_path / "data", "broker_url": None, "workers": 2, "webhook_backoff_s": 0.05,
                           "max_upload_bytes": 5_000_000, **overrides})
    client = TestClient(create_app(settings))
    client.__enter__()
    store = client.app.state.service.records
    client.h = {t: {"X-API-Key": auth.create_key(store, t)[0]} for t in ("acme", "other")}  # type: ignore[attr-defined]
    return client


@pytest.fixture
def make(tmp_path):
    clients: list[TestClient] = []

    def factory(**overrides) -> TestClient:
        clients.append(_api(tmp_path, **overrides))
        return clients[-1]

    yield factory
    for c in clients:
        c.__exit__(None, None, None)


def _missing_like(real_id: str) -> str:
    """An id of the same shape as ``real_id`` that no tenant has."""
    prefix, _, rest = real_id.partition("_")
    return f"{prefix}_{'0' * len(rest)}"


def _same_404(api, method: str, path: str, real_id: str, tenant: str = "other") -> None:
    """``path`` (naming another tenant's ``real_id``) answers exactly as for an id that never existed."""
    r = api.request(method, path, headers=api.h[tenant])
    fake = api.request(method, path.replace(real_id, _missing_like(real_id)), headers=api.h[tenant])
    assert r.status_code == 404, (method, path, r.status_code, r.text)
    assert r.headers["content-type"].startswith(PROBLEM), (method, path, r.headers)
    got, never = r.json(), json.loads(fake.text.replace(_missing_like(real_id), real_id))
    got.pop("request_id", None), never.pop("request_id", None)
    assert fake.status_code == 404 and got == never, (method, path, r.text, fake.text)


def test_another_tenants_records_do_not_exist_for_the_caller(make, tmp_path):
    receiver = Receiver()
    api = make(webhook_allow_loopback=True)
    try:
        scan = tmp_path / "scan.nii.gz"
        write_scan(scan)
        vid = upload(api, scan).json()["id"]
        t1, _ = series_files(tmp_path / "t1", description="t1_mprage", SeriesNumber=2)
        dicom_vid = upload_zip(api, zip_of(t1, tmp_path / "t1.zip")).json()["id"]
        job = api.post("/v1/analyses", json={"code": CODE, "volumes": [{"id": dicom_vid}], "wait": 30},
                       headers=api.h["acme"]).json()
        assert job["status"] == "succeeded", job
        jid = job["id"]
        art = job["links"]["output:bright"].rsplit("/", 1)[1]
        for kind in ("seg", "sr"):  # acme's own DICOM results exist, so the other's 404 is isolation alone
            assert api.get(f"/v1/analyses/{jid}/dicom/{kind}", headers=api.h["acme"]).status_code == 200
        batch = api.post("/v1/batches", headers=api.h["acme"], json={
            "code": CODE, "webhook_url": receiver.url, "webhook_secret": SECRET,
            "items": [{"volumes": [{"id": vid}], "label": "a"}]}).json()
        bid = batch["id"]
        wait_until(lambda: api.get(f"/v1/batches/{bid}", headers=api.h["acme"]).json(),
                   lambda b: (b.get("webhook") or {}).get("delivered"))
        flair, _ = series_files(tmp_path / "fl", description="FLAIR ax", SeriesNumber=3, seed=1)
        body, ctype = stow_body(flair)
        assert api.post("/dicomweb/studies", content=body,
                        headers={**api.h["acme"], "Content-Type": ctype}).status_code == 200
        (study,) = api.get("/v1/studies", headers=api.h["acme"]).json()
        sid = study["id"]
        # the other tenant has records of its own: its listings are not empty by accident
        own_vid = upload(api, scan, tenant="other").json()["id"]
        own_job = api.post("/v1/analyses", json={"code": CODE, "volumes": [{"id": own_vid}], "wait": 30},
                           headers=api.h["other"]).json()
        assert api.post("/dicomweb/studies", content=body,
                        headers={**api.h["other"], "Content-Type": ctype}).status_code == 200  # the same study UID

        routes = [("GET", f"/v1/volumes/{vid}", vid), ("GET", f"/v1/volumes/{vid}/file", vid),
                  ("DELETE", f"/v1/volumes/{vid}", vid), ("DELETE", f"/v1/volumes/{dicom_vid}", dicom_vid),
                  ("GET", f"/v1/analyses/{jid}", jid), ("GET", f"/v1/analyses/{jid}?wait=0.1", jid),
                  ("POST", f"/v1/analyses/{jid}/cancel", jid),
                  ("GET", f"/v1/analyses/{jid}/dicom/seg", jid), ("GET", f"/v1/analyses/{jid}/dicom/sr", jid),
                  ("GET", f"/v1/artifacts/{art}", art), ("GET", f"/v1/artifacts/{art}/snapshot.png", art),
                  ("GET", f"/v1/batches/{bid}", bid), ("GET", f"/v1/batches/{bid}/results", bid),
                  ("GET", f"/v1/batches/{bid}/metrics.csv", bid), ("GET", f"/v1/studies/{sid}", sid)]
        for method, path, real_id in routes:
            _same_404(api, method, path, real_id)
        # acme's records are untouched by all of that; its own cancel of a finished job is a 409, not a 404
        assert api.post(f"/v1/analyses/{jid}/cancel", headers=api.h["acme"]).status_code == 409
        for path in (f"/v1/volumes/{vid}/file", f"/v1/volumes/{dicom_vid}", f"/v1/artifacts/{art}",
                     f"/v1/batches/{bid}/metrics.csv", f"/v1/studies/{sid}", f"/v1/analyses/{jid}"):
            assert api.get(path, headers=api.h["acme"]).status_code == 200, path

        # references to acme's volumes are "not found" for the other tenant, as a missing id is
        for ref in (vid, dicom_vid):
            for url, payload in (("/v1/analyses", {"code": CODE, "volumes": [{"id": ref}]}),
                                 ("/v1/batches", {"code": CODE, "items": [{"volumes": [{"id": ref}]}]})):
                r = api.post(url, json=payload, headers=api.h["other"])
                fake = api.post(url, json=json.loads(json.dumps(payload).replace(ref, _missing_like(ref))),
                                headers=api.h["other"])
                assert r.status_code == fake.status_code == 422 and "not found" in r.json()["detail"], (url, r.text)
                assert r.json()["detail"] == fake.json()["detail"].replace(_missing_like(ref), ref), (r.text, fake.text)
            with open(scan, "rb") as fh:
                r = api.post("/v1/analyses/upload", headers=api.h["other"], files=[("files", ("x.nii.gz", fh))],
                             data={"code": CODE.replace("scan", "t1"), "metadata": json.dumps([{"name": "t1"}]),
                                   "volumes": json.dumps([{"id": ref}])})
            assert r.status_code == 422 and "not found" in r.text, r.text

        # listings: only the caller's own, at any page size
        lists = {"/v1/volumes": {vid, dicom_vid}, "/v1/analyses": {jid, *batch["job_ids"]}, "/v1/studies": {sid}}
        for listing, acme_ids in lists.items():
            mine = {x["id"] for x in api.get(listing, params={"limit": 500}, headers=api.h["other"]).json()}
            theirs = {x["id"] for x in api.get(listing, params={"limit": 500}, headers=api.h["acme"]).json()}
            assert mine and not mine & theirs and acme_ids <= theirs, listing
        assert own_vid in {x["id"] for x in api.get("/v1/volumes", headers=api.h["other"]).json()}
        assert own_job["id"] in {x["id"] for x in api.get("/v1/analyses", headers=api.h["other"]).json()}
        (other_study,) = api.get("/v1/studies", headers=api.h["other"]).json()
        assert other_study["id"] != sid and other_study["study_instance_uid"] == study["study_instance_uid"]
        assert len(api.get(f"/v1/studies/{sid}", headers=api.h["acme"]).json()["series"]) == 1  # nothing merged in
        # the other's volumes made from the same study are its own, and acme's files are still there
        acme_dir = tmp_path / "data" / "artifacts" / "acme"
        assert (acme_dir / api.get(f"/v1/volumes/{vid}", headers=api.h["acme"]).json()["id"]).with_suffix(
            ".nii.gz").is_file()
    finally:
        receiver.close()


# --------------------------------------------------------------------------- hostile names

HOSTILE = ["../../x", "a/../b", "..", "/etc/passwd", "..\\..\\x", "x\x00y", "nl\n", "x/y", "%2e%2e%2fx", ".hidden"]
STORED = re.compile(r"^vol_[0-9a-f]{32}\.nii(\.gz)?$")


def _files(root: Path) -> set[Path]:
    return {p.resolve() for p in root.rglob("*") if p.is_file()}


def test_hostile_names_are_refused_or_stay_inside_the_tenants_storage(make, tmp_path):
    api = make()
    data = tmp_path / "data"
    outside = tmp_path / "inputs"
    outside.mkdir()
    scan = outside / "scan.nii.gz"
    write_scan(scan)
    before_outside, before_data = _files(tmp_path) - _files(data), _files(data)
    acme_dir = (data / "artifacts" / "acme").resolve()

    # file names of uploads: kept as metadata only, never as a path
    for name in HOSTILE:
        with open(scan, "rb") as fh:
            r = api.post("/v1/volumes", files={"file": (name + ".nii.gz", fh)}, headers=api.h["acme"])
        assert r.status_code in (201, 422), (name, r.status_code, r.text)
        if r.status_code == 201:
            info = r.json()
            assert STORED.fullmatch(api.app.state.service.records.get("volume", info["id"])["artifact"]), info
            got = api.get(f"/v1/volumes/{info['id']}/file", headers=api.h["acme"])
            assert got.status_code == 200 and f'filename="{info["id"]}.nii.gz"' in got.headers["content-disposition"]
    vid = upload(api, scan).json()["id"]

    # scan names: every way in is refused at the door
    for name in HOSTILE:
        for url, payload in (("/v1/analyses", {"code": CODE, "volumes": [{"id": vid, "name": name}]}),
                             ("/v1/batches", {"code": CODE, "items": [{"volumes": [{"id": vid, "name": name}]}]})):
            r = api.post(url, json=payload, headers=api.h["acme"])
            assert r.status_code == 422 and r.headers["content-type"].startswith(PROBLEM), (name, url, r.text)
        with open(scan, "rb") as fh:
            r = api.post("/v1/analyses/upload", headers=api.h["acme"], files=[("files", ("t.nii.gz", fh))],
                         data={"code": CODE, "metadata": json.dumps([{"name": name}])})
        assert r.status_code == 422, (name, r.text)

    # output names: refused by output(), or saved under a sanitized name inside the tenant's directory
    for name in HOSTILE:
        code = f"m = threshold(scan, 50)\noutput(m, {json.dumps(name)})\nrespond('done')"
        job = api.post("/v1/analyses", json={"code": code, "volumes": [{"id": vid}], "wait": 30},
                       headers=api.h["acme"]).json()
        assert job["status"] in ("succeeded", "failed"), job
        if job["status"] == "failed":
            assert "output(): name must be" in job["error"], job
            continue
        (out,) = job["result"]["outputs"]
        assert (acme_dir / out["path"]).resolve().parent == acme_dir, out
        r = api.get(job["links"][f"output:{name}"], headers=api.h["acme"])
        assert r.status_code == 200
        disposition = r.headers["content-disposition"]
        assert "/" not in disposition and "\\" not in disposition and "\n" not in disposition, disposition

    # ids in paths: never a way out of the record store or the tenant's directory
    for path in ("/v1/volumes/..%2F..%2Fsqlite", "/v1/volumes/%2e%2e", "/v1/artifacts/..%2Fother%2Fx",
                 "/v1/artifacts/%2e%2e%2f%2e%2e%2fvoxagent.db", f"/v1/artifacts/..%2Facme%2F{vid}.nii.gz",
                 "/v1/artifacts/x%00y", "/v1/studies/..%2Fx", "/v1/batches/..%2F..%2Fx",
                 "/v1/analyses/..%2Fx/dicom/seg"):
        r = api.get(path, headers=api.h["other"])
        assert r.status_code in (404, 422), (path, r.status_code, r.text)
    t1, _ = series_files(tmp_path / "t1", description="t1_mprage")
    body, ctype = stow_body(t1)
    for study in ("..%2F..%2Fx", "..", "x%00y"):
        r = api.post(f"/dicomweb/studies/{study}", content=body, headers={**api.h["acme"], "Content-Type": ctype})
        assert r.status_code in (404, 409, 422), (study, r.status_code, r.text)

    # every file written lies inside the tenant's directory (or is the server's own bookkeeping)
    new = _files(data) - before_data
    assert new and all(p.is_relative_to(acme_dir) or p.parent == data.resolve() for p in new), sorted(
        str(p) for p in new if not p.is_relative_to(acme_dir))
    assert not (data / "artifacts" / "other").exists() or not any((data / "artifacts" / "other").iterdir())
    assert _files(tmp_path) - _files(data) - {p.resolve() for p in (tmp_path / "t1").rglob("*")} == before_outside


def test_the_storage_root_and_tenant_names_refuse_every_hostile_name(tmp_path):
    """The last line of defence under every route: artifact names and tenants are single safe path
    parts (a trailing newline too: a regular expression's '$' matches before one)."""
    from api_schemas.limits import scan_name_problem
    from service.storage.artifacts import ArtifactStore

    store = ArtifactStore(tmp_path / "artifacts")
    for name in [*HOSTILE, "x\n", "vol_1.nii\n", "", ".", "a" * 81]:
        if name == ".hidden":
            assert store.path("acme", name).parent == (tmp_path / "artifacts" / "acme")  # a dot file, inside
            continue
        with pytest.raises(ValueError):
            store.path("acme", name)
        assert not store.exists("acme", name)
        with pytest.raises(ValueError):
            store.path(name, "x")
        with pytest.raises(ValueError):
            auth.validate_tenant(name)
        assert scan_name_problem(name) is not None, name
    assert scan_name_problem("t1\n") is not None and auth.validate_tenant("acme") == "acme"
    assert {p.name for p in (tmp_path / "artifacts").iterdir()} <= {"acme"}


# --------------------------------------------------------------------------- outbound destinations

# what test_api's SSRF_URLS (batch submission) does not spell yet
MORE_URLS = ["http://a@127.0.0.1/", "http://a:b@127.0.0.1:6379/", "http://017700000001/", "http://0x7f.1/",
             "http://[0:0:0:0:0:ffff:7f00:1]/", "http://[::ffff:169.254.169.254]/", "http://[64:ff9b::a9fe:a9fe]/",
             "http://[2002:7f00:1::]/", "http://192.168.0.10:8080/", "http://100.64.0.1/", "http://LOCALHOST/",
             "http://localhost./", "http://169.254.169.254./latest/", "http://metadata.google.internal/",
             "http://0/", "http://10.0.0.1:443@hooks.example.org/", "http://①②⑦.0.0.1/", "https://[fe80::1%25eth0]/"]
ALL_URLS = SSRF_URLS + MORE_URLS


def _internal_names(net: Network) -> None:
    """Names the test resolver answers, as a deployment's DNS could (localhost, cloud metadata)."""
    net.resolve("localhost", ["127.0.0.1", "::1"])
    net.resolve("metadata.google.internal", ["169.254.169.254"])
    net.resolve("example.com", [PUBLIC])  # public, but the URLs spelling it carry user information


# with loopback allowed (development), these and only these pass: loopback in the end, no user information
LOOPBACK = {"http://127.0.0.1:6379/", "http://2130706433/", "http://0x7f000001/", "http://0177.0.0.1/", "http://127.1/",
            "http://[::1]:22/", "http://[::ffff:127.0.0.1]/", "http://localhost:6379/", "http://017700000001/",
            "http://0x7f.1/", "http://[0:0:0:0:0:ffff:7f00:1]/", "http://[2002:7f00:1::]/", "http://LOCALHOST/",
            "http://localhost./", "http://①②⑦.0.0.1/"}
# host names (not addresses): a rules file cannot resolve them when it is loaded; every push does
NAMES = {"http://localhost:6379/", "http://LOCALHOST/", "http://localhost./", "http://169.254.169.254./latest/",
         "http://metadata.google.internal/", "http://①②⑦.0.0.1/"}


@pytest.mark.parametrize("allow_loopback", [False, True])
def test_every_spelling_is_refused_at_submission_without_a_connection(make, net, allow_loopback):
    _internal_names(net)
    api = make(webhook_allow_loopback=allow_loopback)
    assert LOOPBACK <= set(ALL_URLS) and NAMES <= set(ALL_URLS)
    for url in ALL_URLS:
        r = api.post("/v1/batches", headers=api.h["acme"], json={
            "code": CODE, "webhook_url": url, "webhook_secret": SECRET, "items": [{"volumes": [{"id": "vol_x"}]}]})
        assert r.status_code == 422 and r.headers["content-type"].startswith(PROBLEM), (url, r.text)
        if allow_loopback and url in LOOPBACK:  # past the guard: refused for the missing volume instead
            assert "webhook_url" not in r.json()["detail"] and "not found" in r.json()["detail"], (url, r.text)
        else:
            assert "webhook_url" in r.json()["detail"], (url, r.text)
    assert net.outbound() == []  # not one connection attempt
    assert api.get("/v1/analyses", headers=api.h["acme"]).json() == []


def test_every_spelling_is_refused_at_delivery_without_a_connection(net, monkeypatch):
    """The delivery functions themselves (webhook attempt, STOW-RS push) check again: a destination
    accepted earlier (or configured by name) is refused there, before any connection."""
    _internal_names(net)
    for url in ALL_URLS:
        result = webhooks.attempt(url, SECRET, b"{}", timeout_s=1)
        assert not result.delivered and result.final and result.error, (url, result)
        stow = dicomweb.stow_rs(url, [b"x"], attempts=3, backoff_s=0, timeout_s=1)
        assert not stow.delivered and stow.attempts == 1 and stow.last_error.startswith("destination "), (url, stow)
    assert net.outbound() == []


def test_dicomweb_destinations_in_every_spelling_are_refused_in_the_rules():
    """A rules file is checked when the service starts: internal addresses in every spelling, user
    information and other schemes are refused there; names are checked at every push (below)."""
    for url in ALL_URLS:
        text = f"destinations: {{acme: {{url: {json.dumps(url)}}}}}"
        if url in NAMES:
            assert parse_rules(text, "rules.yaml").destinations["acme"].url == url
            continue
        with pytest.raises(RoutingRulesError, match="destinations.acme.url"):
            parse_rules(text, "rules.yaml")


REBOUND = [["127.0.0.1"], ["169.254.169.254"], ["10.0.0.1"], ["::ffff:127.0.0.1"], ["::1"],
           [PUBLIC, "192.168.1.20"]]


@pytest.mark.parametrize("later", REBOUND, ids=lambda a: "+".join(a))
def test_a_webhook_name_rebound_to_an_internal_address_is_refused_at_delivery(make, net, tmp_path, later):
    net.resolve("hooks.example.org", [PUBLIC], later)  # public when submitted, internal when delivered
    api = make()
    scan = tmp_path / "scan.nii.gz"
    write_scan(scan)
    vid = upload(api, scan).json()["id"]
    r = api.post("/v1/batches", headers=api.h["acme"], json={
        "code": CODE, "webhook_url": "https://hooks.example.org/hook", "webhook_secret": SECRET,
        "items": [{"volumes": [{"id": vid}]}]})
    assert r.status_code == 202, r.text
    state = wait_until(lambda: api.get(f"/v1/batches/{r.json()['id']}", headers=api.h["acme"]).json(),
                       lambda b: (b.get("webhook") or {}).get("attempts", 0) >= 1)
    assert state["webhook"] == {**state["webhook"], "delivered": False, "attempts": 1,
                                "last_error": "refused: private address"}, state
    assert net.lookups.count("hooks.example.org") == 2  # once at submission, once at delivery
    assert net.outbound() == []


def test_allowing_loopback_lets_a_rebound_name_reach_loopback_only_at_the_checked_address(make, net, tmp_path):
    receiver = Receiver()
    try:
        port = int(receiver.url.rsplit(":", 1)[1].split("/")[0])
        net.resolve("hooks.example.org", [PUBLIC], ["127.0.0.1"])
        net.resolve("lan.example.org", [PUBLIC], ["10.0.0.1"])
        api = make(webhook_allow_loopback=True)
        scan = tmp_path / "scan.nii.gz"
        write_scan(scan)
        vid = upload(api, scan).json()["id"]
        ids = []
        for host in ("hooks.example.org", "lan.example.org"):
            r = api.post("/v1/batches", headers=api.h["acme"], json={
                "code": CODE, "webhook_url": f"http://{host}:{port}/hook", "webhook_secret": SECRET,
                "items": [{"volumes": [{"id": vid}]}]})
            assert r.status_code == 202, r.text
            ids.append(r.json()["id"])
        states = [wait_until(lambda b=b: api.get(f"/v1/batches/{b}", headers=api.h["acme"]).json(),
                             lambda s: (s.get("webhook") or {}).get("attempts", 0) >= 1) for b in ids]
        assert states[0]["webhook"]["delivered"] is True, states[0]
        (headers, _), = receiver.deliveries
        assert headers["Host"] == f"hooks.example.org:{port}"  # the name kept, the checked address connected
        assert states[1]["webhook"]["delivered"] is False and states[1]["webhook"]["last_error"] == \
            "refused: private address"  # loopback allowed is not the private network allowed
        assert {a[0] for a in net.outbound()} == {"127.0.0.1"} and len(net.outbound()) == 1
    finally:
        receiver.close()


def _routed_push(make, tmp_path, url: str, **settings):
    rules = tmp_path / "rules.yaml"
    rules.write_text(rules_yaml(url, attempts=3))
    api = make(routing_rules=rules, **settings)
    t1, _ = series_files(tmp_path / "t1", description="t1_mprage")
    flair, _ = series_files(tmp_path / "fl", description="FLAIR ax", seed=1)
    body, ctype = stow_body(t1 + flair)
    assert api.post("/dicomweb/studies", content=body, headers={**api.h["acme"], "Content-Type": ctype}).status_code \
        == 200
    return api, wait_study(api, "acme", lambda s: s.get("delivery") is not None)


@pytest.mark.parametrize("later", [["169.254.169.254"], ["::ffff:127.0.0.1"], [PUBLIC, "10.0.0.1"]],
                         ids=lambda a: "+".join(a))
def test_a_pacs_name_rebound_to_an_internal_address_is_a_dead_letter_without_a_connection(make, net, tmp_path,
                                                                                          later):
    net.resolve("pacs.example.org", later)  # the rules hold a name: it is checked only at each push
    api, study = _routed_push(make, tmp_path, "https://pacs.example.org/dicom-web")
    assert study["delivery"]["status"] == "dead_letter" and study["delivery"]["attempts"] == 1, study
    assert study["delivery"]["last_error"] == "destination refused: private address"
    assert "pacs.example.org" in net.lookups and net.outbound() == []
    store = api.app.state.service.records
    (dead,) = store.list_records(DeliveryRecord, "acme")
    assert dead.status == "dead_letter" and store.list_records(DeliveryRecord, "other") == []


def test_a_pacs_name_on_loopback_is_pushed_to_the_checked_address_when_allowed(make, net, tmp_path):
    receiver = StowReceiver()
    try:
        port = int(receiver.url.rsplit(":", 1)[1].split("/")[0])
        net.resolve("pacs.example.org", ["127.0.0.1"])
        _, study = _routed_push(make, tmp_path, f"http://pacs.example.org:{port}/dicom-web",
                                webhook_allow_loopback=True)
        assert study["delivery"]["status"] == "delivered", study
        assert sorted(ds.Modality for ds in receiver.instances) == ["SEG", "SR"]
        assert {a[0] for a in net.outbound()} == {"127.0.0.1"}
    finally:
        receiver.close()
