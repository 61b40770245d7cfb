"""The package boundaries of DESIGN.md, checked on the source (every import, also those inside
functions): `service/` never imports `training/`; nothing below `service/` imports Celery or
FastAPI; `api_schemas/` imports pydantic and itself only. The CLI (`cli/`) may import anything."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# the packages below service/ in the design's layering
LOWER = ("agent", "vision", "voxel_ops", "api_schemas", "training")
WEB_AND_QUEUE = {"celery", "kombu", "fastapi", "starlette", "uvicorn"}


def imported_roots(package: str) -> dict[str, set[str]]:
    """Top-level module names each file of ``package`` imports (absolute imports)."""
    out: dict[str, set[str]] = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
        out[str(path.relative_to(ROOT))] = names
    return out


def test_service_never_imports_training():
    offenders = {f for f, names in imported_roots("service").items() if "training" in names}
    assert not offenders, offenders


@pytest.mark.parametrize("package", LOWER)
def test_no_celery_or_fastapi_below_service(package):
    offenders = {f: names & WEB_AND_QUEUE for f, names in imported_roots(package).items() if names & WEB_AND_QUEUE}
    assert not offenders, offenders


@pytest.mark.parametrize("package", LOWER)
def test_lower_packages_never_import_service_or_cli(package):
    offenders = {f for f, names in imported_roots(package).items() if names & {"service", "cli"}}
    assert not offenders, offenders


def test_api_schemas_import_pydantic_only():
    stdlib_ok = {"__future__", "datetime", "enum", "keyword", "re", "typing", "collections", "uuid", "pathlib"}
    for f, names in imported_roots("api_schemas").items():
        assert names <= stdlib_ok | {"pydantic", "api_schemas"}, (f, names - stdlib_ok)


def test_cli_without_the_training_package_says_so(monkeypatch, capsys):
    """A serving image has no training/ (Dockerfile): training commands exit 2 with a clear line."""
    import builtins

    from cli.main import main

    real_import = builtins.__import__

    def no_training(name, *args, **kwargs):
        if name == "training" or name.startswith("training."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_training)
    assert main(["eval", "--compare", "x"]) == 2
    assert "no training package" in capsys.readouterr().err


def test_serving_image_has_no_trainer():
    from pathlib import Path

    dockerfile = (Path(__file__).resolve().parents[1] / "Dockerfile").read_text()
    assert "COPY service service" in dockerfile and "COPY training" not in dockerfile
