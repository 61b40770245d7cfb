"""End-to-end benchmark of both deployments: real `voxagent serve` processes, real HTTP.

Embedded: one `voxagent serve` (thread pool, SQLite). Celery: a redis-server on loopback (temp
dir, random free port), N agent and N vision workers (`voxagent worker --queues agent|vision`,
one process each) and `voxagent serve` with VOXAGENT_BROKER_URL; the processes are those of
tests/service/procs.py and tests/reliability/faults.py. Each with 1 and 2 workers (Celery: 1 + 1,
then 2 + 2). What it measures, each with this machine's description (CPU count and model, torch
threads, redis-server version):

- latency per task family (p50, p95 over ``--repeats`` prompts, the language model writing the
  program) on a 1 mm T1 (the MNI152 template) and a thick-slice scan (the template resampled to
  1 x 1 x 5 mm), one request at a time, models warm, on the 1-worker deployment of each kind;
- cold start: process start to ``/readyz`` 200 (Celery: redis, workers and API started, until
  every worker process reports its model loaded), and the first analysis after it against the
  warm median;
- throughput with 1 and 2 workers: ``--jobs`` analyses submitted at once by as many clients,
  analyses per minute;
- peak resident memory (VmHWM) of each process: the embedded server; the Celery API, each worker
  and redis-server.

Medians and ratios (2 vs 1 workers, Celery vs embedded) all come from this one run.

Run: .venv/bin/python -m bench.e2e [--repeats 20] [--jobs 8] [--quick] [--no-celery] [--no-embedded]
(writes bench/results/e2e.json, e2e.md; ``--out DIR`` elsewhere). ``--quick``: 2 repeats, 4 jobs.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

import httpx
from tqdm import tqdm

from bench.common import RESULTS_DIR
from tests.reliability import faults
from tests.service import procs

# One prompt per task family of the shipped agent's training (training/tasks): what a user asks.
FAMILIES: dict[str, str] = {
    "segment": "Segment the brain.",
    "volume": "What is the white matter volume?",
    "extents": "What is the height of the brain?",
    "intensity": "What is the mean intensity of the gray matter?",
    "asymmetry": "Is there an asymmetry between the left and right hemisphere?",
}
THROUGHPUT_PROMPT = FAMILIES["volume"]
READY_TIMEOUT_S = 300.0
WARM_REQUESTS = 3
SECTIONS = ("embedded", "celery")


def cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo; the platform's processor string elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def redis_version() -> str:
    exe = shutil.which("redis-server")
    if exe is None:
        return "not installed"
    out = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=10).stdout
    return next((w.split("=", 1)[1] for w in out.split() if w.startswith("v=")), out.strip() or "unknown")


def machine(threads: int) -> dict[str, Any]:
    """Where the figures were taken; ``threads`` is the torch thread count of every server and worker."""
    import torch

    return {"cpu_count": os.cpu_count(), "cpu_model": cpu_model(), "torch": torch.__version__,
            "torch_threads": threads, "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
            "platform": platform.platform(), "python": platform.python_version(), "redis_server": redis_version(),
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


def _peak_rss_mb(pid: int) -> float:
    """VmHWM: the process's peak resident set so far (Linux)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:  # exited: its peak is gone with it
        pass
    return float("nan")


def _env(root: Path, threads: int, **extra: str) -> dict[str, str]:
    """The tests' process environment (no stray VOXAGENT_* settings) with ``threads`` torch threads;
    VOXAGENT_MODELS_DIR passes through, so the model benchmarked is the one pointed at."""
    models = {"VOXAGENT_MODELS_DIR": os.environ["VOXAGENT_MODELS_DIR"]} if "VOXAGENT_MODELS_DIR" in os.environ else {}
    return procs.base_env(root / "data", OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
                          VOXAGENT_TENANT_CONCURRENCY="16", **models, **extra)


class Deployment(Protocol):
    url: str
    key: str

    def start(self) -> float: ...
    def stop(self) -> None: ...
    def peak_rss_mb(self) -> dict[str, float]: ...


class Embedded:
    """A `voxagent serve` child process on loopback with its own data directory and API key."""

    def __init__(self, root: Path, workers: int, threads: int) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.root, self.port = root, procs.free_port()
        self.env = _env(root, threads, VOXAGENT_WORKERS=str(workers))
        self.key = procs.make_key(self.env, "bench")
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: procs.Proc | None = None

    def start(self) -> float:
        """Start the process; seconds until /readyz answers 200 (models loaded: serve warms them)."""
        t0 = time.perf_counter()
        self.proc = procs.Proc([*procs.VOXAGENT, "serve", "--host", "127.0.0.1", "--port", str(self.port)],
                               self.env, self.root / "serve.log")
        faults.wait_for(self._readyz, lambda status: status == 200, READY_TIMEOUT_S, "voxagent serve ready",
                        self.proc.tail)
        return time.perf_counter() - t0

    def _readyz(self) -> int:
        assert self.proc is not None
        if not self.proc.alive():
            raise RuntimeError(f"voxagent serve exited ({self.proc.p.returncode}):\n{self.proc.tail()}")
        return httpx.get(f"{self.url}/readyz", timeout=2).status_code

    def peak_rss_mb(self) -> dict[str, float]:
        assert self.proc is not None
        return {"serve": _peak_rss_mb(self.proc.p.pid)}

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop(30)


