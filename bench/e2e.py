"""End-to-end benchmark of the embedded deployment: real `voxagent serve` processes, real HTTP.

What it measures, each with this machine's description (CPU count and model, torch threads):

- latency per task family (p50, p95 over ``--repeats`` prompts, the language model writing the
  program) on a 1 mm T1 (the MNI152 template) and a thick-slice scan (the template resampled to
  1 x 1 x 5 mm), one request at a time, models warm;
- cold start: process start to ``/readyz`` 200, and the first analysis after it (models load lazily
  on first use where a deployment does not warm them) against the warm median;
- throughput with 1 and 2 embedded workers: ``--jobs`` analyses submitted at once, jobs per minute;
- peak resident memory (VmHWM) of each server process, i.e. per worker pool.

Medians and ratios all come from this one run. The Celery deployment is not measured here (its
latency adds the broker round trips and the vision queue's artifact exchange; tests/reliability
covers its behaviour, not its speed).

Run: .venv/bin/python -m bench.e2e [--repeats 20] [--jobs 8]   (writes bench/results/e2e.json, e2e.md)
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from tqdm import tqdm

from bench.common import RESULTS_DIR

# One prompt per task family of the shipped agent's training (training/tasks): what a user asks.
FAMILIES: dict[str, str] = {
    "segment": "Segment the brain.",
    "volume": "What is the white matter volume?",
    "extents": "What is the height of the brain?",
    "intensity": "What is the mean intensity of the gray matter?",
    "asymmetry": "Is there an asymmetry between the left and right hemisphere?",
}
THROUGHPUT_PROMPT = FAMILIES["volume"]
READY_TIMEOUT_S = 180.0


def cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo; the platform's processor string elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine(threads: int) -> dict[str, Any]:
    """Where the figures were taken; ``threads`` is the torch thread count the servers ran with."""
    import torch

    return {"cpu_count": os.cpu_count(), "cpu_model": cpu_model(), "torch": torch.__version__,
            "torch_threads": threads, "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
            "platform": platform.platform(), "python": platform.python_version(),
            "load_average_at_start": [round(x, 2) for x in os.getloadavg()]}


def percentile(samples: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100): an observed latency, never an interpolated one."""
    ordered = sorted(samples)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def thick_slice_scan(mni: Path, out: Path) -> Path:
    """The template at 1 x 1 x 5 mm: each 5 mm slab's mean (what a thick acquisition integrates)."""
    import voxel_ops as vo

    vol = vo.load_volume(mni)
    return vo.save_volume(vo.resample_to_spacing(vol, (1.0, 1.0, 5.0)), out)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _peak_rss_mb(pid: int) -> float:
    """VmHWM: the process's peak resident set so far (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Server:
    """A `voxagent serve` child process on loopback with its own data directory and API key."""

    def __init__(self, root: Path, workers: int, threads: int) -> None:
        self.root, self.port = root, _free_port()
        self.env = {**os.environ, "VOXAGENT_DATA_DIR": str(root / "data"), "VOXAGENT_WORKERS": str(workers),
                    "VOXAGENT_TENANT_CONCURRENCY": "16", "OMP_NUM_THREADS": str(threads),
                    "MKL_NUM_THREADS": str(threads)}
        self.env.pop("VOXAGENT_BROKER_URL", None)
        key = subprocess.run([sys.executable, "-m", "cli", "keys", "create", "--tenant", "bench"], env=self.env,
                             capture_output=True, text=True, check=True, timeout=120)
        self.key = key.stdout.strip()
        self.proc: subprocess.Popen | None = None

    def start(self) -> float:
        """Start the process; seconds until /readyz answers 200."""
        t0 = time.perf_counter()
        log = open(self.root / f"serve-{self.port}.log", "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "cli", "serve", "--host", "127.0.0.1",
                                      "--port", str(self.port)], env=self.env, stdout=log, stderr=subprocess.STDOUT)
        deadline = t0 + READY_TIMEOUT_S
        while time.perf_counter() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"voxagent serve exited ({self.proc.returncode}); see {log.name}")
            try:
                if httpx.get(f"{self.url}/readyz", headers=self.headers, timeout=2).status_code == 200:
                    return time.perf_counter() - t0
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"voxagent serve not ready in {READY_TIMEOUT_S} s; see {log.name}")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def headers(self) -> dict[str, str]:
        return {"X-API-Key": self.key}

    def peak_rss_mb(self) -> float:
        assert self.proc is not None
        return _peak_rss_mb(self.proc.pid)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


@contextmanager
def running(root: Path, workers: int, threads: int) -> Iterator[tuple[Server, float]]:
    server = Server(root, workers, threads)
    try:
        ready_s = server.start()
        yield server, ready_s
    finally:
        server.stop()


def upload(client: httpx.Client, path: Path) -> str:
    r = client.post("/v1/volumes", files={"file": (path.name, path.read_bytes())}, data={"modality": "T1"})
    r.raise_for_status()
    return str(r.json()["id"])


def analyse(client: httpx.Client, volume_id: str, prompt: str, answers: dict[str, str] | None = None) -> float:
    """Seconds from POST to a finished job (the server's bounded wait, then polling with wait).
    ``answers`` gets the program and the answer under the prompt, to show what was timed."""
    t0 = time.perf_counter()
    r = client.post("/v1/analyses", json={"prompt": prompt, "volumes": [{"id": volume_id}], "wait": 30})
    r.raise_for_status()
    job = r.json()
    while job["status"] not in ("succeeded", "failed", "cancelled"):
        job = client.get(f"/v1/analyses/{job['id']}", params={"wait": 30}).json()
    if job["status"] != "succeeded" and not (job.get("result") or {}).get("trace"):
        raise RuntimeError(f"analysis did not run: {json.dumps(job)[:500]}")
    elapsed = time.perf_counter() - t0
    if answers is not None:
        result = job.get("result") or {}
        code = " | ".join(step["code"].replace("\n", "; ") for step in result.get("trace", []))
        answers[prompt] = f"{job['status']}: {result.get('text') or result.get('error')} [{code}]"[:400]
    return elapsed


def throughput(server: Server, volume_id: str, jobs: int, bar: tqdm) -> float:
    """Analyses per minute with ``jobs`` submitted at once."""
    with httpx.Client(base_url=server.url, headers=server.headers, timeout=600) as client:
        t0 = time.perf_counter()
        with ThreadPoolExecutor(jobs) as pool:
            for _ in pool.map(lambda _: analyse(client, volume_id, THROUGHPUT_PROMPT), range(jobs)):
                bar.update()
        return jobs / (time.perf_counter() - t0) * 60


def table(results: dict[str, Any]) -> str:
    m = results["machine"]
    rows = [f"Machine: {m['cpu_count']} CPUs ({m['cpu_model']}), torch {m['torch']} with {m['torch_threads']} "
            f"thread(s), CUDA {m['cuda']}; load average at start {m['load_average_at_start']}. "
            f"`python -m bench.e2e --repeats {results['repeats']} --jobs {results['jobs']}`, one run.", "",
            "| task family | 1 mm T1 p50 (s) | 1 mm T1 p95 (s) | 1x1x5 mm p50 (s) | 1x1x5 mm p95 (s) |",
            "|---|---|---|---|---|"]
    for family in FAMILIES:
        a, b = results["latency_s"]["t1_1mm"][family], results["latency_s"]["thick_5mm"][family]
        rows.append(f"| {family} | {a['p50']:.2f} | {a['p95']:.2f} | {b['p50']:.2f} | {b['p95']:.2f} |")
    rows += ["", "| deployment figure | 1 worker | 2 workers |", "|---|---|---|"]
    d = results["deployments"]
    for key, label, fmt in (("cold_start_s", "cold start: process start to /readyz (s)", "{:.1f}"),
                            ("first_request_s", "first analysis after ready (s)", "{:.2f}"),
                            ("warm_request_s", "warm analysis, median (s)", "{:.2f}"),
                            ("throughput_per_min", f"throughput, {results['jobs']} at once (analyses/min)", "{:.1f}"),
                            ("peak_rss_mb", "peak RSS of the server process (MB)", "{:.0f}")):
        rows.append(f"| {label} | {fmt.format(d['1'][key])} | {fmt.format(d['2'][key])} |")
    rows.append(f"| throughput ratio 2 / 1 workers | | {results['throughput_ratio_2_vs_1']:.2f} |")
    rows.append(f"| cold / warm first analysis (1 worker) | {results['first_vs_warm_ratio']:.2f} | |")
    rows += ["", "Celery deployment: not measured by this benchmark."]
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20, help="prompts per family and scan (p50/p95 over these)")
    parser.add_argument("--jobs", type=int, default=8, help="analyses submitted at once for throughput")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads of each server")
    args = parser.parse_args(argv)

    import nilearn

    mni = Path(nilearn.__file__).parent / "datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
    root = Path(tempfile.mkdtemp(prefix="voxagent-e2e-"))
    scans = {"t1_1mm": mni, "thick_5mm": thick_slice_scan(mni, root / "mni_1x1x5.nii.gz")}
    total = 2 * (1 + 3) + len(scans) * len(FAMILIES) * args.repeats + 2 * args.jobs
    results: dict[str, Any] = {"machine": machine(args.threads), "repeats": args.repeats, "jobs": args.jobs,
                               "latency_s": {}, "deployments": {}}
    answers: dict[str, dict[str, str]] = {}
    with tqdm(total=total, desc="bench.e2e", unit="req", file=sys.stderr) as bar:
        for workers in (1, 2):
            with running(root / f"w{workers}", workers, args.threads) as (server, ready_s):
                with httpx.Client(base_url=server.url, headers=server.headers, timeout=600) as client:
                    ids = {name: upload(client, path) for name, path in scans.items()}
                    first_s = analyse(client, ids["t1_1mm"], THROUGHPUT_PROMPT)
                    bar.update()
                    warm = []
                    for _ in range(3):
                        warm.append(analyse(client, ids["t1_1mm"], THROUGHPUT_PROMPT))
                        bar.update()
                    if workers == 1:  # latency one request at a time: the pool size does not matter
                        for scan, vid in ids.items():
                            per_family = {}
                            for family, prompt in FAMILIES.items():
                                samples = []
                                for _ in range(args.repeats):
                                    samples.append(analyse(client, vid, prompt, answers.setdefault(scan, {})))
                                    bar.update()
                                per_family[family] = {"p50": statistics.median(samples),
                                                      "p95": percentile(samples, 95), "samples": samples}
                            results["latency_s"][scan] = per_family
                per_min = throughput(server, ids["t1_1mm"], args.jobs, bar)
                results["deployments"][str(workers)] = {
                    "cold_start_s": ready_s, "first_request_s": first_s, "warm_request_s": statistics.median(warm),
                    "throughput_per_min": per_min, "peak_rss_mb": server.peak_rss_mb()}
    d = results["deployments"]
    results["throughput_ratio_2_vs_1"] = d["2"]["throughput_per_min"] / d["1"]["throughput_per_min"]
    results["first_vs_warm_ratio"] = d["1"]["first_request_s"] / d["1"]["warm_request_s"]
    results["answers"] = answers
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / "e2e.json").write_text(json.dumps(results, indent=2, sort_keys=True))
    md = f"## bench.e2e\n\n{table(results)}\n"
    (RESULTS_DIR / "e2e.md").write_text(md)
    sys.stdout.write(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
