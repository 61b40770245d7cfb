"""A corpus of malformed and hostile files, each refused with its own error class and bounded memory."""
from __future__ import annotations

import functools
import gzip
import io
import tracemalloc
from collections.abc import Callable

import nibabel as nib
import numpy as np
import pytest

import voxel_ops as vo

N1 = nib.nifti1.header_dtype
N2 = nib.nifti2.header_dtype


def _valid_bytes(array=None, affine=None, nifti2: bool = False) -> bytes:
    array = np.arange(8 * 9 * 10, dtype=np.int16).reshape(8, 9, 10) if array is None else array
    affine = np.diag([2.0, 2.0, 2.0, 1.0]) if affine is None else affine
    klass = nib.Nifti2Image if nifti2 else nib.Nifti1Image
    return klass(array, affine).to_bytes()


def _patched(raw: bytes, nifti2: bool = False, **fields) -> bytes:
    """Rewrite header fields in place, bypassing every nibabel sanity fix."""
    dtype = N2 if nifti2 else N1
    block = bytearray(raw)
    hdr = np.frombuffer(block, dtype=dtype, count=1)
    for name, value in fields.items():
        hdr[name] = value
    return bytes(block)


def _gz(data: bytes) -> bytes:
    return gzip.compress(data, compresslevel=1)


def _srow(affine):
    a = np.asarray(affine, dtype=float)
    return {"srow_x": a[0], "srow_y": a[1], "srow_z": a[2], "sform_code": 1}


def _dims(*shape):
    dim = [len(shape), *shape] + [1] * (7 - len(shape))
    return {"dim": dim}


def _float_with(value) -> bytes:
    arr = np.ones((6, 6, 6), dtype=np.float32)
    arr[2, 3, 4] = value
    return _valid_bytes(arr)


@functools.lru_cache(maxsize=1)
def _small_gzip_bomb(expand_mb: int = 160) -> bytes:
    """~0.2 MB of gzip that inflates to ``expand_mb`` MB: a valid tiny header, then endless zeros.

    Built from concatenated gzip members (legal gzip, read as one stream) so it is quick to make.
    """
    head = gzip.compress(_valid_bytes(np.zeros((4, 4, 4), dtype=np.uint8)))
    zeros = gzip.compress(bytes(1 << 20), compresslevel=9)
    return head + zeros * expand_mb


def _huge_declared_bomb() -> bytes:
    """A 2048^3 float64 claim (64 GB) with a few bytes behind it."""
    return _gz(_patched(_valid_bytes(), **_dims(2048, 2048, 2048), datatype=64, bitpix=64))


BASE = _valid_bytes()
BASE2 = _valid_bytes(nifti2=True)
FOUR_D = _valid_bytes(np.zeros((5, 5, 5, 3), dtype=np.int16))