class Celery:
    """redis-server, ``workers`` agent and ``workers`` vision worker processes, `voxagent serve` with
    the broker; all on loopback, sharing one data directory."""

    def __init__(self, root: Path, workers: int, threads: int) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.root, self.workers, self.threads = root, workers, threads
        self.procs: dict[str, procs.Proc] = {}
        self.url = self.key = ""

    def start(self) -> float:
        """Start every process; seconds until /readyz answers 200 with each worker's model loaded."""
        t0 = time.perf_counter()
        self.procs["redis"], broker = procs.start_redis(self.root)
        env = _env(self.root, self.threads, VOXAGENT_BROKER_URL=broker)
        for queue in ("agent", "vision"):
            for i in range(1, self.workers + 1):
                name = f"{queue}-{i}@bench"
                self.procs[name] = faults.start_worker(env, self.root, queue, name)
        self.procs["api"], self.url = faults.start_api(env, self.root, "api")
        faults.wait_for(self._readyz, self._all_loaded, READY_TIMEOUT_S,
                        f"/readyz with {self.workers} agent and {self.workers} vision worker(s) loaded", self.logs)
        ready_s = time.perf_counter() - t0
        self.key = procs.make_key(env, "bench")
        return ready_s

    def logs(self) -> str:
        return "\n".join(f"--- {name}\n{p.tail(2500)}" for name, p in self.procs.items())

    def _readyz(self) -> tuple[int, dict[str, Any]]:
        for name, p in self.procs.items():
            if not p.alive():
                raise RuntimeError(f"{name} exited ({p.p.returncode}):\n{p.tail()}")
        r = httpx.get(f"{self.url}/readyz", timeout=2)
        return r.status_code, r.json()

    def _all_loaded(self, answer: tuple[int, dict[str, Any]]) -> bool:
        status, body = answer
        queues = [c for c in body.get("components", []) if c["name"].startswith("queue:")]
        return status == 200 and len(queues) == 2 and all((c.get("model_loaded") or 0) >= self.workers
                                                         for c in queues)

    def peak_rss_mb(self) -> dict[str, float]:
        return {name: _peak_rss_mb(p.p.pid) for name, p in self.procs.items()}

    def stop(self) -> None:
        for p in reversed(list(self.procs.values())):  # API, workers, then the broker
            p.stop(30)


@contextmanager
def running(kind: type[Embedded] | type[Celery], root: Path, workers: int,
            threads: int) -> Iterator[tuple[Deployment, float]]:
    """A started deployment and its cold start; every process stopped on the way out, errors and
    KeyboardInterrupt included (the children run in their own sessions: a Ctrl-C never reaches them)."""
    deployment = kind(root, workers, threads)
    try:
        ready_s = deployment.start()
        yield deployment, ready_s
    finally:
        deployment.stop()


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


def throughput(deployment: Deployment, volume_id: str, jobs: int, bar: tqdm) -> float:
    """Analyses per minute with ``jobs`` submitted at once."""
    with httpx.Client(base_url=deployment.url, headers={"X-API-Key": deployment.key}, timeout=600) as client:
        t0 = time.perf_counter()
        with ThreadPoolExecutor(jobs) as pool:
            for _ in pool.map(lambda _: analyse(client, volume_id, THROUGHPUT_PROMPT), range(jobs)):
                bar.update()
        return jobs / (time.perf_counter() - t0) * 60


def measure(deployment: Deployment, scans: dict[str, Path], repeats: int, jobs: int, bar: tqdm,
            answers: dict[str, dict[str, str]] | None) -> tuple[dict[str, float], dict[str, Any] | None]:
    """First and warm analyses, throughput; with ``answers`` also the latency per family and scan."""
    latency: dict[str, Any] | None = None
    with httpx.Client(base_url=deployment.url, headers={"X-API-Key": deployment.key}, timeout=600) as client:
        ids = {name: upload(client, path) for name, path in scans.items()}
        first_s = analyse(client, ids["t1_1mm"], THROUGHPUT_PROMPT)
        bar.update()
        warm = []
        for _ in range(WARM_REQUESTS):
            warm.append(analyse(client, ids["t1_1mm"], THROUGHPUT_PROMPT))
            bar.update()
        if answers is not None:  # latency one request at a time: the pool size does not matter
            latency = {}
            for scan, vid in ids.items():
                per_family = {}
                for family, prompt in FAMILIES.items():
                    samples = []
                    for _ in range(repeats):
                        samples.append(analyse(client, vid, prompt, answers.setdefault(scan, {})))
                        bar.update()
                    per_family[family] = {"p50": statistics.median(samples), "p95": percentile(samples, 95),
                                          "samples": samples}
                latency[scan] = per_family
    per_min = throughput(deployment, ids["t1_1mm"], jobs, bar)
    return {"first_request_s": first_s, "warm_request_s": statistics.median(warm),
            "throughput_per_min": per_min}, latency


