"""One finished analysis as DICOM: a SEG of its output masks and a TID 1500 SR of its metrics and text.

Why here (``service/``): the writers join the result contract (``api_schemas``) with the geometry of
``voxel_ops`` and use highdicom, none of which belongs in the pure ``voxel_ops`` layer. The CLI
(``voxagent run --dicom-out``) calls :func:`write_dicom_results`; the API download and the STOW-RS
push can call :func:`build_dicom_results` and send the datasets as they are.

What is written (IHE AI Results: SEG + SR TID 1500, in the source study):

* **SEG** (``hd.seg.Segmentation``, BINARY): one segment per output mask, frames in the source
  series' own slice order and pixel layout (:func:`voxel_ops.dicom_out.mask_frames`), each frame
  referencing its source instance; algorithm identification "voxagent" + package version; the
  series description says research use, not for diagnosis, unverified.
* **SR** (``hd.sr.Comprehensive3DSR`` with a ``MeasurementReport``): observer = the voxagent device;
  one measurement group per segment (TID 1411, referencing the SEG segment) holding the metrics
  measured on that mask, one group (TID 1501) for the other metrics; each metric with its UCUM unit
  and its exact name as tracking identifier; the text answer (and non-numeric metrics) as TEXT items
  in a "Qualitative Evaluations" container; VerificationFlag UNVERIFIED, PreliminaryFlag PRELIMINARY.
  The grounded report (``AnalysisResult.report``): each sentence a TEXT (DCM 121071 "Finding") item
  in the measurement group of every SR measurement it states (the metric's group, where the NUM
  item carries the metric's name as tracking identifier); a sentence that states none goes unlinked
  into the "Qualitative Evaluations" container.

Which metric belongs to which mask: the caller may say (``metric_masks``); otherwise a metric is
linked only when that is certain: its name starts with the output's name, or with the name of a
mask whose "... volume" metric equals that output's volume as recomputed here (the sandbox names a
mask's metrics "<mask name> volume", "<mask name> left-right extent", ...). Unlinked metrics are
reported without a segment reference rather than with a guessed one.

Privacy: the source headers are copied into the objects (that is what links them to the patient),
but nothing from them is logged or put in an error message.
"""
from __future__ import annotations

import copy
import hashlib
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from api_schemas.results import AnalysisResult, AnalysisStatus, Metric, ReportSentence
from voxel_ops.dicom_out import mask_frames, planes_of
from voxel_ops.measure import volume_ml
from voxel_ops.volume import Volume

log = logging.getLogger(__name__)

CAUTION = "RESEARCH USE ONLY, NOT FOR DIAGNOSIS, UNVERIFIED"
SEG_SERIES_DESCRIPTION = f"voxagent SEG: {CAUTION}"  # <= 64 characters (LO)
SR_SERIES_DESCRIPTION = f"voxagent SR: {CAUTION}"
PRIVATE_SCHEME = "99VOXAGENT"  # private coding scheme for metric names without a standard code
MANUFACTURER = "voxagent"

# voxagent units -> UCUM (code, meaning); anything else becomes a UCUM annotation "{unit}" (dimensionless)
UCUM_UNITS: dict[str | None, tuple[str, str]] = {
    None: ("1", "no units"), "": ("1", "no units"), "1": ("1", "no units"),
    "mL": ("ml", "milliliter"), "ml": ("ml", "milliliter"), "L": ("l", "liter"),
    "mm": ("mm", "millimeter"), "cm": ("cm", "centimeter"), "mm2": ("mm2", "square millimeter"),
    "mm3": ("mm3", "cubic millimeter"), "cm3": ("cm3", "cubic centimeter"), "%": ("%", "percent"),
    "HU": ("[hnsf'U]", "Hounsfield unit"), "s": ("s", "second"), "ms": ("ms", "millisecond"),
    "mm2/s": ("mm2/s", "square millimeter per second"),
}

