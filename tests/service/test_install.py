"""`make install` takes the CPU build of torch unless asked for the GPU one (`make -n`: nothing runs)."""
from __future__ import annotations

import os
import shutil
import subprocess

import pytest

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs make")


def pip_lines(repo_root, tmp_path, *args: str, wheels: str) -> list[str]:
    env = {**os.environ, "PIP_FIND_LINKS": wheels}
    out = subprocess.run(["make", "-n", "-C", str(repo_root), "install", f"VENV={tmp_path / 'venv'}", *args],
                         capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    return [line for line in out.stdout.splitlines() if "pip install" in line and "--upgrade pip" not in line]


def test_local_cpu_wheel_then_cpu_index_then_cuda_on_request(repo_root, tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    wheel = wheels / "torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl"
    wheel.write_bytes(b"")
    local = pip_lines(repo_root, tmp_path, wheels=str(wheels))
    assert str(wheel) in local[0] and "-e '.[test]'" in local[1]
    index = pip_lines(repo_root, tmp_path, wheels=str(tmp_path / "none"))
    assert "'torch==2.13.0+cpu' --extra-index-url https://download.pytorch.org/whl/cpu" in index[0]
    cuda = pip_lines(repo_root, tmp_path, "TORCH=cuda", wheels=str(wheels))
    assert "'torch==2.13.0+cu128' --extra-index-url https://download.pytorch.org/whl/cu128" in cuda[0]
    assert all("cu1" not in line and "cuda" not in line for line in local + index)


def test_the_pinned_torch_satisfies_the_project_range(repo_root):
    import tomllib

    from packaging.specifiers import SpecifierSet

    deps = tomllib.loads((repo_root / "pyproject.toml").read_text())["project"]["dependencies"]
    spec = SpecifierSet(next(d for d in deps if d.startswith("torch"))[len("torch"):])
    assert all(v in spec for v in ("2.13.0", "2.13.0+cpu", "2.13.0+cu128"))
