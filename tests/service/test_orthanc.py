"""A real PACS round trip: a study stored in Orthanc is pushed to voxagent by Orthanc's own DICOMweb
STOW-RS client, a routing rule runs a program on it, and voxagent pushes the SEG and SR back into the
same study in Orthanc (checked through Orthanc's REST API).

Processes: Orthanc (Debian ``orthanc`` + ``orthanc-dicomweb``, installed by ``make test``) and
``voxagent serve`` (uvicorn), both on 127.0.0.1, started and stopped by fixtures. Not skipped when
Orthanc is missing: the fixture fails, as the redis-server one does."""
from __future__ import annotations

import io
import json
import time
from pathlib import Path

import highdicom as hd
import pydicom
import pytest

from tests.service import procs
from tests.service.orthanc import start_orthanc
from tests.voxel_ops.dicom_writer import affine_from, rotation, write_series

pytestmark = [pytest.mark.integration, pytest.mark.slow]

AFFINE = affine_from(rotation(0.1, 0.0, 0.2), (1.1, 0.9, 2.5), (10.0, -20.0, 5.0))
CODE = 'm = threshold(flair, 50)\nv = volume(m)\noutput(m, "bright")\nrespond(f"bright volume {v}")'


@pytest.fixture
def pacs(tmp_path):
    """(orthanc, voxagent url, api key): voxagent routes studies from tenant 'hospital' back to Orthanc."""
    orthanc_port = procs.free_port()
    rules = tmp_path / "rules.yaml"
    rules.write_text(f"""
destinations:
  hospital: {{url: "http://127.0.0.1:{orthanc_port}/dicom-web", attempts: 4, backoff_s: 0.5}}
rules:
  - name: flair-bright
    scans:
      flair: {{modality: MR, sequence: FLAIR}}
    code: {json.dumps(CODE)}
""")
    env = procs.base_env(tmp_path / "data", VOXAGENT_ROUTING_RULES=str(rules), VOXAGENT_WEBHOOK_ALLOW_LOOPBACK="true",
                         VOXAGENT_MAX_UPLOAD_BYTES=str(50_000_000))
    key = procs.make_key(env, "hospital")
    api, api_url = procs.start_api(env, tmp_path, "api-orthanc")
    try:
        orthanc = start_orthanc(tmp_path / "orthanc", orthanc_port, servers={
            "voxagent": {"Url": f"{api_url}/dicomweb/", "HttpHeaders": {"X-API-Key": key}}})
    except BaseException:
        api.stop()
        raise
    try:
        yield orthanc, api_url, key
    finally:
        orthanc.stop()
        api.stop()


def test_study_from_orthanc_is_routed_and_results_land_in_the_same_study(pacs, tmp_path):
    import numpy as np

    orthanc, api_url, key = pacs
    arr = np.random.default_rng(0).integers(0, 40, size=(14, 16, 9)).astype(np.int16)
    arr[3:8, 4:10, 2:6] = 120
    flair_uid = pydicom.uid.generate_uid()
    files = write_series(arr, AFFINE, tmp_path / "flair", description="FLAIR ax", series_uid=flair_uid,
                         SeriesNumber=3)
    files += write_series(arr, AFFINE, tmp_path / "t1", description="t1_mprage", SeriesNumber=2, seed=1)
    for path in files:
        r = orthanc.http.post("/instances", content=Path(path).read_bytes())
        assert r.status_code == 200, r.text
    (study_id,) = orthanc.http.get("/studies").json()
    assert len(orthanc.http.get(f"/studies/{study_id}/series").json()) == 2

    # Orthanc pushes the study to voxagent with its DICOMweb STOW-RS client
    r = orthanc.http.post("/dicom-web/servers/voxagent/stow", json={"Resources": [study_id], "Synchronous": True})
    assert r.status_code == 200, r.text + "\n" + orthanc.proc.tail()

    # voxagent runs the rule and pushes SEG + SR into the same study: wait on Orthanc's own view of it
    deadline = time.monotonic() + 180
    while True:
        series = orthanc.http.get(f"/studies/{study_id}/series").json()
        modalities = sorted(s["MainDicomTags"].get("Modality") for s in series)
        if modalities == ["MR", "MR", "SEG", "SR"]:
            break
        assert time.monotonic() < deadline, (modalities, procs_tail(api_url, key))
        time.sleep(0.25)

    seg_series = next(s for s in series if s["MainDicomTags"]["Modality"] == "SEG")
    (seg_instance,) = seg_series["Instances"]
    seg = hd.seg.segread(io.BytesIO(orthanc.http.get(f"/instances/{seg_instance}/file").content))
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == flair_uid
    assert [d.SegmentLabel for d in seg.SegmentSequence] == ["bright"]
    assert int(seg.pixel_array.sum()) == int((arr > 50).sum())
    sr_series = next(s for s in series if s["MainDicomTags"]["Modality"] == "SR")
    sr = pydicom.dcmread(io.BytesIO(orthanc.http.get(f"/instances/{sr_series['Instances'][0]}/file").content))
    assert sr.VerificationFlag == "UNVERIFIED" and seg.SOPInstanceUID in str(sr)

    import httpx

    (study,) = httpx.get(f"{api_url}/v1/studies", headers={"X-API-Key": key}, timeout=10).json()
    assert study["rule"] == "flair-bright" and study["delivery"]["status"] == "delivered", study


def procs_tail(api_url: str, key: str) -> str:
    import httpx

    try:
        return httpx.get(f"{api_url}/v1/studies", headers={"X-API-Key": key}, timeout=5).text
    except httpx.HTTPError as exc:
        return repr(exc)