# (segment label keyword, property category, property type): standard codes where the name says what it is
_PROPERTY_CODES: tuple[tuple[str, hd.sr.CodedConcept, hd.sr.CodedConcept], ...] = (
    ("lesion", hd.sr.CodedConcept("49755003", "SCT", "Morphologically Altered Structure"),
     hd.sr.CodedConcept("52988006", "SCT", "Lesion")),
    ("tumor", hd.sr.CodedConcept("49755003", "SCT", "Morphologically Altered Structure"),
     hd.sr.CodedConcept("108369006", "SCT", "Neoplasm")),
    ("brain", hd.sr.CodedConcept("123037004", "SCT", "Anatomical Structure"),
     hd.sr.CodedConcept("12738006", "SCT", "Brain")),
)
_DEFAULT_CATEGORY = hd.sr.CodedConcept("85756007", "SCT", "Tissue")


class DicomOutputError(ValueError):
    """The results cannot be written as DICOM (no source geometry, a mask off the source grid, ...)."""


@dataclass(frozen=True)
class DicomOutputs:
    """The objects for one analysis; ``segmentation`` is None when the analysis output no mask."""

    report: Dataset
    segmentation: Dataset | None = None
    segment_numbers: dict[str, int] = field(default_factory=dict)  # output name -> SEG segment number
    metric_segments: dict[int, int] = field(default_factory=dict)  # index into result.metrics -> segment


