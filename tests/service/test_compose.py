"""docker-compose.yml: every service runs a real entry point (a voxagent subcommand, or the
redis/flower images' own programs) and the deployment has the shape the design asks for."""
from __future__ import annotations

import pytest

from cli.main import build_parser

yaml = pytest.importorskip("yaml", reason="PyYAML is a dependency of uvicorn[standard]; needed to parse compose")


def _subcommands() -> set[str]:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return set(sub.choices)


def test_compose_commands_resolve_to_real_entry_points(repo_root):
    doc = yaml.safe_load((repo_root / "docker-compose.yml").read_text())
    services = doc["services"]
    assert {"api", "redis", "agent-worker", "vision-worker", "flower"} <= set(services)
    subcommands = _subcommands()
    parser = build_parser()
    for name, svc in services.items():
        cmd = svc["command"]
        image = svc.get("image", "")
        if cmd[0] == "voxagent":
            assert cmd[1] in subcommands, f"{name}: voxagent {cmd[1]} does not exist"
            args = parser.parse_args(cmd[1:])  # the arguments themselves must parse
            assert callable(args.func)
        elif image.startswith("redis:"):
            assert cmd[0] == "redis-server"
        elif "flower" in image:
            assert cmd[0] == "celery" and "flower" in cmd
        else:
            pytest.fail(f"{name}: command {cmd} is not a known entry point")
    assert services["redis"]["command"][-2:] == ["--appendonly", "yes"]
    assert "vision" in services["vision-worker"]["command"] and "agent" in services["agent-worker"]["command"]


def test_health_checks_auth_and_keys_are_in_the_compose_file(repo_root):
    text = (repo_root / "docker-compose.yml").read_text()
    services = yaml.safe_load(text)["services"]
    parser = build_parser()
    assert "/healthz" in " ".join(services["api"]["healthcheck"]["test"])
    for name, queue in (("agent-worker", "agent"), ("vision-worker", "vision")):
        test = services[name]["healthcheck"]["test"]
        assert test[0] == "CMD" and test[1] == "voxagent"
        args = parser.parse_args(test[2:])  # a real entry point: the worker's own health check
        assert args.command == "worker" and args.check and args.queues == queue
    flower = " ".join(services["flower"]["command"])
    assert "--basic-auth=${FLOWER_BASIC_AUTH:?" in flower  # compose refuses to start Flower without it
    assert "voxagent keys create" in text and "Redis" in text  # where keys live in this deployment


def test_cpu_torch_by_default_and_the_gpu_build_on_request(repo_root):
    doc = yaml.safe_load((repo_root / "docker-compose.yml").read_text())
    assert doc["x-voxagent"]["build"]["args"]["TORCH"] == "cpu"
    assert "deploy" not in doc["services"]["vision-worker"]  # a laptop without a GPU can start it
    gpu = yaml.safe_load((repo_root / "docker-compose.gpu.yml").read_text())["services"]["vision-worker"]
    assert gpu["build"]["args"]["TORCH"] == "cuda"
    assert gpu["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    dockerfile = (repo_root / "Dockerfile").read_text()
    assert "ARG TORCH=cpu" in dockerfile and "download.pytorch.org/whl/${flavour}" in dockerfile
