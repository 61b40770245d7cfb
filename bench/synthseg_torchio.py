"""Our SynthSeg-style generator against TorchIO's transforms for the same steps, side by side.

The issue asks to use TorchIO where it is fast enough. Both pipelines turn one real label map
(128 mm patch, 1 mm) into an image: per-class Gaussian intensities, bias field, random affine +
elastic deformation, blur/downsampling to 5 mm slices. TorchIO: ``RandomAffine``,
``RandomElasticDeformation``, ``RandomLabelsToImage``, ``RandomBiasField``, ``RandomAnisotropy``
(benchmark-only dependency, ``pip install torchio``). Ours: ``SynthSegGenerator.sample``. One thread
each, medians of repeated calls in one run::

    .venv/bin/python -m bench.synthseg_torchio
"""
from __future__ import annotations

import argparse
import sys

import numpy as np
import torch

from bench.common import report, time_median


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.synthseg_torchio", description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--data", default=None, help="SynthSeg folder (default ../shared/data/synthseg)")
    args = parser.parse_args(argv)
    try:
        import torchio as tio
    except ImportError:
        print("error: pip install torchio (benchmark-only dependency)", file=sys.stderr)
        return 2
    from training.synth.synthseg import DEFAULT_ROOT, LabelMaps, Priors, SynthSegGenerator

    torch.set_num_threads(1)
    root = args.data or DEFAULT_ROOT
    maps = LabelMaps(root, ["training_seg_01"])
    gen = SynthSegGenerator(maps, Priors(root))
    rng = np.random.default_rng(0)
    lo, hi = maps.brain_boxes[0]
    c = ((lo + hi) / 2).astype(int)
    patch = maps.maps[0][c[0] - 64:c[0] + 64, c[1] - 64:c[1] + 64, c[2] - 64:c[2] + 64].clone()
    subject = tio.Subject(label=tio.LabelMap(tensor=patch[None].to(torch.int64)))
    pipeline = tio.Compose([
        tio.RandomAffine(scales=0.15, degrees=15, image_interpolation="nearest"),
        tio.RandomElasticDeformation(num_control_points=5, max_displacement=3),
        tio.RandomLabelsToImage(label_key="label", image_key="image"),
        tio.RandomBiasField(coefficients=0.5),
        tio.RandomAnisotropy(downsampling=5, axes=(0, 1, 2)),
    ])

    def ours():
        return gen.sample(rng, patch_mm=128, thick=True, slice_mm=5)

    def theirs():
        return pipeline(subject)

    ours_s, _ = time_median(ours, repeats=args.repeats)
    theirs_s, _ = time_median(theirs, repeats=args.repeats)
    results: dict[str, float | int | str] = {
        "ours_s_per_sample": round(ours_s, 4),
        "torchio_s_per_sample": round(theirs_s, 4),
        "torchio_over_ours": round(theirs_s / ours_s, 2),
        "patch": "128^3 1 mm -> 5 mm slices",
        "torchio_version": tio.__version__,
        "threads": 1,
    }
    report("synthseg_torchio", results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
