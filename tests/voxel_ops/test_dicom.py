"""DICOM series in: geometry round trips, metadata, every refusal, hostile archives, real files, the CLI."""
from __future__ import annotations

import json
import logging
import re
import shutil
import struct
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path

import nibabel as nib
import nilearn
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.encaps import encapsulate
from pydicom.uid import generate_uid

import voxel_ops as vo
import voxel_ops.dicom as vdicom
from tests.voxel_ops.dicom_writer import (
    PHI,
    affine_from,
    expected_volume,
    rotation,
    write_enhanced_mr,
    write_series,
)

MNI_T1 = Path(nilearn.__file__).parent / "datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
ATOL_MM = 1e-4


def assert_no_phi(text: str) -> None:
    for value in PHI.values():
        assert value not in text and value.split("^")[0] not in text, f"identifier {value!r} leaked: {text}"
    # the birth year in any date format; not digits inside a random UID (seen: "...104167909519660")
    assert re.search(r"(?<![\d.])1966(?!\d)", text) is None, text


def small_stored(shape=(20, 24, 9), seed=1, dtype=np.int16) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 3000, size=shape).astype(dtype)


def assert_round_trip(vol: vo.Volume, stored: np.ndarray, affine: np.ndarray, slope=1.0, intercept=0.0) -> None:
    want_array, want_affine = expected_volume(stored.astype(np.float64) * slope + intercept, affine)
    assert vol.shape == want_array.shape
    np.testing.assert_allclose(vol.affine, want_affine, atol=ATOL_MM, rtol=0)
    np.testing.assert_allclose(vol.array.astype(np.float64), want_array, rtol=1e-6, atol=1e-4 * max(1.0, slope))


@pytest.fixture()
def good_series(tmp_path):
    stored = small_stored()
    affine = affine_from(np.eye(3), (0.9, 1.1, 3.0), (-10.0, 20.0, 5.0))
    folder = tmp_path / "series"
    write_series(stored, affine, folder / "DOE^JANE")  # a patient-named subfolder, as exports often make
    return folder, stored, affine


# --------------------------------------------------------------------------- round trips


def test_mni_template_round_trips(tmp_path):
    img = nib.load(MNI_T1)
    data = np.asarray(img.dataobj, dtype=np.float64)
    slope, intercept = 0.01, -5.0
    stored = np.round((data - intercept) / slope).astype(np.int32)
    assert stored.max() < 2**15 and stored.min() >= -(2**15)
    stored = stored.astype(np.int16)
    write_series(stored, img.affine, tmp_path / "mni", slope=slope, intercept=intercept,
                 description="t1_mprage_sag_p2_iso")
    vol = vo.load_dicom(tmp_path / "mni")
    assert_round_trip(vol, stored, img.affine, slope, intercept)
    assert vol.array.dtype == np.float32
    assert vol.orientation == ("R", "A", "S")
    nifti = vo.load_volume(MNI_T1)
    np.testing.assert_allclose(vol.affine, nifti.affine, atol=ATOL_MM, rtol=0)
    np.testing.assert_allclose(vol.array, nifti.array, atol=slope / 2 + 1e-4)
    assert vol.meta.modality == "T1" and vol.meta.acquisition_date == "2024-03-02"
    assert vol.meta.series_description == "t1_mprage_sag_p2_iso"


AXIAL = affine_from(np.diag([-1.0, -1.0, 1.0]), (0.9, 0.9, 3.0), (60.0, 80.0, -20.0))  # LPS-stored axial
AXIAL_RAS = affine_from(np.eye(3), (0.8, 1.3, 2.5), (-40.0, -50.0, 10.0))
SAGITTAL = affine_from(np.array([[0, 0, 1], [1, 0, 0], [0, -1, 0]], dtype=float), (1.0, 1.0, 1.2), (-50, -60, 70))
CORONAL = affine_from(np.array([[1, 0, 0], [0, 0, -1], [0, -1, 0]], dtype=float), (0.7, 0.7, 4.0), (-30, 40, 50))
OBLIQUE = affine_from(rotation(0.3, -0.2, 0.5), (0.85, 1.15, 3.3), (12.3, -45.6, 7.8))
OBLIQUE_SAG = affine_from(rotation(0.1, 1.3, -0.25), (1.0, 0.6, 5.0), (-77.7, 11.1, 22.2))


@pytest.mark.parametrize("affine", [AXIAL, AXIAL_RAS, SAGITTAL, CORONAL, OBLIQUE, OBLIQUE_SAG],
                         ids=["axial-lps", "axial-ras-aniso", "sagittal", "coronal", "oblique", "oblique-sag"])
def test_synthetic_orientations_round_trip(tmp_path, affine):
    stored = small_stored((17, 23, 11), seed=2)
    write_series(stored, affine, tmp_path / "s", seed=7)
    vol = vo.load_dicom(tmp_path / "s")
    assert_round_trip(vol, stored, affine)
    assert vol.array.dtype == np.int16 and vol.meta.modality == "T1"
    # the world position of every voxel matches the NIfTI-style source, whichever way slices were sorted
    src = vo.Volume(stored, affine)
    ijk = np.array([[0, 0, 0], [16, 22, 10], [3, 5, 7]])
    for p in ijk:
        world = src.voxel_to_world(p)
        q = np.round(vol.world_to_voxel(world)).astype(int)
        assert vol.array[tuple(q)] == stored[tuple(p)]


def test_slice_reversed_series_is_sorted_along_the_normal(tmp_path):
    # slice k goes *against* the plane normal: the reader must reverse the stack (as dcm2niix does)
    affine = affine_from(np.diag([1.0, 1.0, -1.0]), (1.0, 1.0, 2.0), (0, 0, 40))
    stored = small_stored((8, 9, 6), seed=3)
    write_series(stored, affine, tmp_path / "s")
    vol = vo.load_dicom(tmp_path / "s")
    assert_round_trip(vol, stored, affine)
    assert vol.affine[2, 2] == pytest.approx(2.0)  # now increasing along the normal