# name -> (bytes factory, file name, expected error class)
CORPUS: dict[str, tuple[Callable[[], bytes], str, type[vo.VolumeError]]] = {
    "empty_file": (lambda: b"", "empty.nii", vo.NotNiftiError),
    "random_bytes": (lambda: np.random.default_rng(0).bytes(5000), "noise.nii", vo.NotNiftiError),
    "text_named_niigz": (lambda: b"<html>not an image</html>\n" * 40, "page.nii.gz", vo.NotNiftiError),
    "gzipped_text": (lambda: _gz(b"hello world\n" * 1000), "text.nii.gz", vo.NotNiftiError),
    "png_named_nii": (lambda: b"\x89PNG\r\n\x1a\n" + bytes(600), "image.nii", vo.NotNiftiError),
    "wrong_magic": (lambda: _patched(BASE, magic=b"xyz"), "magic.nii", vo.NotNiftiError),
    "pair_header_magic": (lambda: _patched(BASE, magic=b"ni1"), "pair.nii", vo.NotNiftiError),
    "wrong_sizeof_hdr": (lambda: _patched(BASE, sizeof_hdr=123), "size.nii", vo.NotNiftiError),
    "corrupt_gzip_stream": (
        lambda: (lambda g: g[:40] + bytes(b ^ 0x5A for b in g[40:80]) + g[80:])(_gz(BASE)),
        "corrupt.nii.gz",
        vo.NotNiftiError,
    ),
    "truncated_nii": (lambda: BASE[: len(BASE) - 300], "trunc.nii", vo.TruncatedDataError),
    "header_only": (lambda: BASE[:352], "hdr_only.nii", vo.TruncatedDataError),
    "truncated_gzip": (lambda: _gz(BASE)[:-200], "trunc.nii.gz", vo.TruncatedDataError),
    "gzip_bomb_trailing": (_small_gzip_bomb, "bomb.nii.gz", vo.SizeLimitError),
    "gzip_bomb_huge_dims": (_huge_declared_bomb, "huge.nii.gz", vo.SizeLimitError),
    "dim_over_2048": (lambda: _patched(BASE, **_dims(4000, 9, 10)), "wide.nii", vo.SizeLimitError),
    "too_many_voxels": (lambda: _patched(BASE, **_dims(2048, 2048, 64)), "many.nii", vo.SizeLimitError),
    "nifti2_huge_dims": (lambda: _patched(BASE2, nifti2=True, **_dims(10**9, 10**9, 10)), "n2huge.nii",
                         vo.SizeLimitError),
    "two_d": (lambda: _patched(BASE, **_dims(8, 90)), "flat.nii", vo.DimensionError),
    "five_d": (lambda: _patched(BASE, **_dims(2, 3, 4, 5, 6)), "five.nii", vo.DimensionError),
    "real_4d_without_frame": (lambda: FOUR_D, "series.nii", vo.DimensionError),
    "zero_sized_axis": (lambda: _patched(BASE, **_dims(8, 0, 10)), "zero.nii", vo.DimensionError),
    "negative_dim": (lambda: _patched(BASE, **_dims(8, -9, 10)), "neg.nii", vo.DimensionError),
    "dim0_out_of_range": (lambda: _patched(BASE, dim=[9, 8, 9, 10, 1, 1, 1, 1]), "dim0.nii", vo.HeaderError),
    "singular_affine": (
        lambda: _patched(BASE, **_srow([[2, 2, 0, 0], [0, 0, 0, 0], [0, 0, 2, 0]])),
        "singular.nii",
        vo.AffineError,
    ),
    "parallel_axes_affine": (
        lambda: _patched(BASE, **_srow([[2, 2, 0, 0], [0, 0.001, 0, 0], [0, 0, 2, 0]])),
        "parallel.nii",
        vo.AffineError,
    ),
    "nan_affine": (lambda: _patched(BASE, **_srow([[np.nan, 0, 0, 0], [0, 2, 0, 0], [0, 0, 2, 0]])), "nan_aff.nii",
                   vo.AffineError),
    "inf_affine": (lambda: _patched(BASE, **_srow([[2, 0, 0, np.inf], [0, 2, 0, 0], [0, 0, 2, 0]])), "inf_aff.nii",
                   vo.AffineError),
    "absurd_spacing": (lambda: _patched(BASE, **_srow(np.diag([1000.0, 2, 2, 1]))), "giant.nii", vo.SpacingError),
    "tiny_spacing": (lambda: _patched(BASE, **_srow(np.diag([0.001, 2, 2, 1]))), "tiny.nii", vo.SpacingError),
    "zero_pixdim_qform_only": (
        lambda: _patched(BASE, sform_code=0, qform_code=1, pixdim=[1, 0, 2, 2, 1, 1, 1, 1]),
        "zeropix.nii",
        vo.SpacingError,
    ),
    "nan_data": (lambda: _float_with(np.nan), "nan.nii", vo.NonFiniteError),
    "inf_data": (lambda: _gz(_float_with(-np.inf)), "inf.nii.gz", vo.NonFiniteError),
    "inf_scl_slope": (lambda: _patched(BASE, scl_slope=np.inf), "slope.nii", vo.HeaderError),
    "inf_scl_inter": (lambda: _patched(BASE, scl_slope=2.0, scl_inter=-np.inf), "inter.nii", vo.HeaderError),
    "unknown_datatype": (lambda: _patched(BASE, datatype=9999), "dtype.nii", vo.DataTypeError),
    "complex_datatype": (lambda: _valid_bytes(np.ones((4, 4, 4), dtype=np.complex64)), "complex.nii", vo.DataTypeError),
    "rgb_datatype": (lambda: _patched(BASE, datatype=128, bitpix=24), "rgb.nii", vo.DataTypeError),
    "vox_offset_inside_header": (lambda: _patched(BASE, vox_offset=100), "off_low.nii", vo.HeaderError),
    "vox_offset_far_away": (lambda: _patched(BASE, vox_offset=3e9), "off_high.nii", vo.HeaderError),
    "vox_offset_nan": (lambda: _patched(BASE, vox_offset=np.nan), "off_nan.nii", vo.HeaderError),
    "vox_offset_fractional": (lambda: _patched(BASE, vox_offset=352.5), "off_frac.nii", vo.HeaderError),
    "trailing_data": (lambda: _gz(BASE + bytes(5000)), "tail.nii.gz", vo.SizeLimitError),
    "nifti2_truncated": (lambda: BASE2[:-50], "n2trunc.nii", vo.TruncatedDataError),
}

_BOUND_MB = {"gzip_bomb_trailing": 8.0, "gzip_bomb_huge_dims": 8.0, "nifti2_huge_dims": 8.0, "too_many_voxels": 8.0}


