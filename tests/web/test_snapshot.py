"""Snapshots of output masks (issue 22): three planes through the centroid, outline, legend.

Counted in the image itself: the outline colour never occurs in the grey scan, so its pixels
are the overlay; an empty mask must give none (the legend draws no swatch then)."""
from __future__ import annotations

import io
from pathlib import Path

import nibabel as nib
import nilearn
import numpy as np
from PIL import Image

from service.png import OUTLINE_RGB, overlay_snapshot

MNI_T1 = Path(nilearn.__file__).parent / "datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"


def outline_pixels(png: bytes) -> tuple[Image.Image, int]:
    img = Image.open(io.BytesIO(png))
    assert img.format == "PNG"
    rgb = np.asarray(img.convert("RGB")).astype(int)
    hit = (np.abs(rgb - np.array(OUTLINE_RGB)).sum(axis=2) < 30)
    return img, int(hit.sum())


def test_snapshot_of_the_mni_template_has_three_planes_and_an_outline():
    img = nib.load(MNI_T1)
    scan = np.asarray(img.dataobj, dtype=np.float32)
    mask = np.zeros(scan.shape, np.uint8)
    mask[60:90, 120:150, 90:110] = 1  # a block: visible in all three planes through its centroid
    png = overlay_snapshot(scan, img.affine, mask, img.affine, name="block")
    image, red = outline_pixels(png)
    w, h = image.size
    assert 600 <= w <= 900 and 250 <= h <= 400, image.size  # three ~240 px panels side by side + legend
    assert len(png) < 400_000
    assert red > 300  # outlines in three panels
    rgb = np.asarray(image.convert("RGB")).astype(int)
    # every third of the picture (one panel each) has outline pixels
    thirds = [((np.abs(rgb[:, a:b] - np.array(OUTLINE_RGB)).sum(axis=2) < 30).sum())
              for a, b in ((0, w // 3), (w // 3, 2 * w // 3), (2 * w // 3, w))]
    assert all(t > 30 for t in thirds), thirds


def test_outline_lies_on_the_mask_and_empty_mask_has_none():
    rng = np.random.default_rng(0)
    scan = rng.uniform(0, 100, (30, 30, 30)).astype(np.float32)
    aff = np.diag([2.0, 2.0, 2.0, 1.0])
    mask = np.zeros(scan.shape, np.uint8)
    mask[10:20, 10:20, 10:20] = 1
    _, red = outline_pixels(overlay_snapshot(scan, aff, mask, aff, name="cube"))
    assert red > 0
    _, none = outline_pixels(overlay_snapshot(scan, aff, np.zeros_like(mask), aff, name="cube"))
    assert none == 0


def test_anisotropic_scan_is_not_squashed():
    """A 1 x 1 x 5 mm scan: the coronal panel is as tall as the axial one is deep (physical size)."""
    scan = np.random.default_rng(1).uniform(0, 1, (100, 100, 20)).astype(np.float32)
    aff = np.diag([1.0, 1.0, 5.0, 1.0])
    png = overlay_snapshot(scan, aff, None, name="none")
    image, red = outline_pixels(png)
    assert red == 0
    assert image.size[1] > 200  # 100 mm of height at 240 px per 100 mm, not 20 voxels
