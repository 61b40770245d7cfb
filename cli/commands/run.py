"""`voxagent run --prompt "..." scan.nii.gz [NAME=PATH ...]`: one analysis, locally, no server.

Runs the same task function as the service (embedded, in a throw-away data directory) and
prints the same result document; output volumes are written to --out with their paths in it, each
mask with its PNG snapshot beside it (``NAME.png``: three planes through the mask over its scan).
A scan PATH is a NIfTI file or a DICOM series (folder, ``.zip`` or multi-frame file); a DICOM
series is read with voxel_ops' checks, and its modality and acquisition date reach the analysis.
``--dicom-out DIR`` also writes the results as DICOM into the source study: ``seg.dcm`` (a SEG of the
output masks on the DICOM scan) and ``sr.dcm`` (a TID 1500 SR of the metrics and the answer); it
needs exactly one scan read from a DICOM series. A 4D NIfTI series needs ``--frame NAME=INDEX``.
"""
from __future__ import annotations

import argparse
import re
from pathlib import Path

# validate_file's messages start with the name of the stored copy; the user knows the file they gave
_STORED_NAME = re.compile(r"^vol_[0-9a-f]+\.nii(\.gz)?: ")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="analyse scans locally and print the result")
    p.add_argument("scans", nargs="+", help="PATH or NAME=PATH (NAME becomes the variable in the program); "
                                            "PATH is a NIfTI file or a DICOM folder / .zip")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--prompt", help="what to do, in words")
    g.add_argument("--code", type=Path, help="a program file to run instead of the language model")
    p.add_argument("--modality", action="append", default=[], help="modality per scan, in order (repeatable)")
    p.add_argument("--series", action="append", default=[], metavar="NAME=INDEX|UID",
                   help="which series of a DICOM folder/zip holding several to read as scan NAME (repeatable)")
    p.add_argument("--frame", action="append", default=[], metavar="NAME=INDEX",
                   help="which frame (0-based) of a 4D NIfTI series to read as scan NAME (repeatable)")
    p.add_argument("--out", type=Path, default=Path("voxagent-out"), help="directory for output volumes")
    p.add_argument("--dicom-out", type=Path, default=None, metavar="DIR",
                   help="also write seg.dcm (output masks) and sr.dcm (metrics, answer) into DIR, in the study "
                        "of the DICOM scan (needs one scan given as a DICOM folder / zip)")
    p.add_argument("--json", action="store_true", help="print the result document as JSON")
    p.set_defaults(func=run)


def parse_scans(items: list[str]) -> list[tuple[str | None, Path]]:
    out = []
    for item in items:
        name, sep, path = item.partition("=")
        out.append((name, Path(path)) if sep and name.isidentifier() else (None, Path(item)))
    return out


