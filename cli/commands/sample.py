"""`voxagent sample [--out PATH]`: write a real brain scan to try the other commands on.

The MNI152 2009 T1 template (1 mm, 197 x 233 x 189) ships inside the nilearn wheel, a dependency,
so a newcomer needs no download and no data of their own: `voxagent run --prompt "..." $(voxagent
sample)` works on a fresh install. The file is copied, not linked, so it survives an upgrade of
nilearn; the path printed is the only line on stdout, for use in a shell.
"""
from __future__ import annotations

import argparse
from pathlib import Path

TEMPLATE = "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sample", help="write the MNI152 T1 template (from the nilearn wheel) and print its path")
    p.add_argument("--out", type=Path, default=Path("mni152_t1.nii.gz"),
                   help="where to write it (a .nii.gz file, or a directory to write mni152_t1.nii.gz into)")
    p.set_defaults(func=run)


def template_path() -> Path:
    """The template inside the installed nilearn package."""
    import nilearn

    return Path(nilearn.__file__).parent / "datasets" / "data" / TEMPLATE


def run(args: argparse.Namespace) -> int:
    import shutil

    from cli.errors import CommandError

    source = template_path()
    if not source.is_file():
        raise CommandError(f"the nilearn package has no {TEMPLATE} ({source}); reinstall nilearn")
    out: Path = args.out / "mni152_t1.nii.gz" if args.out.is_dir() else args.out
    if not out.name.endswith((".nii.gz", ".nii")):
        raise CommandError(f"--out {args.out}: give a .nii.gz file name or an existing directory")
    if not out.parent.is_dir():
        raise CommandError(f"--out {args.out}: no such directory: {out.parent}")
    if out.name.endswith(".nii.gz"):
        shutil.copyfile(source, out)
    else:  # a plain .nii was asked for: the same image, uncompressed
        import nibabel as nib

        nib.save(nib.load(source), out)
    print(out.resolve())
    return 0
