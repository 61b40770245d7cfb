"""`voxagent run --prompt "..." scan.nii.gz [NAME=PATH ...]`: one analysis, locally, no server.

Runs the same task function as the service (embedded, in a throw-away data directory) and
prints the same result document; output volumes are written to --out with their paths in it.
A scan PATH is a NIfTI file or a DICOM series (folder, ``.zip`` or multi-frame file); a DICOM
series is read with voxel_ops' checks, and its modality and acquisition date reach the analysis.
"""
from __future__ import annotations

import argparse
from pathlib import Path


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
    p.add_argument("--out", type=Path, default=Path("voxagent-out"), help="directory for output volumes")
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

    import voxel_ops as vo
    from api_schemas.requests import AnalysisRequest, VolumeInput
    from api_schemas.results import AnalysisResult, AnalysisStatus
    from cli.commands.exec import _pairs, load_scan_argument
    from cli.errors import CommandError
    from service.settings import Settings
    from service.storage.artifacts import ArtifactStore
    from service.storage.records import SQLiteRecordStore
    from service.tasks.analysis import run_analysis
    from service.tasks.context import TaskContext
    from service.volumes import validate_file

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
        unknown = set(series) - {name for name, _ in scans if name}
        if unknown:
            raise CommandError(f"--series names a scan that was not given as NAME=PATH: {sorted(unknown)[0]}")
        refs = []
        for i, (name, path) in enumerate(scans):
            if not path.exists():
                raise CommandError(f"no such scan: {path}")
            modality = args.modality[i] if i < len(args.modality) else None
            date, given = None, path
            if vo.is_dicom_source(path):  # the service stores NIfTI: read the series here, store it as NIfTI
                label = name or f"scan {i + 1}"
                volume, _ = load_scan_argument(label, path, modality, series.get(name or ""))
                modality, date = volume.meta.modality, volume.meta.acquisition_date
                path = vo.save_volume(volume, Path(tmp) / f"dicom_{i}.nii.gz")
            elif not path.is_file():
                raise CommandError(f"no such scan file: {path}")
            elif name in series:
                raise CommandError(f"--series {name}=...: {path} is not a DICOM folder or archive")
            try:
                record = validate_file(records, artifacts, "local", path, modality=modality, date=date)
            except ValueError as exc:
                raise CommandError(f"{given}: {exc}") from exc
            refs.append(VolumeInput(id=record.id, name=name, modality=modality, date=date))
        try:
            req = AnalysisRequest(prompt=args.prompt, code=code, volumes=refs)
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
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
            outputs.append(out.model_copy(update={"path": str(dst.resolve())}))
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
        if result.error:
            print(f"  error: {result.error}")
    return 0 if result.status != AnalysisStatus.failed else 1