def run(args: argparse.Namespace) -> int:
    import shutil
    import tempfile
    import uuid

    from pydantic import ValidationError

    import voxel_ops as vo
    from api_schemas.limits import blank_text_problem
    from api_schemas.requests import AnalysisRequest, VolumeInput
    from api_schemas.results import AnalysisResult, AnalysisStatus
    from cli.commands.exec import _pairs, load_scan_argument
    from cli.errors import CommandError, validation_message
    from service.settings import Settings
    from service.storage.artifacts import ArtifactStore
    from service.storage.records import SQLiteRecordStore
    from service.tasks.analysis import run_analysis
    from service.tasks.context import TaskContext
    from service.volumes import validate_file

    problem = blank_text_problem("--prompt", args.prompt)  # before any scan is read: the cheap refusal first
    if problem:
        raise CommandError(problem)
    for modality in args.modality:
        check_modality(modality)
    code = None
    if args.code is not None:
        if not args.code.is_file():
            raise CommandError(f"no such program file: {args.code}")
        code = args.code.read_text()
    scans = parse_scans(args.scans)
    with tempfile.TemporaryDirectory(prefix="voxagent-run-") as tmp:
        settings = Settings(data_dir=Path(tmp), broker_url=None)
        records, artifacts = SQLiteRecordStore(settings.sqlite_path), ArtifactStore(settings.artifacts_dir)
        series = _pairs(args.series, "--series")
        frames = _pairs(args.frame, "--frame")
        for option, given in (("--series", series), ("--frame", frames)):
            unknown = set(given) - {name for name, _ in scans if name}
            if unknown:
                raise CommandError(f"{option} names a scan that was not given as NAME=PATH: {sorted(unknown)[0]}")
        refs = []
        dicom_scans: dict[int, tuple[Path, int | str | None]] = {}  # scan index -> (path, chosen series)
        for i, (name, path) in enumerate(scans):
            if not path.exists():
                raise CommandError(f"no such scan: {path}")
            modality = args.modality[i] if i < len(args.modality) else None
            date, given = None, path
            if vo.is_dicom_source(path):  # the service stores NIfTI: read the series here, store it as NIfTI
                label = name or f"scan {i + 1}"
                volume, _ = load_scan_argument(label, path, modality, series.get(name or ""), frames.get(name or ""))
                modality, date = volume.meta.modality, volume.meta.acquisition_date
                path = vo.save_volume(volume, Path(tmp) / f"dicom_{i}.nii.gz")
                chosen = series.get(name or "")
                dicom_scans[i] = (given, int(chosen) if chosen is not None and chosen.isdigit() else chosen)
            elif not path.is_file():
                raise CommandError(f"no such scan file: {path}")
            elif name in series:
                raise CommandError(f"--series {name}=...: {path} is not a DICOM folder or archive")
            elif name in frames:  # the chosen frame of a 4D series is the scan
                volume, _ = load_scan_argument(name, path, modality, frame=frames[name])
                path = vo.save_volume(volume, Path(tmp) / f"frame_{i}.nii.gz")
            try:
                record = validate_file(records, artifacts, "local", path, modality=modality, date=date)
            except ValueError as exc:  # the message names the stored copy (vol_<id>.nii.gz): name the user's file
                hint = ""
                if isinstance(exc, vo.DimensionError) and "4D series" in str(exc):
                    hint = f"; on the command line: --frame {name}=INDEX" if name else \
                        "; give the scan as NAME=PATH and choose one with --frame NAME=INDEX"
                raise CommandError(f"{given}: {_STORED_NAME.sub('', str(exc))}{hint}") from None
            refs.append(VolumeInput(id=record.id, name=name, modality=modality, date=date))
        source_headers = _dicom_out_sources(args.dicom_out, scans, dicom_scans)
        try:
            req = AnalysisRequest(prompt=args.prompt, code=code, volumes=refs)
        except ValidationError as exc:
            raise CommandError(validation_message(exc)) from None
        from service.jobs import new_job_record
        from service.storage import JobRecord

        job = new_job_record(records, "local", req)
        records.put_record(job)
        run_analysis(TaskContext.embedded(settings, records, artifacts), job.id)
        done = records.get_record(JobRecord, job.id)
        if done is None or done.result is None:
            raise CommandError("the analysis left no result")
        result = AnalysisResult.model_validate(done.result)
        if result.outputs:
            args.out.mkdir(parents=True, exist_ok=True)
        outputs = []
        for out in result.outputs:
            src = artifacts.path("local", out.path)
            suffix = ".nii.gz" if src.name.endswith(".gz") else ".nii"
            safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in out.name) or f"output_{uuid.uuid4().hex[:6]}"
            dst = args.out / f"{safe}{suffix}"
            shutil.copyfile(src, dst)
            update = {"path": str(dst.resolve())}
            if out.snapshot and artifacts.exists("local", out.snapshot):  # the mask over its scan, 3 planes
                png = args.out / f"{safe}.png"
                shutil.copyfile(artifacts.path("local", out.snapshot), png)
                update["snapshot"] = str(png.resolve())
            outputs.append(out.model_copy(update=update))
        dicom_paths: dict[str, Path] = {}
        if source_headers is not None:
            index = next(iter(dicom_scans))
            dicom_paths = _write_dicom_out(args.dicom_out, result, artifacts, job.scan_names, index, source_headers)
        result.outputs = outputs
        records.close()
    if args.json:
        print(result.model_dump_json(indent=2))
    else:
        print(result.text or f"({result.status})")
        for m in result.metrics:
            print(f"  {m.name}: {m.value}{(' ' + m.unit) if m.unit else ''}")
        for o in result.outputs:
            print(f"  output {o.name}: {o.path}")
            if o.snapshot:
                print(f"  snapshot {o.name}: {o.snapshot}")
        for kind, dcm in dicom_paths.items():
            print(f"  dicom {kind}: {dcm.resolve()}")
        if result.error:
            print(f"  error: {result.error}")
    return 0 if result.status != AnalysisStatus.failed else 1