def test_spacing_from_positions_not_slice_thickness(tmp_path):
    affine = affine_from(np.eye(3), (0.5, 0.75, 4.4), (0, 0, 0))
    stored = small_stored((6, 7, 5))
    write_series(stored, affine, tmp_path / "s")  # the writer puts SliceThickness = 0.8 * spacing
    assert float(pydicom.dcmread(next((tmp_path / "s").iterdir())).SliceThickness) == pytest.approx(3.52)
    vol = vo.load_dicom(tmp_path / "s")
    assert vol.spacing == pytest.approx((0.5, 0.75, 4.4), abs=1e-6)


def test_pixel_spacing_row_column_order(tmp_path):
    # PixelSpacing = [between rows, between columns]; columns (array axis 0) are 0.5 mm, rows 2 mm apart
    affine = affine_from(np.eye(3), (0.5, 2.0, 3.0), (0, 0, 0))
    stored = small_stored((10, 4, 3))
    write_series(stored, affine, tmp_path / "s")
    ds = pydicom.dcmread(next((tmp_path / "s").iterdir()))
    assert [float(v) for v in ds.PixelSpacing] == [2.0, 0.5] and (ds.Rows, ds.Columns) == (4, 10)
    vol = vo.load_dicom(tmp_path / "s")
    assert vol.shape == (10, 4, 3) and vol.spacing == pytest.approx((0.5, 2.0, 3.0))


def test_gantry_tilt_keeps_exact_positions(tmp_path):
    affine = affine_from(np.eye(3), (1.0, 1.0, 3.0), (0, 0, 0))
    affine[:3, 2] = [0.0, 0.4, 3.0]  # slices shifted along A as they go up: a sheared stack
    stored = small_stored((6, 6, 5))
    write_series(stored, affine, tmp_path / "s", modality="CT", description="HEAD", intercept=-1024)
    vol = vo.load_dicom(tmp_path / "s")
    assert_round_trip(vol, stored, affine, 1.0, -1024)
    assert vol.meta.modality == "CT" and np.issubdtype(vol.array.dtype, np.integer)


def test_rescale_slope_intercept_and_ct_integers(tmp_path):
    stored = small_stored((5, 6, 4), dtype=np.uint16)
    write_series(stored, AXIAL, tmp_path / "ct", modality="CT", description="CT HEAD", intercept=-1024.0)
    ct = vo.load_dicom(tmp_path / "ct")
    assert ct.array.dtype == np.int16 and ct.meta.modality == "CT"
    assert_round_trip(ct, stored, AXIAL, 1.0, -1024.0)
    write_series(stored, AXIAL, tmp_path / "mr", slope=0.25, intercept=3.5, description="pd")
    mr = vo.load_dicom(tmp_path / "mr")
    assert mr.array.dtype == np.float32
    assert_round_trip(mr, stored, AXIAL, 0.25, 3.5)


def test_enhanced_multiframe_mr(tmp_path):
    stored = small_stored((12, 10, 7), seed=5)
    path = write_enhanced_mr(stored, OBLIQUE, tmp_path / "enh" / "multiframe.dcm", slope=0.5, intercept=10.0,
                             frame_order=[3, 0, 6, 2, 5, 1, 4])
    for source in (path, path.parent):  # the file itself, or its folder
        vol = vo.load_dicom(source)
        assert_round_trip(vol, stored, OBLIQUE, 0.5, 10.0)
        assert vol.meta.modality == "FLAIR" and vol.meta.acquisition_date == "2024-03-02"
    per_frame = write_enhanced_mr(stored, SAGITTAL, tmp_path / "enh2.dcm", slope=2.0, intercept=-1.0,
                                  per_frame_scaling=True, description="ep2d_diff ADC")
    vol = vo.load_dicom(per_frame)
    assert_round_trip(vol, stored, SAGITTAL, 2.0, -1.0)
    assert vol.meta.modality == "ADC"
    assert vo.is_dicom_source(per_frame) and vo.load_scan(per_frame).same_grid(vol)


def test_zip_round_trip_and_load_scan(good_series, tmp_path):
    folder, stored, affine = good_series
    archive = tmp_path / "series.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for f in sorted(folder.rglob("*.dcm")):
            zf.write(f, f.relative_to(folder).as_posix())
        zf.writestr("README.txt", "not dicom")
    for source in (folder, archive):
        vol = vo.load_scan(source)
        assert_round_trip(vol, stored, affine)
        assert vol.meta.source_name == pydicom.dcmread(next(folder.rglob("*.dcm"))).SeriesInstanceUID
    # a user's modality wins over the header; a NIfTI still reads as before
    assert vo.load_scan(archive, meta=vo.VolumeMeta(modality="T2")).meta.modality == "T2"
    assert vo.load_scan(MNI_T1).shape == (197, 233, 189)


# --------------------------------------------------------------------------- metadata