def test_corpus_is_large_enough():
    assert len(CORPUS) >= 25


@pytest.mark.parametrize("case", sorted(CORPUS))
def test_hostile_file_is_refused_with_its_class(case, tmp_path):
    factory, name, expected = CORPUS[case]
    data = factory()
    path = tmp_path / name
    path.write_bytes(data)
    tracemalloc.start()
    try:
        with pytest.raises(expected) as info:
            vo.load_volume(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert isinstance(info.value, vo.VolumeError) and isinstance(info.value, ValueError)
    message = str(info.value)
    assert name in message and len(message) > len(name) + 10  # names the file and says why
    assert peak / 1e6 < _BOUND_MB.get(case, 16.0), f"refusing {case} allocated {peak / 1e6:.1f} MB"


def test_gzip_bomb_is_small_on_disk_but_huge_inflated():
    bomb = _small_gzip_bomb()
    assert len(bomb) < 1_000_000
    with gzip.GzipFile(fileobj=io.BytesIO(bomb)) as stream:
        inflated = sum(len(stream.read(1 << 22)) for _ in range(40))
    assert inflated > 100_000_000


def test_the_untampered_bases_load(tmp_path):
    for name, raw in {"base.nii": BASE, "base.nii.gz": _gz(BASE), "base2.nii": BASE2}.items():
        (tmp_path / name).write_bytes(raw)
        vol = vo.load_volume(tmp_path / name)
        assert vol.shape == (8, 9, 10) and vol.spacing == (2.0, 2.0, 2.0)
        assert np.array_equal(vol.array, np.arange(720, dtype=np.int16).reshape(8, 9, 10))


def test_nonfinite_can_be_zeroed_and_is_reported(tmp_path):
    path = tmp_path / "nan.nii"
    path.write_bytes(_float_with(np.nan))
    vol, report = vo.load_volume_with_report(path, nonfinite="zero")
    assert report.nonfinite_count == 1 and report.nonfinite_action == "zeroed"
    assert np.isfinite(vol.array).all() and vol.array[2, 3, 4] == 0 and vol.array[0, 0, 0] == 1


def test_a_frame_of_a_4d_series_can_be_chosen(tmp_path):
    series = np.stack([np.full((5, 5, 5), i, dtype=np.int16) for i in range(3)], axis=-1)
    path = tmp_path / "series.nii.gz"
    path.write_bytes(_gz(_valid_bytes(series)))
    vol, report = vo.load_volume_with_report(path, frame=2)
    assert report.frame == 2 and np.all(vol.array == 2)
    with pytest.raises(vo.DimensionError):
        vo.load_volume(path, frame=3)


def test_singleton_fourth_axis_is_squeezed(tmp_path):
    path = tmp_path / "single.nii"
    path.write_bytes(_valid_bytes(np.ones((4, 5, 6, 1), dtype=np.uint8)))
    vol, report = vo.load_volume_with_report(path)
    assert vol.shape == (4, 5, 6) and report.squeezed_axes == 1


def test_configurable_voxel_limit(tmp_path):
    path = tmp_path / "ok.nii"
    path.write_bytes(BASE)
    with pytest.raises(vo.SizeLimitError):
        vo.load_volume(path, limits=vo.ReadLimits(max_voxels=500))


def test_scaling_is_applied(tmp_path):
    path = tmp_path / "scaled.nii"
    path.write_bytes(_patched(BASE, scl_slope=0.5, scl_inter=10.0))
    vol, report = vo.load_volume_with_report(path)
    assert report.scaled and vol.array.dtype == np.float32
    assert vol.array[1, 0, 0] == pytest.approx(90 * 0.5 + 10.0)


def test_missing_path_is_a_typed_error(tmp_path):
    with pytest.raises(vo.VolumeFileNotFoundError):
        vo.load_volume(tmp_path / "nope.nii.gz")
    with pytest.raises(vo.VolumeFileNotFoundError):
        vo.load_volume(tmp_path)


def test_masks_are_written_as_uint8(tmp_path):
    mask = vo.Volume(np.zeros((4, 4, 4), dtype=bool), np.diag([1.5, 1.5, 1.5, 1.0]))
    path = vo.save_volume(mask, tmp_path / "mask.nii.gz")
    img = nib.load(path)
    assert img.get_data_dtype() == np.uint8 and np.allclose(img.affine, mask.affine)
    assert int(img.header["sform_code"]) == 1 and int(img.header["qform_code"]) == 1


def test_bytes_in_memory_get_the_same_checks():
    vol, _ = vo.load_volume_from_bytes(_gz(BASE), name="upload.nii.gz")
    assert vol.shape == (8, 9, 10)
    with pytest.raises(vo.TruncatedDataError):
        vo.load_volume_from_bytes(BASE[:-1], name="upload.nii")
