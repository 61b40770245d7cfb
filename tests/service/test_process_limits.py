"""Worker processes start with the address-space limit of their settings (issue 23: never called)."""
from __future__ import annotations

import os
import subprocess
import sys


def _run(env: dict[str, str], via_start_hook: bool = False) -> str:
    call = ("from service.workers import celery_app, presence\n"
            "presence.start_for_worker = lambda settings: None\n"  # no broker here
            "celery_app._warm_models()\nok = True" if via_start_hook else
            "from service.workers.process_limits import apply_worker_limits\nok = apply_worker_limits(get_settings())")
    code = "import resource\nfrom service.settings import get_settings\n" + call + \
        "\nprint(ok, resource.getrlimit(resource.RLIMIT_AS)[0])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, **env})
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().splitlines()[-1]


def test_an_agent_worker_caps_its_address_space():
    assert _run({"VOXAGENT_WORKER_QUEUES": "agent", "VOXAGENT_WORKER_ADDRESS_SPACE_MB": "8192"}) \
        == f"True {8192 * 1024 * 1024}"


def test_zero_means_no_limit():
    import resource

    assert _run({"VOXAGENT_WORKER_QUEUES": "agent", "VOXAGENT_WORKER_ADDRESS_SPACE_MB": "0"}) \
        == f"False {resource.getrlimit(resource.RLIMIT_AS)[0]}"


def test_the_worker_start_hook_sets_it():
    # the hook Celery calls in every worker process (worker_process_init; solo/threads: at start)
    assert _run({"VOXAGENT_WORKER_QUEUES": "", "VOXAGENT_WORKER_ADDRESS_SPACE_MB": "8192",
                 "VOXAGENT_BROKER_URL": "redis://127.0.0.1:1/0"}, via_start_hook=True) == f"True {8192 * 1024 * 1024}"