@pytest.mark.parametrize("attrs,expected", [
    ({"SeriesDescription": "t1_mprage_sag_p2_iso"}, "T1"),
    ({"SeriesDescription": "T1 MPRAGE POST GAD"}, "T1C"),
    ({"SeriesDescription": "AX T1 +C"}, "T1C"),
    ({"SeriesDescription": "t1_se_tra", "ContrastBolusAgent": "Gadovist"}, "T1C"),
    ({"SeriesDescription": "SAG T1 FLAIR"}, "T1"),
    ({"SeriesDescription": "t2_tirm_tra_dark-fluid"}, "FLAIR"),
    ({"SeriesDescription": "AX T2 FLAIR"}, "FLAIR"),
    ({"SeriesDescription": "t2_tse_tra"}, "T2"),
    ({"SeriesDescription": "ep2d_diff_3scan_trace_p2_ADC"}, "ADC"),
    ({"SeriesDescription": "ep2d_diff_3scan_trace_p2"}, "DWI"),
    ({"SeriesDescription": "DWI b1000"}, "DWI"),
    ({"SeriesDescription": "SWI_Images"}, "SWI"),
    ({"ProtocolName": "AX SWAN"}, "SWI"),
    ({"SequenceName": "*tfl3d1_16ns"}, "T1"),
    ({"ScanningSequence": "SE", "RepetitionTime": 4000, "EchoTime": 100}, "T2"),
    ({"ScanningSequence": "IR", "RepetitionTime": 9000, "EchoTime": 120, "InversionTime": 2500}, "FLAIR"),
    ({"ScanningSequence": "GR", "RepetitionTime": 8, "EchoTime": 3}, "T1"),
    ({"SeriesDescription": "localizer"}, "MR"),
])
def test_mr_sequence_mapping(attrs, expected):
    ds = pydicom.Dataset()
    ds.Modality = "MR"
    for k, v in attrs.items():
        setattr(ds, k, v)
    assert vo.classify_sequence(ds) == expected


def test_ct_and_other_modalities():
    for modality, want in (("CT", "CT"), ("PT", "PET"), ("US", "US")):
        ds = pydicom.Dataset()
        ds.Modality = modality
        assert vo.classify_sequence(ds) == want


def test_list_series_and_choose_one(tmp_path):
    stored = small_stored((6, 7, 5))
    t1 = write_series(stored, AXIAL, tmp_path / "study" / "a", description="t1_mprage", SeriesNumber=2)
    write_series(stored[:, :, :4] + 1, OBLIQUE, tmp_path / "study" / "b", description="AX FLAIR", SeriesNumber=5)
    sr = pydicom.dcmread(get_testdata_file("test-SR.dcm"))
    sr.save_as(tmp_path / "study" / "report.dcm")
    series = vo.list_dicom_series(tmp_path / "study")
    assert [(s.index, s.series_number, s.sequence, s.frames, s.is_image) for s in series] == [
        (0, 1, "SR", 0, False), (1, 2, "T1", 5, True), (2, 5, "FLAIR", 4, True)]  # by SeriesNumber
    assert series[1].acquisition_date == "2024-03-02" and (series[1].rows, series[1].columns) == (7, 6)
    assert_no_phi(repr(series))
    with pytest.raises(vo.MixedSeriesError) as err:
        vo.load_dicom(tmp_path / "study")
    msg = str(err.value)
    assert "2 image series" in msg and "t1_mprage" in msg and "AX FLAIR" in msg and "choose one" in msg
    assert_no_phi(msg)
    by_index = vo.load_dicom(tmp_path / "study", series=2)
    assert by_index.shape == (6, 7, 4) and by_index.meta.modality == "FLAIR"
    uid = pydicom.dcmread(t1[0]).SeriesInstanceUID
    by_uid = vo.load_dicom(tmp_path / "study", series=uid)
    assert by_uid.meta.source_name == uid and by_uid.shape == (6, 7, 5)
    with pytest.raises(vo.SeriesNotFoundError, match="index 7"):
        vo.load_dicom(tmp_path / "study", series=7)
    with pytest.raises(vo.SeriesNotFoundError, match="no series with SeriesInstanceUID"):
        vo.load_dicom(tmp_path / "study", series="1.2.3")
    with pytest.raises(vo.NonImageDicomError, match="structured report"):
        vo.load_dicom(tmp_path / "study", series=0)
    # one image series next to a report: the image series is read, nothing is mixed
    shutil.rmtree(tmp_path / "study" / "b")
    assert vo.load_dicom(tmp_path / "study").meta.source_name == uid


# --------------------------------------------------------------------------- refusals


def refusal(exc_type, source, caplog, **kwargs) -> str:
    with caplog.at_level(logging.DEBUG), pytest.raises(exc_type) as err:  # every logger, pydicom's included
        vo.load_dicom(source, **kwargs)
    msg = str(err.value)
    assert_no_phi(msg)
    assert_no_phi(caplog.text)
    assert isinstance(err.value, vo.DicomError) or isinstance(err.value, vo.VolumeError)
    return msg


def test_malformed_patient_attributes_are_never_decoded(good_series, caplog):
    """pydicom logs a malformed value it decodes; the reader never decodes patient attributes at all."""
    folder, stored, affine = good_series
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for p in folder.rglob("*.dcm"):
            ds = pydicom.dcmread(p)
            ds.PatientBirthDate = "1966-04-12 (DOE^JANE)"  # not a valid DA: decoding it would log a warning
            ds.PatientID = "PID-0042-SECRET" * 10  # longer than LO allows
            ds.save_as(p)
            if int(ds.InstanceNumber) == 5:
                middle = p
    caplog.clear()  # writing those values logged them (pydicom validates on assignment); reading must not
    with caplog.at_level(logging.DEBUG):
        vol = vo.load_dicom(folder)
        vo.list_dicom_series(folder)
    assert_round_trip(vol, stored, affine)
    middle.unlink()
    assert "missing" in refusal(vo.MissingSliceError, folder, caplog)
    assert_no_phi(caplog.text)


def test_missing_slice(good_series, caplog):
    folder, _, _ = good_series
    files = sorted(folder.rglob("*.dcm"), key=lambda p: int(pydicom.dcmread(p).InstanceNumber))
    files[4].unlink()
    msg = refusal(vo.MissingSliceError, folder, caplog)
    assert "1 slice(s) missing" in msg and "6.000 mm" in msg and "3.000 mm apart" in msg


