"""`voxagent exec --scan t1=PATH [--scan ...] --code FILE|-`: run a program in the sandbox, no language model.

A scan PATH is a NIfTI file, or a DICOM series: a folder, a ``.zip`` or one multi-frame file
(``--series t1=INDEX|UID`` picks one where the folder holds several; the refusal lists them). A 4D
NIfTI series needs ``--frame t1=INDEX`` (0-based): that frame is the scan.

Scripted, reproducible analysis, and how a user replays a trace. Steps: if the program contains the
end-of-step marker `<STEP>`, the pieces between markers are the steps; otherwise blank lines
separate steps. Phis come from the phi bank of the model directory (or the default bank); `<MOD>`
markers in the code are accepted and ignored for that reason, unless ``--phis RESULT.json`` (the
result document of a model run, ``voxagent run --json``) gives each step the phis its trace recorded:
then the steps run with the model's own phis and give that run's masks. Output volumes go to --out.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

STEP_MARKER = "<STEP>"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("exec", help="run a sandbox program on scans (no language model)")
    p.add_argument("--scan", action="append", required=True, metavar="NAME=PATH",
                   help="an input scan; NAME becomes its variable in the program (repeatable)")
    p.add_argument("--modality", action="append", default=[], metavar="NAME=MODALITY",
                   help="modality of a scan, e.g. t1=T1, flair=FLAIR, ct=CT (repeatable; DICOM scans "
                        "default to the modality their headers give)")
    p.add_argument("--series", action="append", default=[], metavar="NAME=INDEX|UID",
                   help="which series of a DICOM folder/zip holding several to read as scan NAME: its index "
                        "in the listing the error shows, or its SeriesInstanceUID (repeatable)")
    p.add_argument("--frame", action="append", default=[], metavar="NAME=INDEX",
                   help="which frame (0-based) of a 4D NIfTI series to read as scan NAME (repeatable)")
    p.add_argument("--code", required=True, help="program file, or - to read it from stdin")
    p.add_argument("--phis", type=Path, default=None, metavar="RESULT.json",
                   help="replay a model run: the result document (run --json) whose trace gives each step "
                        "its phis, one per <MOD> marker (steps in the same order as the trace)")
    p.add_argument("--out", type=Path, default=Path("voxagent-out"), help="directory for output volumes")
    p.add_argument("--model", type=Path, default=None,
                   help="checkpoint directory with vision weights and phi bank (default: the service's "
                        "models directory, VOXAGENT_MODELS_DIR or the shipped model)")
    p.add_argument("--json", action="store_true", help="print the result document as JSON")
    p.set_defaults(func=run)


def split_steps(program: str) -> list[str]:
    """Steps of a program: between <STEP> markers if any, else separated by blank lines."""
    if STEP_MARKER in program:
        pieces = program.split(STEP_MARKER)
    else:
        pieces, current = [], []
        for line in program.splitlines():
            if line.strip():
                current.append(line)
            elif current:
                pieces.append("\n".join(current))
                current = []
        if current:
            pieces.append("\n".join(current))
    return [p.strip("\n") for p in pieces if p.strip()]


def _pairs(items: list[str], what: str) -> dict[str, str]:
    from cli.errors import CommandError

    out: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.isidentifier() or not value:
            raise CommandError(f"{what} must look like NAME=VALUE with NAME an identifier, got {item!r}")
        if name in out:
            raise CommandError(f"{what} {name!r} given twice")
        out[name] = value
    return out


def parse_frame_option(name: str, value: str | None) -> int | None:
    """``--frame NAME=INDEX``: the index as an int (a CommandError, exit 2, unless a non-negative integer)."""
    from cli.errors import CommandError

    if value is None:
        return None
    if not (value.isascii() and value.isdigit() and len(value) <= 6):
        raise CommandError(f"--frame {name}={value}: the frame must be an index 0, 1, ... of the 4D series")
    return int(value)


def load_scan_argument(name: str, path: Path, modality: str | None, series: str | None = None,
                       frame: str | None = None):
    """Read the scan a user named on the command line (NIfTI file, DICOM folder / zip / file).

    Returns the volume and the SHA-256 of its bytes (of every file, in path order, for a folder).
    Any unusable input becomes a CommandError (exit 2) with the reader's message.
    """
    import hashlib

    import voxel_ops as vo
    from cli.errors import CommandError

    if not path.exists():
        raise CommandError(f"scan {name}: no such file or folder: {path}")
    dicom = vo.is_dicom_source(path)
    if series is not None and not dicom:
        raise CommandError(f"--series {name}=...: scan {name} ({path}) is not a DICOM folder or archive")
    if frame is not None and dicom:
        raise CommandError(f"--frame {name}=...: scan {name} ({path}) is a DICOM series, not a 4D NIfTI file")
    index = parse_frame_option(name, frame)
    chosen: int | str | None = int(series) if series is not None and series.isdigit() else series
    meta = vo.VolumeMeta(modality=modality) if dicom else vo.VolumeMeta(modality=modality, source_name=path.name)
    try:
        if index is not None:
            volume = vo.load_volume(path, meta=meta, frame=index)
        else:
            volume = vo.load_scan(path, meta=meta, series=chosen)
        digest = hashlib.sha256()
        files = sorted(p for p in path.rglob("*") if p.is_file() and not p.is_symlink()) if path.is_dir() else [path]
        for file in files:
            with open(file, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(block)
    except vo.MixedSeriesError as exc:
        raise CommandError(f"scan {name} ({path}): {exc}; on the command line: --series {name}=INDEX") from None
    except vo.DimensionError as exc:
        hint = f"; on the command line: --frame {name}=INDEX" if "4D series" in str(exc) else ""
        raise CommandError(f"scan {name} ({path}): {exc}{hint}") from None
    except (vo.VolumeError, OSError) as exc:
        raise CommandError(f"scan {name} ({path}): {exc}") from None
    return volume, digest.hexdigest()


def read_trace_phis(path: Path, steps: int) -> list:
    """Per step, the phis (float32 tensors) a result document's trace recorded, or None (bank phis)."""
    import json

    import torch

    from api_schemas.results import StepTrace
    from cli.errors import CommandError

    try:
        trace = [StepTrace.model_validate(t) for t in json.loads(path.read_text(encoding="utf-8"))["trace"]]
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
        raise CommandError(f"--phis {path}: not a result document with a trace ({type(exc).__name__})") from None
    if len(trace) != steps:
        raise CommandError(f"--phis {path}: the trace has {len(trace)} step(s), the program {steps}")
    out = []
    for step in trace:
        if step.phi_count and not step.phis:
            raise CommandError(f"--phis {path}: trace step {step.index} used {step.phi_count} phi(s) but records none")
        out.append([torch.tensor(p, dtype=torch.float32) for p in step.phis] if step.phis else None)
    return out


