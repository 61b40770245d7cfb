"""Vision network benchmarks, side by side in one run.

1. Native vs isotropic on a thick-slice scan (256x256x30 at 0.9x0.9x5 mm), ``mid`` preset with no
   minimum working spacing, forward only (encode + generate): native-space processing against
   resampling to 0.9 mm isotropic (256x256x167), processing, and resampling the output back.
2. Encode + generate on the 1 mm MNI152 template (197x233x189) for the ``tiny`` preset (network
   alone, and through the serving ``VisionEngine`` with conforming and normalisation) and the
   ``paper`` preset; for the ``v2`` preset through the engine, encode + first generate and each
   further generate on the cached encoding apart.

Every configuration runs in a fresh subprocess so that its peak resident memory (``VmHWM``) is its
own. "Processing peak" = VmHWM minus the resident size just before processing started (model and
input already loaded), i.e. the memory the forward pass itself needed.

    .venv/bin/python -m bench.vision            # all configurations (~ several minutes on 2 cores)
    .venv/bin/python -m bench.vision --quick    # skip the slow paper-preset 1 mm run
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
from pathlib import Path

THICK_SHAPE = (256, 256, 30)
THICK_SPACING = (0.9, 0.9, 5.0)
ISO_MM = 0.9


def _rss_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak() -> None:
    """Reset VmHWM to the current RSS (Linux >= 4.0), so the peak measured is the forward's own."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def _mni_t1_path() -> Path:
    import nilearn

    return Path(nilearn.__file__).parent / "datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"