def check_modality(modality: str) -> None:
    """A --modality the API would refuse is refused here, in one line, before any scan is read."""
    from pydantic import ValidationError

    from api_schemas.requests import VolumeInput
    from cli.errors import CommandError, validation_message

    try:
        VolumeInput(id="check", modality=modality)
    except ValidationError as exc:
        reason = validation_message(exc).removeprefix("modality: ")
        raise CommandError(f"--modality {modality!r}: {reason}") from None


def _dicom_out_sources(out_dir: Path | None, scans: list[tuple[str | None, Path]],
                       dicom_scans: dict[int, tuple[Path, int | str | None]]) -> list | None:
    """The full headers of the one DICOM scan ``--dicom-out`` writes into, read before the analysis runs."""
    if out_dir is None:
        return None
    import voxel_ops as vo
    from cli.errors import CommandError
    from voxel_ops.dicom_out import read_series_datasets

    if not dicom_scans:
        raise CommandError("--dicom-out needs a scan read from DICOM (a folder or .zip of a series); "
                           "the scans given are NIfTI files, whose study is unknown")
    if len(dicom_scans) > 1:
        raise CommandError(f"--dicom-out writes into the study of one DICOM scan; {len(dicom_scans)} scans "
                           "are DICOM series (give the others as NIfTI, or run once per scan)")
    if out_dir.exists() and not out_dir.is_dir():
        raise CommandError(f"--dicom-out {out_dir}: exists and is not a directory")
    path, chosen = next(iter(dicom_scans.values()))
    try:
        return read_series_datasets(path, series=chosen)
    except vo.VolumeError as exc:
        raise CommandError(f"--dicom-out: {path}: {exc}") from None


def _write_dicom_out(out_dir: Path, result, artifacts, scan_names: list[str], index: int, sources: list
                     ) -> dict[str, Path]:
    """seg.dcm / sr.dcm of ``result`` for the DICOM scan ``scan_names[index]``; masks of other scans are left out."""
    import sys

    import voxel_ops as vo
    from cli.errors import CommandError
    from service.dicom import DicomOutputError, write_dicom_results

    name = scan_names[index]
    masks = {}
    for out in result.outputs:
        if out.kind != "mask" or out.path is None:
            continue
        if (out.source or (scan_names[0] if len(scan_names) == 1 else None)) != name:
            print(f"voxagent run: --dicom-out: output {out.name!r} lies on scan {out.source!r}, not on the DICOM "
                  f"scan {name!r}; it is left out of the SEG", file=sys.stderr)
            continue
        masks[out.name] = vo.load_volume(artifacts.path("local", out.path))
    try:
        return write_dicom_results(result, masks, sources, out_dir)
    except (DicomOutputError, vo.VolumeError, OSError) as exc:
        raise CommandError(f"--dicom-out: {exc}") from None