def test_duplicate_positions(good_series, caplog):
    folder, _, _ = good_series
    src = next(folder.rglob("*.dcm"))
    ds = pydicom.dcmread(src)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.save_as(src.parent / "copy.dcm")
    msg = refusal(vo.DuplicateSliceError, folder, caplog)
    assert "2 slices at the same position" in msg and "echoes" in msg


def test_inconsistent_orientation(good_series, caplog):
    folder, _, _ = good_series
    path = sorted(folder.rglob("*.dcm"))[3]
    ds = pydicom.dcmread(path)
    ds.ImageOrientationPatient = [1, 0, 0, 0, 0.9848, 0.1736]
    ds.save_as(path)
    msg = refusal(vo.InconsistentGeometryError, folder, caplog)
    assert "2 different orientations" in msg and "localizer" in msg


def test_inconsistent_pixel_spacing(good_series, caplog):
    folder, _, _ = good_series
    path = sorted(folder.rglob("*.dcm"))[2]
    ds = pydicom.dcmread(path)
    ds.PixelSpacing = [1.5, 0.9]
    ds.save_as(path)
    assert "different PixelSpacing" in refusal(vo.InconsistentGeometryError, folder, caplog)


def test_uneven_slice_spacing(good_series, caplog):
    folder, _, _ = good_series
    for path in folder.rglob("*.dcm"):
        ds = pydicom.dcmread(path)
        if int(ds.InstanceNumber) > 5:
            z = [float(v) for v in ds.ImagePositionPatient]
            ds.ImagePositionPatient = [z[0], z[1], z[2] + 1.3]
            ds.save_as(path)
    msg = refusal(vo.InconsistentGeometryError, folder, caplog)
    assert "uneven slice spacing" in msg and "4.300 mm" in msg


def test_different_matrix_sizes(tmp_path, caplog):
    uid = generate_uid()
    write_series(small_stored((6, 7, 3)), AXIAL, tmp_path / "s", series_uid=uid, seed=None)
    far = AXIAL.copy()
    far[:3, 3] += AXIAL[:3, 2] * 3
    write_series(small_stored((8, 7, 3)), far, tmp_path / "s" / "more", series_uid=uid, seed=None)
    assert "different matrix sizes" in refusal(vo.InconsistentGeometryError, tmp_path / "s", caplog)


def test_missing_geometry(good_series, caplog):
    folder, _, _ = good_series
    path = sorted(folder.rglob("*.dcm"))[1]
    ds = pydicom.dcmread(path)
    del ds.ImagePositionPatient
    ds.save_as(path)
    assert "lack ImagePositionPatient" in refusal(vo.DicomHeaderError, folder, caplog)


def test_empty_and_non_dicom_folders(tmp_path, caplog):
    (tmp_path / "empty").mkdir()
    assert "no files" in refusal(vo.NoDicomFilesError, tmp_path / "empty", caplog)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "README.txt").write_text("hello")
    (tmp_path / "other" / "scan.nii").write_bytes(b"\x5c\x01" + b"\x00" * 400)
    assert "none of them DICOM" in refusal(vo.NoDicomFilesError, tmp_path / "other", caplog)
    with pytest.raises(vo.VolumeFileNotFoundError):
        vo.load_dicom(tmp_path / "nothing-here")


def test_non_image_objects(tmp_path, caplog):
    for name, words in (("test-SR.dcm", "structured report"), ("rtstruct.dcm", "RT structure set")):
        (tmp_path / name).mkdir()
        shutil.copy(get_testdata_file(name), tmp_path / name / "x.dcm")
        assert words in refusal(vo.NonImageDicomError, tmp_path / name, caplog)
    seg = write_series(small_stored((4, 4, 2)), AXIAL, tmp_path / "seg", modality="SEG", description="seg")
    assert seg and "segmentation (SEG)" in refusal(vo.NonImageDicomError, tmp_path / "seg", caplog)
    # an image header whose PixelData is gone
    paths = write_series(small_stored((4, 4, 2)), AXIAL, tmp_path / "nopix")
    for p in paths:
        ds = pydicom.dcmread(p)
        del ds.PixelData
        ds.save_as(p)
    assert "without PixelData" in refusal(vo.NonImageDicomError, tmp_path / "nopix", caplog)


def compress_header(paths, ts: str) -> None:
    for p in paths:
        ds = pydicom.dcmread(p)
        ds.file_meta.TransferSyntaxUID = ts
        ds.PixelData = encapsulate([b"\xff\xd8 not really compressed \xff\xd9"])
        ds["PixelData"].VR = "OB"
        ds.save_as(p)


@pytest.mark.parametrize("ts, name", [
    ("1.2.840.10008.1.2.4.100", "MPEG2"),  # video: pydicom has no decoder at all
    ("1.2.840.10008.1.2.4.92", "JPEG 2000 Part 2"),  # multi-component J2K: none of the installed decoders
])
def test_unsupported_transfer_syntax(tmp_path, caplog, ts, name):
    paths = write_series(small_stored((4, 4, 3)), AXIAL, tmp_path / "odd")
    compress_header(paths, ts)
    msg = refusal(vo.UnsupportedTransferSyntaxError, tmp_path / "odd", caplog)
    assert name in msg and "Explicit VR Little Endian" in msg
    with pytest.raises(vo.UnsupportedTransferSyntaxError) as err:
        vo.load_dicom(tmp_path / "odd")
    assert type(err.value) is vo.UnsupportedTransferSyntaxError  # not "install a decoder": there is none