def _worker(name: str, repeats: int, warmup: int) -> dict:
    """Run one configuration in this (fresh) process and return its figures."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    from bench.common import time_median
    from vision.model import build_vision_net

    torch.manual_seed(0)
    phi_e, phi_g = torch.randn(32), torch.randn(32)

    if name in ("native", "isotropic"):
        net = build_vision_net("mid", min_spacing=None).eval()
        x = torch.rand(1, 1, *THICK_SHAPE)
        iso_shape = (*THICK_SHAPE[:2], round(THICK_SHAPE[2] * THICK_SPACING[2] / ISO_MM))

        def run():
            with torch.inference_mode():
                if name == "native":
                    enc = net.encode([x], [THICK_SPACING], [phi_e])
                    return torch.sigmoid(net.generate(enc, 0, phi_g))
                xi = F.interpolate(x, size=iso_shape, mode="trilinear", align_corners=False)
                enc = net.encode([xi], [(ISO_MM,) * 3], [phi_e])
                out = torch.sigmoid(net.generate(enc, 0, phi_g))
                return F.interpolate(out, size=THICK_SHAPE, mode="trilinear", align_corners=False)

        levels = net.plan(iso_shape if name == "isotropic" else THICK_SHAPE,
                          (ISO_MM,) * 3 if name == "isotropic" else THICK_SPACING).levels
        extra = {"levels_2d": sum(lvl.uses_2d_kernel for lvl in levels), "grid": list(levels[0].shape)}
    elif name in ("tiny_net", "paper_net"):
        import nibabel as nib

        net = build_vision_net("tiny" if name == "tiny_net" else "paper").eval()
        img = np.asarray(nib.load(_mni_t1_path()).dataobj, dtype=np.float32)
        img = (img - img.min()) / (img.max() - img.min())
        x = torch.from_numpy(img)[None, None]

        def run():
            with torch.inference_mode():
                enc = net.encode([x], [(1.0, 1.0, 1.0)], [phi_e])
                return torch.sigmoid(net.generate(enc, 0, phi_g))

        extra = {"grid": list(net.plan(x.shape[2:], (1.0, 1.0, 1.0)).working_shape)}
    elif name == "tiny_engine":
        from vision.engine import VisionEngine
        from voxel_ops import load_volume

        engine = VisionEngine(preset="tiny", device="cpu")
        vol = load_volume(_mni_t1_path())
        job = {"n": 0}

        def run():
            job["n"] += 1
            handle = engine.encode([vol], [phi_e.numpy()], job_id=f"bench-{job['n']}")
            out = engine.generate(handle, 0, phi_g.numpy())
            engine.release(handle.job_id)
            return out

        extra = {}
    elif name in ("v2_first", "v2_further"):
        # encode + one generate (what a first question costs), or one more generate on a cached
        # encoding (every further target of the same scan); weights do not change the cost
        from vision.engine import VisionEngine
        from voxel_ops import load_volume

        engine = VisionEngine(preset="v2", device="cpu", batch_window_ms=0.0)
        vol = load_volume(_mni_t1_path())
        job = {"n": 0}
        handle = engine.encode([vol], [phi_e.numpy()], job_id="bench-further")

        def run():
            job["n"] += 1
            if name == "v2_further":
                return engine.generate(handle, 0, (phi_g + job["n"]).numpy())
            h = engine.encode([vol], [phi_e.numpy()], job_id=f"bench-{job['n']}")
            out = engine.generate(h, 0, phi_g.numpy())
            engine.release(h.job_id)
            return out

        extra = {"grid": list(engine.net.plan(vol.shape, vol.spacing).working_shape)}
    else:
        raise SystemExit(f"unknown worker {name}")

    before_kb = _rss_kb("VmRSS")
    _reset_peak()
    import time

    cpu0 = time.process_time()
    median, samples = time_median(run, repeats=repeats, warmup=warmup)
    cpu_per_call = (time.process_time() - cpu0) / (repeats + warmup)
    peak_kb = _rss_kb("VmHWM")
    return {
        "seconds": median,
        "samples": samples,
        "cpu_s_per_call": cpu_per_call,  # CPU seconds summed over threads; less load-sensitive
        "peak_rss_mb": peak_kb / 1024,
        "processing_peak_mb": (peak_kb - before_kb) / 1024,
        "threads": torch.get_num_threads(),
        **extra,
    }


def _spawn(name: str, repeats: int, warmup: int, timeout: float) -> dict:
    cmd = [sys.executable, "-m", "bench.vision", "--worker", name, "--repeats", str(repeats),
           "--warmup", str(warmup)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    if done.returncode != 0:
        return {"error": (done.stderr or "").strip().splitlines()[-1:] or [f"exit {done.returncode}"]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="skip the paper-preset 1 mm run")
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(_worker(args.worker, args.repeats, args.warmup)))
        return 0

    import torch
    from tqdm import tqdm

    from bench.common import report

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    print(f"GPU: {gpu}" + ("" if torch.cuda.is_available() else " (no CUDA device in this session: CPU figures only)"))
    # (configuration, timed repeats, untimed warm-up calls); the slow ones run once, cold.
    plan = [("native", args.repeats, 1), ("isotropic", 2, 0),
            ("tiny_net", max(5, args.repeats), 1), ("tiny_engine", max(5, args.repeats), 1),
            ("v2_first", max(5, args.repeats), 1), ("v2_further", max(5, args.repeats), 1)]
    if not args.quick:
        plan.append(("paper_net", 1, 0))
    runs = {}
    for name, repeats, warmup in tqdm(plan, desc="vision bench", unit="config"):
        runs[name] = _spawn(name, repeats, warmup, timeout=1800)
        tqdm.write(f"{name}: {runs[name]}")

    def get(name, key):
        return runs.get(name, {}).get(key, math.nan)

    results: dict[str, float | int | str] = {
        "native_s": get("native", "seconds"),
        "isotropic_s": get("isotropic", "seconds"),
        "native_speedup": get("isotropic", "seconds") / get("native", "seconds"),
        "native_processing_peak_mb": get("native", "processing_peak_mb"),
        "isotropic_processing_peak_mb": get("isotropic", "processing_peak_mb"),
        "native_memory_ratio": get("isotropic", "processing_peak_mb") / get("native", "processing_peak_mb"),
        "native_peak_rss_mb": get("native", "peak_rss_mb"),
        "isotropic_peak_rss_mb": get("isotropic", "peak_rss_mb"),
        "native_total_rss_ratio": get("isotropic", "peak_rss_mb") / get("native", "peak_rss_mb"),
        "native_levels_2d": get("native", "levels_2d"),
        "tiny_1mm_s": get("tiny_net", "seconds"),
        "tiny_1mm_cpu_s": get("tiny_net", "cpu_s_per_call"),
        "tiny_1mm_engine_s": get("tiny_engine", "seconds"),
        "tiny_1mm_peak_rss_mb": get("tiny_net", "peak_rss_mb"),
        "v2_1mm_encode_generate_s": get("v2_first", "seconds"),
        "v2_1mm_further_generate_s": get("v2_further", "seconds"),
        "v2_1mm_peak_rss_mb": max(get("v2_first", "peak_rss_mb"), get("v2_further", "peak_rss_mb")),
        "paper_1mm_s": get("paper_net", "seconds"),
        "paper_1mm_peak_rss_mb": get("paper_net", "peak_rss_mb"),
        "bench_preset_native_vs_iso": "mid (no min spacing)",
        "gpu": gpu,
        "machine_loadavg_1m": os.getloadavg()[0],
    }
    for name, run in runs.items():
        if "error" in run:
            results[f"{name}_error"] = str(run["error"])
    goals = {
        "native_speedup": ">= 2",
        "native_memory_ratio": ">= 2.4",
        "tiny_1mm_s": "<= 1.5 s (2 CPU cores)",
        "v2_1mm_encode_generate_s": "<= 2 s (2 CPU cores)",
        "v2_1mm_further_generate_s": "<= 0.5 s",
        "v2_1mm_peak_rss_mb": "<= 3072",
    }
    report("vision", results, goals)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
