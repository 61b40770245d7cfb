"""Snapshots of output masks: three orthogonal planes through the mask's centroid, the mask outlined
over its scan, and a legend (name, volume in mL).

A reviewer checks a segmentation by looking at it over the scan; one axial slice hides a mask that
leaks anteriorly or crosses the midline, so every snapshot shows axial, coronal and sagittal planes
through the same point. Planes are drawn in RAS order without resampling the volume (only the 2D
panel is scaled, by the voxel spacing, so a thick-slice scan is not squashed). Drawing uses Pillow,
which the service already depends on through highdicom; matplotlib is a benchmark-only extra.
"""
from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

OUTLINE_RGB = (255, 48, 48)  # pure-ish red: never produced by the grey scan, so tests can count it
PANEL_PX = 240  # the longest physical extent of the scan spans this many pixels in every panel
LEGEND_PX = 44


def _to_ras(array: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Reorder/flip axes to RAS (no interpolation); returns the array and its voxel spacing in mm."""
    import nibabel as nib

    ornt = nib.orientations.io_orientation(affine)
    spacing = np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0))
    ras_spacing = np.empty(3)
    for src_axis, (dst_axis, _flip) in enumerate(ornt):
        ras_spacing[int(dst_axis)] = spacing[src_axis]
    return nib.orientations.apply_orientation(array, ornt), ras_spacing


def _grey(plane: np.ndarray, lo: float, hi: float) -> np.ndarray:
    g = np.clip((np.nan_to_num(plane, nan=lo) - lo) / max(hi - lo, 1e-6), 0, 1) * 255
    return g.astype(np.uint8)


def _outline(mask: np.ndarray) -> np.ndarray:
    """Pixels of ``mask`` with a 4-neighbour outside it, thickened by one pixel so it reads at a glance."""
    from scipy import ndimage

    if not mask.any():
        return mask
    edge = mask & ~ndimage.binary_erosion(mask, border_value=0)
    return ndimage.binary_dilation(edge) & mask | edge


def _planes(img: np.ndarray, m: np.ndarray | None, centre: tuple[int, int, int], spacing: np.ndarray):
    """(title, grey plane, mask plane, (mm per column, mm per row)) for axial, coronal, sagittal.

    Display orientation: superior / anterior at the top; patient left on the image left (neurological,
    as NiiVue shows it by default); in the sagittal panel anterior is on the left."""
    i, j, k = centre
    out = []
    for title, take, axes in (("axial", lambda a: a[:, :, k], (0, 1)),
                              ("coronal", lambda a: a[:, j, :], (0, 2)),
                              ("sagittal", lambda a: a[i, :, :][::-1, :], (1, 2))):
        g = np.flipud(take(img).T)
        mp = np.flipud(take(m).T) if m is not None else None
        out.append((title, g, mp, (spacing[axes[0]], spacing[axes[1]])))
    return out


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: the bitmap font, one size
        return ImageFont.load_default()


def overlay_snapshot(scan: np.ndarray, scan_affine: np.ndarray, mask: np.ndarray | None,
                     mask_affine: np.ndarray | None = None, *, name: str | None = None) -> bytes:
    """PNG bytes: axial, coronal and sagittal planes through the mask's centroid, the mask's outline in
    ``OUTLINE_RGB``, and a legend with ``name`` and the mask's volume in mL. An empty or missing mask
    gives the planes through the scan's centre and a legend that says so (and no outline pixel)."""
    from PIL import Image, ImageDraw

    img, spacing = _to_ras(np.asarray(scan, dtype=np.float32), scan_affine)
    m = None
    if mask is not None and np.shape(mask) == np.shape(scan):
        m, _ = _to_ras(np.asarray(mask) > 0.5, mask_affine if mask_affine is not None else scan_affine)
    if m is not None and m.any():
        centre = tuple(int(round(c.mean())) for c in np.nonzero(m))
    else:
        centre = tuple(s // 2 for s in img.shape)
    finite = img[np.isfinite(img)]
    lo, hi = (np.percentile(finite, [1, 99]) if finite.size else (0.0, 1.0))
    px_per_mm = PANEL_PX / float(max(np.array(img.shape) * spacing))

    panels = []
    for title, g, mp, (col_mm, row_mm) in _planes(img, m, centre, spacing):  # type: ignore[arg-type]
        size = (max(1, round(g.shape[1] * col_mm * px_per_mm)), max(1, round(g.shape[0] * row_mm * px_per_mm)))
        grey = Image.fromarray(_grey(g, lo, hi), "L").resize(size, Image.Resampling.BILINEAR)
        rgb = np.repeat(np.asarray(grey)[..., None], 3, axis=2).copy()
        if mp is not None:
            mm = np.asarray(Image.fromarray(mp.astype(np.uint8) * 255, "L").resize(size, Image.Resampling.NEAREST))
            rgb[_outline(mm > 127)] = OUTLINE_RGB
        panels.append((title, Image.fromarray(rgb, "RGB")))

    gap = 6
    width = sum(p.width for _, p in panels) + gap * (len(panels) + 1)
    height = max(p.height for _, p in panels) + gap * 2 + LEGEND_PX
    canvas = Image.new("RGB", (width, height), (0, 0, 0))
    draw = ImageDraw.Draw(canvas)
    small = _font(11)
    x = gap
    for title, p in panels:
        canvas.paste(p, (x, gap))
        draw.text((x + 3, gap + 2), title, fill=(230, 230, 230), font=small)
        left, right = ("A", "P") if title == "sagittal" else ("L", "R")  # which side of the patient is where
        draw.text((x + 3, gap + p.height - 15), left, fill=(230, 230, 230), font=small)
        draw.text((x + p.width - 10, gap + p.height - 15), right, fill=(230, 230, 230), font=small)
        x += p.width + gap

    voxels = int(m.sum()) if m is not None else 0
    ml = voxels * float(abs(np.linalg.det(np.asarray(scan_affine)[:3, :3]))) / 1000.0
    label = name or "mask"
    y = height - LEGEND_PX + 8
    if voxels:
        draw.rectangle((gap, y + 4, gap + 16, y + 20), outline=OUTLINE_RGB, width=3)
        text = f"{label}: {ml:.2f} mL ({voxels} voxels)   centroid voxel (RAS) {centre}"
    else:
        text = f"{label}: empty mask (0 mL)" if m is not None else f"{label}: no mask on this grid"
    draw.text((gap + 24, y + 4), text, fill=(255, 255, 255), font=_font(14))
    buf = io.BytesIO()
    canvas.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def snapshot_name(artifact_id: str) -> str:
    """The artifact id of a mask's stored snapshot (beside the mask, same tenant directory)."""
    stem = artifact_id.removesuffix(".gz").removesuffix(".nii")
    return f"{stem}.snapshot.png"


def snapshot_of_files(mask_path: Path, scan_path: Path | None, name: str | None) -> bytes:
    """Render the snapshot of a stored mask over its stored scan (the mask alone when the grids differ)."""
    import nibabel as nib

    mask_img = nib.load(mask_path)
    mask = np.asarray(mask_img.dataobj)
    if scan_path is not None:
        scan_img = nib.load(scan_path)
        if len(scan_img.shape) == 3 and tuple(scan_img.shape) == mask.shape:
            scan = np.asarray(scan_img.dataobj, dtype=np.float32)
            return overlay_snapshot(scan, scan_img.affine, mask, mask_img.affine, name=name)
    log.info("snapshot without its scan (grids differ or scan missing)", extra={"mask": str(mask_path.name)})
    return overlay_snapshot(mask.astype(np.float32), mask_img.affine, mask, mask_img.affine, name=name)


def store_snapshot(records, artifacts, tenant: str, record) -> str:
    """Render the snapshot of an ArtifactRecord's mask and store it beside the mask; returns its artifact id."""
    import os

    from service.storage import VolumeRecord

    scan_record = records.get_record(VolumeRecord, record.source_volume_id or "", tenant)
    scan_path = artifacts.path(tenant, scan_record.artifact) if scan_record is not None else None
    png = snapshot_of_files(artifacts.path(tenant, record.id), scan_path, record.name)
    name = snapshot_name(record.id)
    dst = artifacts.path(tenant, name)
    tmp = dst.with_name(f".{dst.name}.part")
    tmp.write_bytes(png)
    os.replace(tmp, dst)
    return name