def test_unknown_transfer_syntax_uid(tmp_path, caplog):
    paths = write_series(small_stored((4, 4, 3)), AXIAL, tmp_path / "odd")
    for p in paths:  # a private transfer syntax on an otherwise explicit-little-endian file
        ds = pydicom.dcmread(p)
        ds.file_meta.TransferSyntaxUID = "1.2.826.0.1.3680043.8.498.999"
        ds.save_as(p, implicit_vr=False, little_endian=True)
    assert "unknown transfer syntax" in refusal(vo.UnsupportedTransferSyntaxError, tmp_path / "odd", caplog)


def test_compressed_without_decoder_names_the_package(tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(vdicom, "decoder_available", lambda ts: False)  # as on a machine without the decoder
    paths = write_series(small_stored((4, 4, 3)), AXIAL, tmp_path / "jpeg")
    compress_header(paths, "1.2.840.10008.1.2.4.70")  # JPEG lossless SV1
    msg = refusal(vo.MissingDecoderError, tmp_path / "jpeg", caplog)
    assert "pip install pylibjpeg pylibjpeg-libjpeg" in msg and "JPEG Lossless" in msg
    (tmp_path / "jls").mkdir()
    shutil.copy(get_testdata_file("MR_small_jpeg_ls_lossless.dcm"), tmp_path / "jls" / "a.dcm")
    assert "pip install pyjpegls" in refusal(vo.MissingDecoderError, tmp_path / "jls", caplog)


def test_decoder_availability():
    # the reader asks pydicom whether a decoder exists; an unknown syntax is "no reader at all"
    assert vo.decoder_available("1.2.840.10008.1.2.4.100") is None
    assert vo.decoder_available("1.2.840.10008.1.2.5") is True  # RLE: pydicom's own numpy decoder
    # the PyPI decoders voxagent depends on (pylibjpeg + libjpeg/openjpeg plugins, pyjpegls)
    for ts in ("1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57",
               "1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81",
               "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.4.201"):
        assert vo.decoder_available(ts) is True, ts


@pytest.mark.parametrize("name", ["MR_small_jpeg_ls_lossless.dcm", "MR_small_jp2klossless.dcm"])
def test_pydicom_compressed_mr_small_reads_as_the_uncompressed_one(tmp_path, name):
    reference = vo.load_dicom(single(tmp_path, "MR_small.dcm"))
    vol = vo.load_dicom(single(tmp_path, name))
    np.testing.assert_array_equal(vol.array, reference.array)
    assert vol.same_grid(reference) and vol.meta.modality == reference.meta.modality


def test_pydicom_compressed_ct_decoded(tmp_path):
    # a real CT in lossy JPEG 2000: the volume holds the decoded, rescaled pixels
    vol = vo.load_dicom(single(tmp_path, "693_J2KI.dcm"))
    ds = pydicom.dcmread(get_testdata_file("693_J2KI.dcm"))
    assert vol.shape == (512, 512, 1) and vol.meta.modality == "CT"
    np.testing.assert_array_equal(vol.array[:, :, 0], ds.pixel_array.T * float(ds.RescaleSlope)
                                  + float(ds.RescaleIntercept))


@pytest.mark.parametrize("ts", ["1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.5"])
def test_compressed_series_round_trips(tmp_path, ts):
    # a whole series compressed losslessly by pydicom's encoders (pyjpegls, openjpeg, RLE) reads back exactly
    stored = small_stored((32, 40, 5))  # openjpeg's default 6 resolutions need 32 pixels a side
    paths = write_series(stored, AXIAL, tmp_path / "c")
    for p in paths:
        ds = pydicom.dcmread(p)
        ds.compress(ts)
        ds.save_as(p)
        assert pydicom.dcmread(p).file_meta.TransferSyntaxUID == ts
    assert_round_trip(vo.load_dicom(tmp_path / "c"), stored, AXIAL)


def test_mosaic_refused(good_series, caplog):
    folder, _, _ = good_series
    for p in folder.rglob("*.dcm"):
        ds = pydicom.dcmread(p)
        ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND", "MOSAIC"]
        ds.save_as(p)
    assert "mosaic" in refusal(vo.UnsupportedDicomError, folder, caplog)


# --------------------------------------------------------------------------- hostile archives


def zip_of(folder: Path, archive: Path, extra: dict[str, bytes] | None = None) -> Path:
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for f in sorted(folder.rglob("*.dcm")):
            zf.write(f, f.relative_to(folder).as_posix())
        for name, data in (extra or {}).items():
            zf.writestr(name, data)
    return archive


@pytest.mark.parametrize("member", ["../evil.dcm", "a/../../evil.dcm", "/etc/evil.dcm", "..\\evil.dcm", "C:evil.dcm"])
def test_path_traversal_zip_refused(good_series, tmp_path, caplog, member):
    folder, _, _ = good_series
    archive = zip_of(folder, tmp_path / "x.zip", {member: b"x"})
    assert "leaves the archive" in refusal(vo.UnsafeArchiveError, archive, caplog)
    assert not (tmp_path / "evil.dcm").exists()


def test_symlink_member_refused(good_series, tmp_path, caplog):
    folder, _, _ = good_series
    archive = zip_of(folder, tmp_path / "x.zip")
    with zipfile.ZipFile(archive, "a") as zf:
        info = zipfile.ZipInfo("link.dcm")
        info.external_attr = (0o120777 << 16)
        zf.writestr(info, "/etc/passwd")
    assert "symbolic link" in refusal(vo.UnsafeArchiveError, archive, caplog)


def test_zip_bomb_refused_from_headers_before_reading(good_series, tmp_path, caplog, monkeypatch):
    folder, _, _ = good_series
    archive = zip_of(folder, tmp_path / "bomb.zip", {"zeros.dcm": b"\x00" * 3_000_000})
    # the archive is 3 MB of zeros deflated to a few kB; with a 2 MB budget it must be refused unread
    opened = []
    real_open = zipfile.ZipFile.open
    monkeypatch.setattr(zipfile.ZipFile, "open", lambda self, *a, **k: opened.append(a) or real_open(self, *a, **k))
    limits = vo.DicomLimits(max_total_bytes=2_000_000)
    msg = refusal(vo.ArchiveLimitError, archive, caplog, limits=limits)
    assert "expands to more than" in msg and opened == []
    assert issubclass(vo.ArchiveLimitError, vo.SizeLimitError)
    assert (tmp_path / "bomb.zip").stat().st_size < 100_000


def test_zip_declaring_gigabytes_refused(good_series, tmp_path, caplog):
    folder, _, _ = good_series
    archive = zip_of(folder, tmp_path / "big.zip", {"big.dcm": b"\x00" * 1000})
    raw = bytearray(archive.read_bytes())
    # rewrite the uncompressed size of the last central-directory entry to 3 GB
    cd = raw.rfind(b"PK\x01\x02")
    struct.pack_into("<I", raw, cd + 24, 3 * 1024**3)
    archive.write_bytes(bytes(raw))
    assert "more than the 537 MB allowed" in refusal(vo.ArchiveLimitError, archive, caplog)


def test_too_many_files_refused(good_series, tmp_path, caplog):
    folder, _, _ = good_series
    archive = zip_of(folder, tmp_path / "many.zip")
    assert "more than 5 files" in refusal(vo.ArchiveLimitError, archive, caplog, limits=vo.DicomLimits(max_files=5))
    assert "more than 5 files" in refusal(vo.ArchiveLimitError, folder, caplog, limits=vo.DicomLimits(max_files=5))


def test_zip_entry_count_checked_before_the_directory_is_parsed(good_series, tmp_path, caplog, monkeypatch):
    folder, _, _ = good_series
    archive = zip_of(folder, tmp_path / "many.zip")  # 9 entries

    def no_zipfile(*args, **kwargs):
        raise AssertionError("the central directory was parsed")

    monkeypatch.setattr(zipfile, "ZipFile", no_zipfile)
    msg = refusal(vo.ArchiveLimitError, archive, caplog, limits=vo.DicomLimits(max_files=4))
    assert "lists 9 entries" in msg


def test_zip_member_longer_than_declared_refused(tmp_path, caplog):
    folder = tmp_path / "one"
    write_series(small_stored((6, 6, 2)), AXIAL, folder)
    archive = tmp_path / "lying.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as zf:
        for f in sorted(folder.glob("*.dcm")):
            zf.write(f, f.name)
    raw = bytearray(archive.read_bytes())
    # both headers of the first member declare 100 bytes fewer than it holds (CRC no longer matches)
    size = struct.unpack_from("<I", raw, 22)[0]
    struct.pack_into("<I", raw, 22, size - 100)
    cd = raw.find(b"PK\x01\x02")
    struct.pack_into("<I", raw, cd + 24, size - 100)
    archive.write_bytes(bytes(raw))
    assert "corrupt" in refusal(vo.UnsafeArchiveError, archive, caplog)


def test_corrupt_zip_refused(tmp_path, caplog):
    bad = tmp_path / "bad.zip"
    bad.write_bytes(b"PK\x03\x04" + b"\x00" * 64)
    assert "not a readable zip" in refusal(vo.UnsafeArchiveError, bad, caplog)


def test_folder_links_are_not_followed(good_series, tmp_path):
    folder, stored, affine = good_series
    outside = tmp_path / "outside"
    write_series(small_stored((20, 24, 2), seed=9), affine, outside)
    (folder / "link").symlink_to(outside, target_is_directory=True)
    assert_round_trip(vo.load_dicom(folder), stored, affine)


# --------------------------------------------------------------------------- pydicom's and nibabel's real files


def single(tmp_path, name: str) -> Path:
    folder = tmp_path / name.replace(".", "_")
    folder.mkdir()
    shutil.copy(get_testdata_file(name), folder / "image.dcm")
    return folder


def test_pydicom_ct_small(tmp_path):
    vol = vo.load_dicom(single(tmp_path, "CT_small.dcm"))
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    assert vol.shape == (128, 128, 1) and vol.meta.modality == "CT"
    assert vol.spacing == pytest.approx((0.661468, 0.661468, 5.0))
    assert vol.meta.acquisition_date == "1997-04-30"
    np.testing.assert_array_equal(vol.array[:, :, 0], ds.pixel_array.T.astype(np.int32) - 1024)
    ipp = np.array([float(v) for v in ds.ImagePositionPatient])
    np.testing.assert_allclose(vol.affine[:3, 3], ipp * [-1, -1, 1], atol=ATOL_MM)


def test_pydicom_mr_small_and_its_rle_copy(tmp_path):
    vol = vo.load_dicom(single(tmp_path, "MR_small.dcm"))
    assert vol.shape == (64, 64, 1) and vol.spacing == pytest.approx((0.3125, 0.3125, 0.8))
    assert vol.meta.modality == "T2"  # SE, TR 4000 ms, TE 240 ms
    rle = vo.load_dicom(single(tmp_path, "MR_small_RLE.dcm"))
    np.testing.assert_array_equal(rle.array, vol.array)
    assert rle.same_grid(vol)


@pytest.mark.parametrize("name", ["MR_small_implicit.dcm", "MR_small_bigendian.dcm", "MR_small_expb.dcm",
                                  "MR_small_padded.dcm"])
def test_pydicom_mr_small_encodings_read_the_same(tmp_path, name):
    reference = vo.load_dicom(single(tmp_path, "MR_small.dcm"))
    vol = vo.load_dicom(single(tmp_path, name))
    np.testing.assert_array_equal(vol.array, reference.array)
    np.testing.assert_allclose(vol.affine, reference.affine, atol=ATOL_MM)


def test_dicom_without_preamble(tmp_path):
    # old exports write the bare dataset: no 128-byte preamble, no DICM marker, no file meta (implicit VR)
    stored = small_stored((6, 5, 3))
    paths = write_series(stored, AXIAL, tmp_path / "raw")
    for p in paths:
        ds = pydicom.dcmread(p)
        del ds.file_meta
        ds.preamble = None
        ds.save_as(p, implicit_vr=True, little_endian=True, enforce_file_format=False)
        assert p.read_bytes()[:2] == b"\x08\x00"
    assert_round_trip(vo.load_dicom(tmp_path / "raw"), stored, AXIAL)


def test_pydicom_files_refused_with_the_right_error(tmp_path, caplog):
    assert "truncated" in refusal(vo.DicomHeaderError, single(tmp_path, "MR_truncated.dcm"), caplog)
    assert "colour" in refusal(vo.UnsupportedDicomError, single(tmp_path, "SC_rgb_small_odd.dcm"), caplog)
    # an NM whole-body image: a secondary-capture-like object without patient geometry
    assert "lack ImageOrientationPatient" in refusal(vo.DicomHeaderError, single(tmp_path, "JPEG-lossy.dcm"), caplog)


def test_nibabel_bundled_dicom(tmp_path, caplog):
    data = Path(nib.__file__).parent / "nicom/tests/data"
    # a real oblique single slice (Siemens, rescaled): geometry and values as the header says
    vol = vo.load_dicom(single_file(tmp_path, data / "decimal_rescale.dcm"))
    raw = pydicom.dcmread(data / "decimal_rescale.dcm")
    assert vol.shape == (int(raw.Columns), int(raw.Rows), 1)
    assert vol.spacing == pytest.approx((1.125, 1.125, 5.0))
    assert vol.meta.modality == "T1"  # no keyword; gradient echo, TR 50 ms, TE 2.5 ms: T1 by timing
    iop = np.array([float(v) for v in raw.ImageOrientationPatient])
    np.testing.assert_allclose(vol.affine[:3, 0], iop[:3] * [-1, -1, 1] * 1.125, atol=1e-9)  # LPS -> RAS
    np.testing.assert_allclose(vol.affine[:3, 1], iop[3:] * [-1, -1, 1] * 1.125, atol=1e-9)
    np.testing.assert_allclose(vol.affine[:3, 3], np.array([float(v) for v in raw.ImagePositionPatient])
                               * [-1, -1, 1], atol=1e-9)
    np.testing.assert_allclose(vol.array[:, :, 0], raw.pixel_array.T * float(raw.RescaleSlope)
                               + float(raw.RescaleIntercept), rtol=1e-6)
    assert vol.meta.source_name == "(no SeriesInstanceUID)"
    # Siemens mosaics (several slices tiled in one image) are refused with what to do instead
    for name in ("0.dcm", "csa_slice_norm.dcm"):
        assert "dcm2niix" in refusal(vo.UnsupportedDicomError, single_file(tmp_path, data / name), caplog)
    # a MIP whose SliceThickness is empty: one slice of unknown thickness (JPEG 2000, decoded by pillow)
    thin = single_file(tmp_path, data / "slicethickness_empty_string.dcm")
    assert "without SliceThickness" in refusal(vo.DicomHeaderError, thin, caplog)


def single_file(tmp_path: Path, path: Path) -> Path:
    folder = tmp_path / path.stem
    folder.mkdir()
    shutil.copy(path, folder / "a.dcm")
    return folder


# --------------------------------------------------------------------------- the command line


CLI_PROGRAM = """bright = threshold(t1, 150)
v = volume(bright)
respond(f"Bright tissue: {v}.")
output(bright, "bright")
stop()
"""


def voxagent(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cli", *args], capture_output=True, text=True, timeout=300)


@pytest.fixture()
def cli_series(tmp_path):
    stored = small_stored((16, 18, 14), seed=11, dtype=np.int16) // 12  # values 0..249
    write_series(stored, OBLIQUE, tmp_path / "dicom" / "t1", description="t1_mprage", SeriesNumber=2)
    program = tmp_path / "program.txt"
    program.write_text(CLI_PROGRAM)
    expected_ml = float((stored > 150).sum()) * abs(np.linalg.det(OBLIQUE[:3, :3])) / 1000
    return tmp_path / "dicom", program, expected_ml


def test_cli_exec_reads_a_dicom_folder(cli_series, tmp_path):
    folder, program, expected_ml = cli_series
    result = voxagent("exec", "--scan", f"t1={folder}", "--code", str(program), "--out", str(tmp_path / "out"),
                      "--json", "--model", str(tmp_path))  # no weights needed: the program uses none
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["status"] == "succeeded" and doc["metrics"][0]["unit"] == "mL"
    assert doc["metrics"][0]["value"] == pytest.approx(expected_ml, rel=1e-6)
    assert len(doc["input_checksums"]["t1"]) == 64
    mask = nib.load(doc["outputs"][0]["path"])
    np.testing.assert_allclose(mask.affine, vo.load_dicom(folder).affine, atol=ATOL_MM)


def test_cli_exec_dicom_errors_exit_2(cli_series, tmp_path):
    folder, program, _ = cli_series
    files = sorted((folder / "t1").glob("*.dcm"), key=lambda p: int(pydicom.dcmread(p).InstanceNumber))
    files[6].unlink()
    result = voxagent("exec", "--scan", f"t1={folder}", "--code", str(program), "--out", str(tmp_path / "o"))
    assert result.returncode == 2 and result.stdout == ""
    assert "voxagent exec: error: scan t1" in result.stderr and "1 slice(s) missing" in result.stderr
    assert "Traceback" not in result.stderr
    assert_no_phi(result.stderr)
    empty = tmp_path / "empty"
    empty.mkdir()
    result = voxagent("exec", "--scan", f"t1={empty}", "--code", str(program))
    assert result.returncode == 2 and "no files" in result.stderr


def test_cli_exec_and_run_choose_a_series(cli_series, tmp_path):
    folder, program, expected_ml = cli_series
    write_series(small_stored((5, 5, 3)), AXIAL, folder / "flair", description="AX FLAIR", SeriesNumber=7)
    archive = zip_of(folder, tmp_path / "study.zip")
    mixed = voxagent("exec", "--scan", f"t1={archive}", "--code", str(program))
    assert mixed.returncode == 2 and "2 image series" in mixed.stderr and "--series t1=INDEX" in mixed.stderr
    assert_no_phi(mixed.stderr)
    chosen = voxagent("exec", "--scan", f"t1={archive}", "--series", "t1=0", "--code", str(program),
                      "--out", str(tmp_path / "o1"), "--json", "--model", str(tmp_path))
    assert chosen.returncode == 0, chosen.stderr
    assert json.loads(chosen.stdout)["metrics"][0]["value"] == pytest.approx(expected_ml, rel=1e-6)
    ran = voxagent("run", "--code", str(program), f"t1={archive}", "--series", "t1=0", "--out", str(tmp_path / "o2"),
                   "--json")
    assert ran.returncode == 0, ran.stderr
    assert json.loads(ran.stdout)["metrics"][0]["value"] == pytest.approx(expected_ml, rel=1e-5)
    refused = voxagent("run", "--code", str(program), f"t1={archive}", "--out", str(tmp_path / "o3"))
    assert refused.returncode == 2 and "voxagent run: error" in refused.stderr and "2 image series" in refused.stderr


def test_pydicom_dicomdir_study_folder(caplog):
    """pydicom's DICOMDIR test tree: real headers of 4 patients, 14 series (MR, CT, CR), DICOMDIR files."""
    folder = Path(get_testdata_file("CT_small.dcm")).parent / "dicomdirtests"
    identifiers = ("Doe", "Citizen", "77654033", "98890234", "12345678")
    series = vo.list_dicom_series(folder)
    assert len(series) == 14  # the DICOMDIR files are skipped
    stubs = [s for s in series if not s.is_image]  # TINY_ALPHA: CT headers stripped of Rows and pixels
    assert len(stubs) == 1 and stubs[0].modality == "CT" and stubs[0].files == 50
    assert not any(word in repr(series) for word in identifiers)
    with caplog.at_level(logging.DEBUG, logger="voxel_ops"), pytest.raises(vo.MixedSeriesError) as err:
        vo.load_dicom(folder)
    assert "13 image series" in str(err.value) and "and 1 more" in str(err.value)
    messages = [str(err.value), caplog.text]
    smartscore = next(s for s in series if s.series_description == "SmartScore - Gated 0.5 sec")
    ct = vo.load_dicom(folder, series=smartscore.series_instance_uid)
    assert ct.shape == (16, 16, 5) and ct.spacing == pytest.approx((0.48828, 0.48828, 2.5), abs=1e-4)
    assert ct.meta.modality == "CT" and ct.orientation == ("L", "P", "S")
    expected = {"Cervical LAT": vo.UnsupportedDicomError, "Routine Brain": vo.MissingSliceError,
                "Scout": vo.InconsistentGeometryError, "ANGIO Projected from   C": vo.InconsistentGeometryError}
    for s in series:
        if s.series_description in expected:
            with pytest.raises(expected[s.series_description]) as err:
                vo.load_dicom(folder, series=s.index)
            messages.append(str(err.value))
    assert any("projection radiograph (CR)" in m for m in messages)
    with pytest.raises(vo.NonImageDicomError, match="CT object without pixel data"):
        vo.load_dicom(folder, series=stubs[0].index)
    for message in messages:
        assert not any(word in message for word in identifiers), message


# --------------------------------------------------------------------------- corrupted bytes


def mutate(data: bytes, rng: np.random.Generator, start: int) -> bytes:
    b = bytearray(data)
    kind = rng.integers(3)
    if kind == 0:
        for _ in range(rng.integers(1, 8)):
            b[rng.integers(start, min(len(b), start + 1400))] = rng.integers(0, 256)
    elif kind == 1:
        b = b[: rng.integers(start + 2, len(b))]
    else:
        i = rng.integers(start, min(len(b), start + 1400))
        b[i : i + 4] = b"\xff\xff\xff\xff"
    return bytes(b)


def test_corrupted_files_and_archives_only_raise_volume_errors(tmp_path):
    """Flipped, overwritten and truncated bytes: a read either works or is a typed refusal, never a crash."""
    stored = small_stored((8, 9, 4), seed=4)
    write_series(stored, AXIAL, tmp_path / "series")
    write_enhanced_mr(stored, OBLIQUE, tmp_path / "enhanced" / "x.dcm")
    archive = zip_of(tmp_path / "series", tmp_path / "series.zip")
    outcomes = {"read": 0, "refused": 0}
    for round_ in range(150):
        rng = np.random.default_rng(round_)
        kind = ("series", "enhanced", "zip")[round_ % 3]
        work = tmp_path / f"w{round_}"
        if kind == "zip":
            work.mkdir()
            target = work / "a.zip"
            target.write_bytes(mutate(archive.read_bytes(), rng, 0))
            source = target
        else:
            shutil.copytree(tmp_path / kind, work)
            files = sorted(work.glob("*.dcm"))
            target = files[round_ % len(files)]
            target.write_bytes(mutate(target.read_bytes(), rng, 128))
            source = work
        try:
            vo.load_dicom(source)
            outcomes["read"] += 1
        except vo.VolumeError as exc:
            assert_no_phi(str(exc))
            outcomes["refused"] += 1
        shutil.rmtree(work)
    assert outcomes["refused"] > 50 and sum(outcomes.values()) == 150
