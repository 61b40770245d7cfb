"""Hostile requests against a real embedded `voxagent serve` on 127.0.0.1.

1. Hypothesis fuzzing (derandomized: the same examples on every run) of upload bodies (random
   bytes, garbled and truncated NIfTI headers, zips of junk, metadata fields of the wrong type,
   nested JSON) and of analysis requests (JSON and multipart): never a 5xx; every error a 4xx
   application/problem+json whose ``status`` is the response's.
2. The malformed-file corpus of tests/voxel_ops/test_hostile_files.py through POST /v1/volumes:
   each refused with a 422 or 413 problem+json whose detail says what class of defect it is, and the
   well-formed upload accepted before them still listed and served unchanged afterwards.
"""
from __future__ import annotations

import io
import json
import re
import zipfile

import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import voxel_ops as vo
from tests.reliability import faults
from tests.service import procs
from tests.service.conftest import CODE, write_scan
from tests.service.test_api import PROBLEM
from tests.voxel_ops.test_hostile_files import BASE, BASE2, CORPUS, N1, _gz, _patched

pytestmark = [pytest.mark.integration, pytest.mark.slow]

FUZZ = settings(derandomize=True, deadline=None, database=None, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# What each voxel_ops error class says about the file, in the words of its message (the detail).
DEFECT_WORDS: dict[type[vo.VolumeError], str] = {
    vo.NotNiftiError: r"not a NIfTI|too short|gzip stream|two-file NIfTI pair",
    vo.TruncatedDataError: r"truncated|ends early",
    vo.SizeLimitError: r"exceeds|more than the|more data than its header|decompresses to",
    vo.DimensionError: r"\b\dD (image|series)\b|empty axis",
    vo.HeaderError: r"dimensions|intensity scaling|data offset",
    vo.AffineError: r"voxel-to-world transform",
    vo.SpacingError: r"voxel spacing",
    vo.NonFiniteError: r"NaN or infinite",
    vo.DataTypeError: r"data type",
}


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """A client with the tenant's key, the stored phantom's id and bytes, the server process."""
    tmp = tmp_path_factory.mktemp("hostile")
    env = procs.base_env(tmp / "data", VOXAGENT_WORKERS="2")
    api, base = faults.start_api(env, tmp, "api")
    try:
        h = {"X-API-Key": procs.make_key(env, "acme")}
        scan = tmp / "good.nii.gz"
        write_scan(scan, seed=1)
        with httpx.Client(base_url=base, timeout=60, headers=h) as client:
            r = client.post("/v1/volumes", files={"file": (scan.name, scan.read_bytes())})
            assert r.status_code == 201, r.text
            yield client, r.json()["id"], scan.read_bytes(), api
    finally:
        api.stop()


def assert_no_server_error(r: httpx.Response, what: object) -> None:
    assert r.status_code < 500, (r.status_code, what, r.text[:500])
    if r.status_code >= 400:
        assert r.headers.get("content-type", "").startswith(PROBLEM), (r.status_code, r.headers, r.text[:300])
        body = r.json()
        assert body["status"] == r.status_code and body["title"], body


# ---- strategies ---------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20)
# A form field as a client may send it: text, a number, JSON of any shape, or nesting past the parser
field_values = st.one_of(
    st.text(max_size=40), st.integers().map(str), st.floats().map(str), json_values.map(json.dumps),
    st.integers(1, 3000).map(lambda n: "[" * n), st.integers(1, 3000).map(lambda n: '{"a":' * n),
    st.just("2024-03-01"), st.just("T1"), st.just(""), st.binary(max_size=30).map(lambda b: b.decode("latin-1")))
HEADER_FIELDS = {  # NIfTI-1 header fields and values to write into them, past nibabel's checks
    "sizeof_hdr": st.integers(-(2**31), 2**31 - 1), "datatype": st.integers(-(2**15), 2**15 - 1),
    "bitpix": st.integers(-(2**15), 2**15 - 1), "vox_offset": st.floats(width=32),
    "scl_slope": st.floats(width=32), "scl_inter": st.floats(width=32),
    "sform_code": st.integers(-(2**15), 2**15 - 1), "qform_code": st.integers(-(2**15), 2**15 - 1),
    "dim": st.lists(st.integers(-(2**15), 2**15 - 1), min_size=8, max_size=8),
    "pixdim": st.lists(st.floats(width=32), min_size=8, max_size=8),
    "srow_x": st.lists(st.floats(width=32), min_size=4, max_size=4),
    "magic": st.binary(min_size=4, max_size=4),
}


@st.composite
def garbled_nifti(draw) -> bytes:
    """A valid NIfTI-1/2 with header fields rewritten, bytes flipped, truncated or extended; maybe gzipped."""
    raw = draw(st.sampled_from([BASE, BASE2]))
    if raw is BASE:
        fields: dict[str, object] = {}
        for name in draw(st.lists(st.sampled_from(sorted(HEADER_FIELDS)), max_size=3, unique=True)):
            fields[name] = draw(HEADER_FIELDS[name])
        if fields:
            raw = _patched(raw, **fields)
    block = bytearray(raw)
    for pos, value in draw(st.lists(st.tuples(st.integers(0, N1.itemsize + 3), st.integers(0, 255)), max_size=6)):
        block[pos] = value
    raw = bytes(block)
    cut = draw(st.none() | st.integers(0, len(raw)))
    if cut is not None:
        raw = raw[:cut]
    raw += draw(st.binary(max_size=64))
    if draw(st.booleans()):
        raw = _gz(raw)
        gz_cut = draw(st.none() | st.integers(0, len(raw)))
        raw = raw if gz_cut is None else raw[:gz_cut]
    return raw


def _zip_of(members: list[tuple[str, bytes]]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        for i, (name, data) in enumerate(members):
            zf.writestr(f"{i}/{name}", data)  # a distinct name per member: zipfile warns on duplicates
    return out.getvalue()


upload_bytes = st.one_of(
    st.binary(max_size=2000),
    garbled_nifti(),
    garbled_nifti(),
    st.lists(st.tuples(st.text(max_size=12), st.binary(max_size=300) | garbled_nifti()), max_size=3).map(_zip_of),
    st.binary(max_size=400).map(lambda b: bytes(128) + b"DICM" + b),  # a Part 10 preamble, then junk
)
file_names = st.sampled_from(["scan.nii", "scan.nii.gz", "series.zip", "x.dcm", "", "../../etc/passwd", "a\x00b",
                              "ü.nii", "x" * 300])
# half of the uploads send no metadata: their bytes, not a field, are what gets refused
metadata_fields = st.just({}) | st.dictionaries(st.sampled_from(["modality", "date", "series", "frame", "name",
                                                                 "other"]), field_values, max_size=4)


# ---- 1. fuzzing -----------------------------------------------------------------------------------

@settings(FUZZ, max_examples=260)
@given(data=upload_bytes, filename=file_names, fields=metadata_fields,
       field_name=st.sampled_from(["file"] * 18 + ["files", "x"]))
def test_fuzzed_uploads_never_fail_the_server(live, data, filename, fields, field_name):
    client, _, _, _ = live
    r = client.post("/v1/volumes", files={field_name: (filename, data)}, data=fields)
    assert_no_server_error(r, (filename, fields, data[:80]))
    if r.status_code == 201:  # what is accepted is there to read back
        vid = r.json()["id"]
        assert client.get(f"/v1/volumes/{vid}").status_code == 200
        assert client.get(f"/v1/volumes/{vid}/file").status_code == 200


@st.composite
def analysis_bodies(draw, vid: str) -> object:
    """JSON of any shape, or near-valid requests. A real volume id goes only with code, never with a
    prompt, so no example runs the model."""
    if draw(st.booleans()):
        return draw(json_values)
    body: dict[str, object] = {}
    use_real = draw(st.booleans())
    if use_real:
        body["code"] = draw(st.sampled_from([CODE, "x = 1", "respond(", "m = threshold(scan, 1e308)\nrespond(m)"])
                            | st.text(max_size=60))
    elif draw(st.booleans()):
        body["prompt"] = draw(st.text(max_size=60) | json_values)
    else:
        body["code"] = draw(json_values)
    ids = st.just(vid) if use_real else (st.text(max_size=90) | st.just("vol_missing") | json_values)
    volume = st.fixed_dictionaries({"id": ids}, optional={"name": field_values | json_values,
                                                          "modality": field_values | json_values,
                                                          "date": field_values | json_values})
    body["volumes"] = draw(st.lists(volume, max_size=3) | json_values)
    if draw(st.booleans()):
        body["wait"] = draw(st.floats(-1, 2) | st.sampled_from([31, 1e308, -1e308]) | json_values)
    if draw(st.booleans()):
        body[draw(st.text(max_size=10))] = draw(json_values)
    return body


@settings(FUZZ, max_examples=200)
@given(data=st.data())
def test_fuzzed_analysis_requests_never_fail_the_server(live, data):
    client, vid, _, _ = live
    kind = data.draw(st.sampled_from(["json", "raw", "nested"]))
    if kind == "json":
        body = data.draw(analysis_bodies(vid))
        r = client.post("/v1/analyses", content=json.dumps(body), headers={"content-type": "application/json"})
    elif kind == "raw":
        body = data.draw(st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
        ctype = data.draw(st.sampled_from(["application/json", "text/plain", "multipart/form-data", "", "x/y; a=b"]))
        r = client.post("/v1/analyses", content=body, headers={"content-type": ctype})
    else:
        depth = data.draw(st.integers(100, 20000))
        body = data.draw(st.sampled_from(["[", '{"code":', '{"volumes":[']))
        closed = data.draw(st.booleans())
        raw = body * depth + ("]" * depth if closed and body == "[" else "")
        r = client.post("/v1/analyses", content=raw, headers={"content-type": "application/json"})
    assert_no_server_error(r, (kind, repr(body)[:200]))
    if r.status_code in (200, 202):
        job = r.json()
        assert job["id"].startswith("job_") and job["volumes"][0]["id"] == vid


@settings(FUZZ, max_examples=120)
@given(fields=st.dictionaries(st.sampled_from(["code", "wait", "metadata", "volumes", "files", "series"]),
                              field_values, max_size=5),
       files=st.lists(st.tuples(st.sampled_from(["files", "metadata", "other"]), file_names,
                                upload_bytes | st.just(b"")), max_size=3),
       with_good=st.booleans())
def test_fuzzed_multipart_analyses_never_fail_the_server(live, fields, files, with_good):
    """No prompt field: with a readable scan it would run the model; code, when it parses, runs."""
    client, _, good, _ = live
    parts = [(name, (fname, data)) for name, fname, data in files]
    if with_good:
        parts.append(("files", ("good.nii.gz", good)))
    if "wait" in fields:
        fields["wait"] = fields["wait"][:4]  # "30" at most: no example holds the test for longer
    r = client.post("/v1/analyses/upload", files=parts or [("files", ("e.nii", b""))], data=fields)
    assert_no_server_error(r, (fields, [(n, f, d[:40]) for n, (f, d) in parts]))


# ---- 2. the malformed-file corpus ----------------------------------------------------------------

def test_each_malformed_file_gets_its_problem_and_nothing_accepted_is_lost(live):
    client, vid, good, api = live
    before = client.get(f"/v1/volumes/{vid}").json()
    refused = {}
    for case, (factory, name, expected) in sorted(CORPUS.items()):
        r = client.post("/v1/volumes", files={"file": (name, factory())}, data={"modality": "T1"})
        assert r.status_code in (413, 422), (case, r.status_code, r.text[:300])
        assert r.headers["content-type"].startswith(PROBLEM), (case, r.headers)
        problem = r.json()
        assert problem["status"] == r.status_code and name in problem["detail"], (case, problem)
        assert re.search(DEFECT_WORDS[expected], problem["detail"]), (case, expected.__name__, problem["detail"])
        if r.status_code == 413:  # refused from the header, before decompressing: only a size can be
            assert expected is vo.SizeLimitError, (case, problem)
        if "error_class" in problem:  # the reader's own class, where it got as far as reading
            assert issubclass(getattr(vo, problem["error_class"]), expected), (case, problem)
        refused[case] = r.status_code
    assert len(refused) == len(CORPUS) >= 25

    # the good volume, accepted before them all, is listed, described as before and served unchanged
    listed = client.get("/v1/volumes", params={"limit": 1000}).json()
    assert vid in {v["id"] for v in listed}
    assert client.get(f"/v1/volumes/{vid}").json() == before
    got = client.get(f"/v1/volumes/{vid}/file")
    assert got.status_code == 200 and got.content == good
    # none of the refused files was kept (listed volumes are the good one and fuzzed ones that were valid)
    assert not any(v["filename"] in {n for _, n, _ in CORPUS.values()} for v in listed)
    # and it still analyses to the same answer
    r = client.post("/v1/analyses", json={"code": CODE, "volumes": [{"id": vid}], "wait": 30})
    assert r.status_code == 200 and r.json()["status"] == "succeeded", r.text
    assert np.isfinite(r.json()["result"]["metrics"][0]["value"])
    assert api.alive()