def package_version() -> str:
    """The installed voxagent version (what the algorithm identification names)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("voxagent")
    except PackageNotFoundError:
        return "unknown"


def build_dicom_results(
    result: AnalysisResult,
    masks: Mapping[str, Volume],
    source: Sequence[Dataset],
    *,
    metric_masks: Mapping[int, str] | None = None,
    seg_series_number: int = 9901,
    sr_series_number: int = 9902,
    version: str | None = None,
    uid_seed: str | None = None,
) -> DicomOutputs:
    """The SEG (when there are masks) and the SR of ``result``, in the study of ``source``.

    ``masks``: output name -> mask volume on the grid of the scan read from ``source`` (the full
    headers of its series, e.g. :func:`voxel_ops.dicom_out.read_series_datasets`); segments follow
    the order of ``result.outputs``. ``metric_masks``: index into ``result.metrics`` -> output name,
    to link metrics to segments explicitly (otherwise see the module docstring). ``uid_seed``
    (e.g. the job id): the SEG's and SR's series and instance UIDs derive from it, so building the
    objects of one analysis twice (a download and a push, a retried push) gives the same instances,
    and a receiver stores them once instead of twice.
    """
    if not source:
        raise DicomOutputError("no source DICOM images: SEG and SR are written only for a scan read from DICOM")
    version = version or package_version()
    sources = [_complete_type2(ds) for ds in source]
    if not getattr(sources[0], "FrameOfReferenceUID", None):
        raise DicomOutputError("the source series has no FrameOfReferenceUID; a SEG cannot be placed on it")
    names = [o.name for o in result.outputs if o.name in masks] + [n for n in masks if n not in
                                                                     {o.name for o in result.outputs}]
    seg = None
    numbers: dict[str, int] = {}
    if names:
        seg = _segmentation(result, [(n, masks[n]) for n in names], sources, seg_series_number, version,
                            _uids(uid_seed, "seg"))
        numbers = {n: i + 1 for i, n in enumerate(names)}
    links = dict(metric_masks) if metric_masks is not None else link_metrics(result.metrics, masks)
    metric_segments = {i: numbers[n] for i, n in links.items() if n in numbers and 0 <= i < len(result.metrics)}
    try:
        report = _report(result, sources, seg, numbers, metric_segments, sr_series_number, version,
                         _uids(uid_seed, "sr"))
    except DicomOutputError:
        raise
    except (ValueError, TypeError, AttributeError, KeyError) as exc:  # highdicom's refusals of the content
        raise DicomOutputError(f"the SR cannot be built ({type(exc).__name__}: {_first_line(exc)})") from None
    log.info("DICOM results built", extra={"segments": len(numbers), "metrics": len(result.metrics),
                                           "linked_metrics": len(metric_segments), "frames": len(sources)})
    return DicomOutputs(report=report, segmentation=seg, segment_numbers=numbers, metric_segments=metric_segments)


def write_dicom_results(
    result: AnalysisResult, masks: Mapping[str, Volume], source: Sequence[Dataset], out_dir: Path, **options: Any,
) -> dict[str, Path]:
    """:func:`build_dicom_results`, saved as ``seg.dcm`` (if any mask) and ``sr.dcm`` in ``out_dir``."""
    built = build_dicom_results(result, masks, source, **options)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    if built.segmentation is not None:
        paths["seg"] = out_dir / "seg.dcm"
        built.segmentation.save_as(paths["seg"], enforce_file_format=True)
    paths["sr"] = out_dir / "sr.dcm"
    built.report.save_as(paths["sr"], enforce_file_format=True)
    return paths


def _uids(seed: str | None, kind: str) -> tuple[str, str]:
    """(series, instance) UIDs: fresh ones, or derived from ``seed`` (the same seed, the same UIDs)."""
    if seed is None:
        return hd.UID(), hd.UID()
    return (generate_uid(entropy_srcs=["voxagent", seed, kind, "series"]),
            generate_uid(entropy_srcs=["voxagent", seed, kind, "instance"]))


def link_metrics(metrics: Sequence[Metric], masks: Mapping[str, Volume]) -> dict[int, str]:
    """Metric index -> output name, only where certain (module docstring): names and recomputed volumes."""
    prefixes: dict[str, set[str]] = {name: {name} for name in masks}
    volumes = {name: volume_ml(vol) for name, vol in masks.items()}
    for m in metrics:
        if m.unit not in ("mL", "ml") or not m.name.endswith(" volume") or not _is_number(m.value):
            continue
        value = float(m.value)
        same = [n for n, v in volumes.items() if math.isclose(v, value, rel_tol=1e-5, abs_tol=1e-9)]
        if len(same) == 1:
            prefixes.setdefault(m.name[: -len(" volume")], set()).add(same[0])
    links: dict[int, str] = {}
    for i, m in enumerate(metrics):
        match = [p for p in prefixes if m.name == p or m.name.startswith(p + " ")]
        if not match:
            continue
        owners = prefixes[max(match, key=len)]
        if len(owners) == 1:
            links[i] = next(iter(owners))
    return links


# --------------------------------------------------------------------------- SEG


def _segmentation(result: AnalysisResult, masks: list[tuple[str, Volume]], sources: list[Dataset],
                  series_number: int, version: str, uids: tuple[str, str]) -> Dataset:
    planes = planes_of(sources)
    try:
        frames = np.stack([mask_frames(vol, planes) != 0 for _name, vol in masks], axis=-1).astype(np.uint8)
    except ValueError as exc:  # GridMismatchError and friends: say which output
        raise DicomOutputError(f"an output mask cannot be placed on the source series: {exc}") from None
    if len(sources) == 1 and int(getattr(sources[0], "NumberOfFrames", 1) or 1) == 1:
        frames = frames[0]  # a single single-frame source: highdicom wants (rows, columns, segments)
    algorithm = hd.AlgorithmIdentificationSequence(
        name="voxagent", version=version, family=codes.cid7162.ArtificialIntelligence,
        parameters={"model": result.model} if result.model else None)
    descriptions = []
    for number, (name, _vol) in enumerate(masks, start=1):
        category, kind = _property_codes(name)
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=number, segment_label=name[:64], segmented_property_category=category,
            segmented_property_type=kind, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm))
    try:
        seg = hd.seg.Segmentation(
            source_images=sources, pixel_array=frames, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=descriptions, series_instance_uid=uids[0], series_number=series_number,
            sop_instance_uid=uids[1], instance_number=1, manufacturer=MANUFACTURER,
            manufacturer_model_name="voxagent", software_versions=version, device_serial_number="none",
            content_label="VOXAGENT", content_description="research use only; not for diagnosis; unverified",
            series_description=SEG_SERIES_DESCRIPTION)
    except (ValueError, TypeError, AttributeError) as exc:
        raise DicomOutputError(f"the SEG cannot be built from this source series ({type(exc).__name__}: "
                               f"{_first_line(exc)})") from None
    seg.SeriesDescription = SEG_SERIES_DESCRIPTION
    if any(d.SegmentedPropertyTypeCodeSequence[0].CodingSchemeDesignator == PRIVATE_SCHEME for d in descriptions):
        _declare_private_scheme(seg)
    return seg


def _property_codes(name: str) -> tuple[hd.sr.CodedConcept, hd.sr.CodedConcept]:
    low = name.lower()
    for keyword, category, kind in _PROPERTY_CODES:
        if keyword in low:
            return category, kind
    return _DEFAULT_CATEGORY, _private_code(name)


# --------------------------------------------------------------------------- SR


def _report(result: AnalysisResult, sources: list[Dataset], seg: Dataset | None, numbers: dict[str, int],
            metric_segments: dict[int, int], series_number: int, version: str, uids: tuple[str, str]) -> Dataset:
    device = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=generate_uid(entropy_srcs=["voxagent device", version]), name="voxagent",
            manufacturer_name=MANUFACTURER, model_name=f"voxagent {version}"[:64]))
    algorithm = hd.sr.AlgorithmIdentification(name="voxagent", version=version,
                                              parameters=[f"model={result.model}"] if result.model else None)
    groups: list[Any] = []
    texts: list[str] = [result.text] if result.text else []
    by_segment: dict[int, list[hd.sr.Measurement]] = {n: [] for n in numbers.values()}
    unlinked: list[hd.sr.Measurement] = []
    for i, metric in enumerate(result.metrics):
        if not _is_number(metric.value):
            texts.append(f"{metric.name}: {metric.value}")
            continue
        measurement = hd.sr.Measurement(
            name=_metric_code(metric), value=float(metric.value), unit=ucum_unit(metric.unit),
            tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=metric.name),
            algorithm_id=algorithm)
        (by_segment[metric_segments[i]] if i in metric_segments else unlinked).append(measurement)
    label_of = {n: name for name, n in numbers.items()}
    keys: list[int | None] = []  # per group: its segment number, None for the unlinked one
    if seg is not None:
        for number, measurements in by_segment.items():
            groups.append(hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=label_of[number]),
                referenced_segment=hd.sr.ReferencedSegment(  # not from_segmentation: it misses shared-group
                    sop_class_uid=seg.SOPClassUID, sop_instance_uid=seg.SOPInstanceUID,  # segment ids
                    segment_number=number, source_series=hd.sr.SourceSeriesForSegmentation(
                        str(sources[0].SeriesInstanceUID))),
                algorithm_id=algorithm, measurements=measurements or None))
            keys.append(number)
    if unlinked or not groups:  # TID 1500 needs one group; a text-only answer gets an empty one
        groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier="voxagent analysis"),
            algorithm_id=algorithm, measurements=unlinked or None))
        keys.append(None)
    # the grounded report: each sentence goes, as a TEXT Finding, into the measurement group of every
    # SR measurement it states; one that states none goes unlinked with the other texts
    group_of = {i: metric_segments.get(i) for i, m in enumerate(result.metrics) if _is_number(m.value)}
    for sentence in result.report:
        where = [group_of[i] for i in _sentence_metrics(sentence, result.metrics)
                 if i in group_of and group_of[i] in keys]
        if not where:
            texts.append(sentence.text)
        for key in dict.fromkeys(where):
            groups[keys.index(key)][0].ContentSequence.append(hd.sr.TextContentItem(
                name=codes.DCM.Finding, value=sentence.text, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS))
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=device),
        procedure_reported=hd.sr.CodedConcept("363679005", "SCT", "Imaging"), imaging_measurements=groups)
    if result.error:
        texts.append(f"analysis error: {result.error}")
    texts.append(f"voxagent machine output: {CAUTION.lower()}")
    evaluations = hd.sr.ContainerContentItem(name=hd.sr.CodedConcept("C0034375", "UMLS", "Qualitative Evaluations"),
                                             relationship_type=hd.sr.RelationshipTypeValues.CONTAINS)
    evaluations.ContentSequence = hd.sr.ContentSequence(
        [hd.sr.TextContentItem(name=codes.DCM.Finding, value=t, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS)
         for t in texts])
    report[0].ContentSequence.append(evaluations)
    evidence = ([seg] if seg is not None else []) + sources
    sr = hd.sr.Comprehensive3DSR(
        evidence=evidence, content=report, series_instance_uid=uids[0], series_number=series_number,
        sop_instance_uid=uids[1], instance_number=1, manufacturer=MANUFACTURER,
        is_complete=result.status == AnalysisStatus.succeeded, is_final=False, is_verified=False,
        series_description=SR_SERIES_DESCRIPTION)
    sr.SeriesDescription = SR_SERIES_DESCRIPTION
    if any(_uses_private(m) for m in result.metrics) or any(
            _property_codes(n)[1].scheme_designator == PRIVATE_SCHEME for n in numbers):
        _declare_private_scheme(sr)
    return sr


def _sentence_metrics(sentence: ReportSentence, metrics: Sequence[Metric]) -> list[int]:
    """Indices into ``metrics`` of the metrics a report sentence states (by index, else by name)."""
    if sentence.metric_indices:
        return [i for i in sentence.metric_indices if 0 <= i < len(metrics)]
    first: dict[str, int] = {}
    for i, m in enumerate(metrics):
        first.setdefault(m.name, i)
    return [first[n] for n in sentence.metrics if n in first]


def _declare_private_scheme(ds: Dataset) -> None:
    """Name the private scheme in the object, as PS3.3 asks of a designator that starts with "99"."""
    scheme = Dataset()
    scheme.CodingSchemeDesignator = PRIVATE_SCHEME
    scheme.CodingSchemeName = "voxagent metric and structure names"
    scheme.CodingSchemeResponsibleOrganization = "voxagent"
    existing = list(getattr(ds, "CodingSchemeIdentificationSequence", None) or [])
    ds.CodingSchemeIdentificationSequence = existing + [scheme]


def ucum_unit(unit: str | None) -> hd.sr.CodedConcept:
    """The UCUM code of a voxagent unit ("mL" -> "ml", "mm", "%", unitless -> "1")."""
    value, meaning = UCUM_UNITS.get(unit, (f"{{{unit}}}", str(unit)))
    return hd.sr.CodedConcept(value=value, scheme_designator="UCUM", meaning=meaning)


def _metric_code(metric: Metric) -> hd.sr.CodedConcept:
    low = metric.name.lower()
    if metric.unit in ("mL", "ml") and low.endswith("volume"):
        return hd.sr.CodedConcept("118565006", "SCT", "Volume")
    if metric.unit == "mm" and ("extent" in low or "length" in low or "diameter" in low):
        return hd.sr.CodedConcept("410668003", "SCT", "Length")
    return _private_code(metric.name)


def _uses_private(metric: Metric) -> bool:
    return _is_number(metric.value) and _metric_code(metric).scheme_designator == PRIVATE_SCHEME


def _private_code(name: str) -> hd.sr.CodedConcept:
    digest = hashlib.sha1(name.encode("utf-8")).hexdigest()[:12].upper()
    return hd.sr.CodedConcept(f"V{digest}", PRIVATE_SCHEME, name[:64] or "unnamed")


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(float(value))


# type 2 attributes of the patient and study modules that highdicom copies from the first source
_TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
          "ReferringPhysicianName", "StudyID", "AccessionNumber")


def _complete_type2(ds: Dataset) -> Dataset:
    """A copy with empty values for missing type 2 attributes (exports often drop them; highdicom needs them)."""
    missing = [k for k in _TYPE2 if k not in ds]
    if not missing:
        return ds
    out = copy.deepcopy(ds)
    for keyword in missing:
        setattr(out, keyword, "")
    return out


def _first_line(exc: BaseException) -> str:
    return str(exc).splitlines()[0][:200] if str(exc) else ""


__all__ = [
    "CAUTION",
    "DicomOutputError",
    "DicomOutputs",
    "build_dicom_results",
    "link_metrics",
    "package_version",
    "ucum_unit",
    "write_dicom_results",
]