def _ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def run_section(kind: type[Embedded] | type[Celery], root: Path, scans: dict[str, Path], repeats: int, jobs: int,
                threads: int, bar: tqdm) -> dict[str, Any]:
    section: dict[str, Any] = {"latency_s": {}, "deployments": {}, "answers": {}}
    for workers in (1, 2):
        with running(kind, root / f"w{workers}", workers, threads) as (deployment, ready_s):
            figures, latency = measure(deployment, scans, repeats, jobs, bar,
                                       section["answers"] if workers == 1 else None)
            section["deployments"][str(workers)] = {"cold_start_s": ready_s, **figures,
                                                    "peak_rss_mb": deployment.peak_rss_mb()}
            if latency is not None:
                section["latency_s"] = latency
    d = section["deployments"]
    section["throughput_ratio_2_vs_1"] = _ratio(d["2"]["throughput_per_min"], d["1"]["throughput_per_min"])
    section["first_vs_warm_ratio"] = _ratio(d["1"]["first_request_s"], d["1"]["warm_request_s"])
    return section


def celery_vs_embedded(embedded: dict[str, Any], celery: dict[str, Any]) -> dict[str, Any]:
    """Celery / embedded, figure by figure (latency p50 per scan and family; per worker count)."""
    out: dict[str, Any] = {"latency_p50": {
        scan: {f: _ratio(celery["latency_s"][scan][f]["p50"], embedded["latency_s"][scan][f]["p50"]) for f in FAMILIES}
        for scan in embedded["latency_s"]}}
    for key in ("cold_start_s", "warm_request_s", "throughput_per_min"):
        out[key] = {w: _ratio(celery["deployments"][w][key], embedded["deployments"][w][key]) for w in ("1", "2")}
    return out


SCAN_LABELS = {"t1_1mm": "1 mm T1", "thick_5mm": "1x1x5 mm"}
SECTION_LABELS = {"embedded": "embedded", "celery": "Celery"}
COLUMNS = {"embedded": ("1 worker", "2 workers"), "celery": ("1 agent + 1 vision worker", "2 + 2 workers")}


def _f(value: float, fmt: str) -> str:
    return "-" if value != value else fmt.format(value)  # NaN: not measured


