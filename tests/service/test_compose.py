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
    devices = services["vision-worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"]
    assert "vision" in services["vision-worker"]["command"] and "agent" in services["agent-worker"]["command"]
