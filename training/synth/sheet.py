"""PNG contact sheets of synthesized training scans, to check the generator by looking.

One row per sample: the middle slice of the image across its finest axes, and the label map over
it. The sheets are derived from the third-party label maps, so they are written to a folder of your
choice and not committed::

    python -m training.synth.sheet --out runs/sheets --samples 12 [--lesions 0.5] [--mni]

``--mni`` draws the MNI152 template's label map instead (training.synth.mni_synthseg), with the
same augmentation; the data folder still gives the intensity priors.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from training.synth.synthseg import CONTRASTS, DEFAULT_ROOT, LabelMaps, Priors, SynthSegGenerator, SynthSettings


def draw_sheet(gen: SynthSegGenerator, out: Path, samples: int, seed: int = 0, patch_mm: int | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rng = np.random.default_rng(seed)
    cols = 4
    rows = (samples + cols - 1) // cols
    fig, axes = plt.subplots(rows, 2 * cols, figsize=(4 * cols, 2.2 * rows))
    axes = np.atleast_2d(axes)
    for i in range(samples):
        s = gen.sample(rng, patch_mm=patch_mm, contrast=CONTRASTS[i % len(CONTRASTS)])
        thick = int(np.argmax(s.spacing))  # slice across the thick axis when there is one
        axis = thick if max(s.spacing) > 1 else 2
        k = s.image.shape[axis] // 2
        img = np.take(s.image.numpy(), k, axis=axis)
        lab = np.take(s.labels.numpy(), k, axis=axis).astype(float)
        lab = np.where(lab > 1000, 70.0, np.minimum(lab, 60.0))  # lesion parts in one bright colour
        ax_img, ax_lab = axes[i // cols, 2 * (i % cols)], axes[i // cols, 2 * (i % cols) + 1]
        ax_img.imshow(np.rot90(img), cmap="gray")
        ax_lab.imshow(np.rot90(lab), cmap="nipy_spectral", vmin=0, vmax=72, interpolation="nearest")
        ax_img.set_title(f"{s.contrast} {tuple(round(v, 1) for v in s.spacing)}"
                         + (" +lesion" if s.lesions else ""), fontsize=7)
    for ax in axes.ravel():
        ax.set_axis_off()
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=70)
    plt.close(fig)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.synth.sheet", description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="folder for the PNG sheets")
    parser.add_argument("--data", default=str(DEFAULT_ROOT))
    parser.add_argument("--samples", type=int, default=12)
    parser.add_argument("--lesions", type=float, default=0.5, help="share of samples with lesions")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--mni", action="store_true", help="sample the MNI152 template's label map")
    args = parser.parse_args(argv)
    try:
        if args.mni:
            from training.synth.mni_synthseg import MNILabelMaps

            maps: LabelMaps = MNILabelMaps()
        else:
            maps = LabelMaps(args.data)
        gen = SynthSegGenerator(maps, Priors(args.data), SynthSettings(lesion_probability=args.lesions))
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out)
    prefix = "mni" if args.mni else "synth"
    for name, patch in ((f"{prefix}_patches.png", 128), (f"{prefix}_whole.png", None)):
        path = draw_sheet(gen, out / name, args.samples, args.seed, patch)
        sys.stdout.write(f"{path}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