def table(results: dict[str, Any]) -> str:
    m = results["machine"]
    sections = [s for s in SECTIONS if s in results]
    rows = [f"Machine: {m['cpu_count']} CPUs ({m['cpu_model']}), torch {m['torch']} with {m['torch_threads']} "
            f"thread(s) per process, CUDA {m['cuda']}, redis-server {m['redis_server']}; load average at start "
            f"{m['load_average_at_start']}. `{results['command']}` ({results['repeats']} repeats, "
            f"{results['jobs']} jobs at once), one run.", ""]
    ratio = results.get("celery_vs_embedded")
    head = "| task family |"
    for scan in SCAN_LABELS:
        for s in sections:
            head += f" {SCAN_LABELS[scan]} {SECTION_LABELS[s]} p50 (s) | p95 (s) |"
        if ratio:
            head += f" {SCAN_LABELS[scan]} p50 Celery / embedded |"
    rows += [head, "|" + "---|" * head.count(" |")]
    for family in FAMILIES:
        row = f"| {family} |"
        for scan in SCAN_LABELS:
            for s in sections:
                x = results[s]["latency_s"][scan][family]
                row += f" {x['p50']:.2f} | {x['p95']:.2f} |"
            if ratio:
                row += f" {ratio['latency_p50'][scan][family]:.2f} |"
        rows.append(row)
    head = "| deployment figure |" + "".join(f" {SECTION_LABELS[s]}, {c} |" for s in sections for c in COLUMNS[s])
    rows += ["", head, "|" + "---|" * head.count(" |")]

    def line(label: str, values: list[str]) -> None:
        rows.append(f"| {label} | " + " | ".join(values) + " |")

    deps = [(s, results[s]["deployments"][w]) for s in sections for w in ("1", "2")]
    for key, label, fmt in (("cold_start_s", "cold start: process start to /readyz, models loaded (s)", "{:.1f}"),
                            ("first_request_s", "first analysis after ready (s)", "{:.2f}"),
                            ("warm_request_s", f"warm analysis, median of {WARM_REQUESTS} (s)", "{:.2f}"),
                            ("throughput_per_min", f"throughput, {results['jobs']} at once (analyses/min)",
                             "{:.1f}")):
        line(label, [_f(d[key], fmt) for _, d in deps])
    for role, label in (("serve", "embedded server process"), ("api", "Celery API process"),
                        ("agent", "each agent worker"), ("vision", "each vision worker"), ("redis", "redis-server")):
        values = []
        for _, d in deps:
            rss = [v for name, v in d["peak_rss_mb"].items() if name == role or name.startswith(f"{role}-")]
            values.append("/".join(_f(v, "{:.0f}") for v in rss) if rss else "")
        if any(values):
            line(f"peak RSS, {label} (MB)", values)
    values = []
    for s in sections:
        values += ["", _f(results[s]["throughput_ratio_2_vs_1"], "{:.2f}")]
    line("throughput ratio 2 / 1 workers", values)
    values = []
    for s in sections:
        values += [_f(results[s]["first_vs_warm_ratio"], "{:.2f}"), ""]
    line("first / warm analysis (1 worker)", values)
    if ratio:
        rows += ["", "| Celery / embedded | 1 worker | 2 workers |", "|---|---|---|"]
        for key, label in (("cold_start_s", "cold start"), ("warm_request_s", "warm analysis"),
                           ("throughput_per_min", "throughput")):
            rows.append(f"| {label} | {_f(ratio[key]['1'], '{:.2f}')} | {_f(ratio[key]['2'], '{:.2f}')} |")
    for s, why in results.get("not_measured", {}).items():
        rows += ["", f"{SECTION_LABELS[s]} deployment: not measured in this run ({why})."]
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=None,
                        help="prompts per family and scan, p50/p95 over these (default 20; --quick 2)")
    parser.add_argument("--jobs", type=int, default=None,
                        help="analyses submitted at once for throughput (default 8; --quick 4)")
    parser.add_argument("--quick", action="store_true", help="a small run (2 repeats, 4 jobs): a few minutes")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads of each process")
    parser.add_argument("--no-celery", action="store_true", help="skip the Celery deployment")
    parser.add_argument("--no-embedded", action="store_true", help="skip the embedded deployment")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="where e2e.json and e2e.md go")
    args = parser.parse_args(argv)
    repeats = args.repeats if args.repeats is not None else (2 if args.quick else 20)
    jobs = args.jobs if args.jobs is not None else (4 if args.quick else 8)
    kinds: dict[str, type[Embedded] | type[Celery]] = {"embedded": Embedded, "celery": Celery}
    if args.no_embedded:
        kinds.pop("embedded")
    if args.no_celery:
        kinds.pop("celery")
    skipped = {name: f"--no-{name} given" for name in SECTIONS if name not in kinds}
    if "celery" in kinds and shutil.which("redis-server") is None:
        kinds.pop("celery")
        skipped["celery"] = "redis-server is not installed (make system-deps)"
        sys.stderr.write("bench.e2e: redis-server is not installed (make system-deps): Celery part skipped\n")
    if not kinds:
        parser.error("nothing left to measure")

    import nilearn

    mni = Path(nilearn.__file__).parent / "datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
    root = Path(tempfile.mkdtemp(prefix="voxagent-e2e-"))
    scans = {"t1_1mm": mni, "thick_5mm": thick_slice_scan(mni, root / "mni_1x1x5.nii.gz")}
    per_section = 2 * (1 + WARM_REQUESTS) + len(scans) * len(FAMILIES) * repeats + 2 * jobs
    shown = sys.argv[1:] if argv is None else argv
    results: dict[str, Any] = {"machine": machine(args.threads), "repeats": repeats, "jobs": jobs,
                               "command": " ".join(["python -m bench.e2e", *shown]), "not_measured": skipped}
    try:
        with tqdm(total=per_section * len(kinds), desc="bench.e2e", unit="req", file=sys.stderr) as bar:
            for name, kind in kinds.items():
                results[name] = run_section(kind, root / name, scans, repeats, jobs, args.threads, bar)
    except BaseException:
        sys.stderr.write(f"bench.e2e stopped; every process it started is stopped, their logs are in {root}\n")
        raise
    if "embedded" in results and "celery" in results:
        results["celery_vs_embedded"] = celery_vs_embedded(results["embedded"], results["celery"])
    shutil.rmtree(root, ignore_errors=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "e2e.json").write_text(json.dumps(results, indent=2, sort_keys=True))
    md = f"## bench.e2e\n\n{table(results)}\n"
    (args.out / "e2e.md").write_text(md)
    sys.stdout.write(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
