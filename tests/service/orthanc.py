"""A real Orthanc (Debian ``orthanc`` + ``orthanc-dicomweb``) on loopback for the PACS tests.

Started with a temporary configuration: HTTP on a free 127.0.0.1 port with remote access refused,
no DICOM (DIMSE) listener, no authentication, the DICOMweb plugin at ``/dicom-web/`` with the
DICOMweb servers it may push to (voxagent). Stopped by its process id, never by name.
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import httpx

from tests.service.procs import Proc, free_port

PLUGIN_DIRS = (Path("/usr/share/orthanc/plugins"), Path("/usr/lib/orthanc"))


def dicomweb_plugin() -> Path | None:
    for d in PLUGIN_DIRS:
        for p in sorted(d.glob("libOrthancDicomWeb.so*")) if d.is_dir() else []:
            return p
    return None


class Orthanc:
    def __init__(self, proc: Proc, url: str) -> None:
        self.proc = proc
        self.url = url  # REST root; DICOMweb at url + "/dicom-web"
        self.http = httpx.Client(base_url=url, timeout=60, trust_env=False)

    @property
    def dicomweb(self) -> str:
        return self.url + "/dicom-web"

    def stop(self) -> None:
        self.http.close()
        self.proc.stop()


def start_orthanc(tmp: Path, port: int | None = None, servers: dict[str, dict] | None = None) -> Orthanc:
    """Orthanc with the DICOMweb plugin on ``127.0.0.1:port``; ``servers``: its DicomWeb "Servers"."""
    exe = shutil.which("Orthanc") or shutil.which("Orthanc", path="/usr/sbin")
    plugin = dicomweb_plugin()
    if exe is None or plugin is None:
        raise RuntimeError("Orthanc with its DICOMweb plugin is not installed "
                           "(make test installs it: apt-get install orthanc orthanc-dicomweb)")
    port = port or free_port()
    (tmp / "storage").mkdir(parents=True, exist_ok=True)
    config = {
        "Name": "voxagent-test", "StorageDirectory": str(tmp / "storage"), "IndexDirectory": str(tmp / "storage"),
        "HttpPort": port, "RemoteAccessAllowed": False, "AuthenticationEnabled": False,
        "DicomServerEnabled": False, "DicomPort": free_port(), "HttpTimeout": 60, "ConcurrentJobs": 1,
        "SaveJobs": False, "DeidentifyLogs": True, "Plugins": [str(plugin)],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": True, "Servers": servers or {}},
    }
    cfg = tmp / "orthanc.json"
    cfg.write_text(json.dumps(config, indent=2))
    proc = Proc([exe, str(cfg)], {"PATH": "/usr/bin:/bin:/usr/sbin"}, tmp / "orthanc.log")
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError("Orthanc exited:\n" + proc.tail())
        try:
            r = httpx.get(url + "/plugins", timeout=1, trust_env=False)
            if r.status_code == 200:
                if "dicom-web" not in r.json():
                    proc.stop()
                    raise RuntimeError(f"Orthanc started without its DICOMweb plugin: {r.text}")
                return Orthanc(proc, url)
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.stop()
    raise RuntimeError("Orthanc did not start:\n" + proc.tail())