def _read_program(source: str) -> str:
    from cli.errors import CommandError

    if source == "-":
        return sys.stdin.read()
    try:
        return Path(source).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CommandError(f"cannot read program {source}: {exc}") from None


def run(args: argparse.Namespace) -> int:
    from agent.functions import default_registry
    from agent.phi_bank import PhiBank
    from agent.sandbox import Sandbox
    from agent.vision_client import LocalVisionClient
    from api_schemas.limits import MAX_CODE_CHARS, scan_name_problem
    from api_schemas.results import AnalysisStatus
    from cli.errors import CommandError, default_models_dir

    scans = _pairs(args.scan, "--scan")
    modalities = _pairs(args.modality, "--modality")
    from cli.commands.run import check_modality

    for modality in modalities.values():
        check_modality(modality)
    series = _pairs(args.series, "--series")
    frames = _pairs(args.frame, "--frame")
    for option, given in (("--modality", modalities), ("--series", series), ("--frame", frames)):
        unknown = set(given) - set(scans)
        if unknown:
            raise CommandError(f"{option} names a scan that was not given: {sorted(unknown)[0]}")
    for name in scans:
        problem = scan_name_problem(name, frozenset(default_registry()))
        if problem:
            raise CommandError(problem)
    steps = split_steps(_read_program(args.code))
    if not steps:
        raise CommandError("the program is empty")
    for index, code in enumerate(steps):
        if len(code) > MAX_CODE_CHARS:
            raise CommandError(f"step {index} has {len(code)} characters; the limit is {MAX_CODE_CHARS}")

    replay = read_trace_phis(args.phis, len(steps)) if args.phis is not None else [None] * len(steps)

    volumes, checksums = {}, {}
    for name, path in scans.items():
        volumes[name], checksums[name] = load_scan_argument(name, Path(path), modalities.get(name),
                                                            series.get(name), frames.get(name))

    from vision.engine import VisionEngine  # torch: only once the inputs are known to be good

    model_dir: Path = args.model or default_models_dir()
    if (model_dir / "vision.safetensors").is_file():
        engine, model_name = VisionEngine.load(model_dir), model_dir.name
    else:
        print(f"voxagent exec: warning: no trained vision weights in {model_dir}; using an untrained "
              "(random) tiny network, so generated masks are meaningless", file=sys.stderr)
        engine, model_name = VisionEngine("tiny"), "untrained tiny (random init)"
    sandbox = Sandbox(volumes, client=LocalVisionClient(engine), phi_bank=PhiBank.for_model_dir(model_dir),
                      output_dir=args.out)
    failure = None
    try:
        for index, code in enumerate(steps):
            outcome = sandbox.execute_step(code, replay[index])
            if outcome.error:
                failure = f"step {index}: {outcome.error}"
                break
            if outcome.stopped:
                if index + 1 < len(steps):
                    print(f"voxagent exec: warning: stop() in step {index}; {len(steps) - index - 1} "
                          "later step(s) not run", file=sys.stderr)
                break
    finally:
        sandbox.close()
        engine.close()
    result = sandbox.result(status=AnalysisStatus.failed if failure else None, error=failure)
    result.model = model_name
    result.input_checksums = checksums
    if args.json:
        print(result.model_dump_json(indent=2))
    else:
        _print_summary(result)
    if failure:
        raise CommandError(failure)
    return 0


def _print_summary(result) -> None:
    if result.text:
        print(result.text)
    for metric in result.metrics:
        unit = f" {metric.unit}" if metric.unit else ""
        print(f"  {metric.name}: {metric.value}{unit}")
    for output in result.outputs:
        print(f"  output {output.name}: {output.path}")
