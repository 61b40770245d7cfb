"""One source for limits and reserved names (`api_schemas.limits`): the door, the sandbox, the agent
runtime, the settings and the CLI agree, so a request the API accepts never fails for its size or
its scan names once it runs (issue 18)."""
from __future__ import annotations

import keyword

import pytest
from pydantic import ValidationError

from agent.functions import default_registry
from agent.runtime import RuntimeLimits
from agent.sandbox import Sandbox, SandboxLimits
from api_schemas import limits
from api_schemas.batches import BatchItem, BatchRequest
from api_schemas.requests import AnalysisRequest, VolumeInput
from service.settings import Settings
from tests.sandbox.conftest import RecordingClient, phantom


def test_reserved_names_cover_the_whole_function_library():
    library = set(default_registry())
    assert limits.LIBRARY_FUNCTIONS == library  # a new library function must be listed in limits too
    assert limits.RESERVED_SCAN_NAMES >= library | set(keyword.kwlist)


def test_defaults_read_the_limits_module():
    sandbox, runtime, settings = SandboxLimits(), RuntimeLimits(), Settings(_env_file=None)
    assert sandbox.max_code_chars == limits.MAX_CODE_CHARS
    assert sandbox.call_timeout_s == limits.CALL_TIMEOUT_S and sandbox.job_timeout_s == limits.JOB_TIMEOUT_S
    assert runtime.max_wall_s == settings.agent_max_wall_s == limits.AGENT_MAX_WALL_S
    assert settings.task_time_limit_s == limits.TASK_TIME_LIMIT_S
    assert settings.max_volumes_per_analysis == limits.MAX_VOLUMES_PER_ANALYSIS
    assert settings.max_batch_items == limits.MAX_BATCH_ITEMS
    assert not hasattr(settings, "max_code_chars") and not hasattr(settings, "max_prompt_chars")
    # inner limits answer before the outer ones kill the task
    assert limits.CALL_TIMEOUT_S <= limits.JOB_TIMEOUT_S < limits.TASK_TIME_LIMIT_S
    assert limits.AGENT_MAX_WALL_S < limits.TASK_TIME_LIMIT_S


@pytest.mark.parametrize("model,field", [(AnalysisRequest, "code"), (AnalysisRequest, "prompt"),
                                         (BatchItem, "code"), (BatchItem, "prompt"),
                                         (BatchRequest, "code"), (BatchRequest, "prompt")])
def test_schemas_state_the_limits(model, field):
    schema = model.model_json_schema()["properties"][field]
    lengths = {s.get("maxLength") for s in schema.get("anyOf", [schema])} - {None}
    assert lengths == {limits.MAX_CODE_CHARS if field == "code" else limits.MAX_PROMPT_CHARS}


def _padded_program(chars: int) -> str:
    body = 'm = threshold(t1, 50)\nv = volume(m)\nread(v)\n'
    return body + "#" * (chars - len(body))


def test_the_longest_program_the_door_accepts_runs_and_one_more_character_is_refused_at_the_door():
    longest = _padded_program(limits.MAX_CODE_CHARS)
    AnalysisRequest(code=longest, volumes=[{"id": "v1", "name": "t1"}])
    box = Sandbox({"t1": phantom()}, client=RecordingClient())
    assert box.execute_step(longest).error is None
    with pytest.raises(ValidationError):
        AnalysisRequest(code=_padded_program(limits.MAX_CODE_CHARS + 1), volumes=[{"id": "v1"}])
    assert "characters" in box.execute_step(_padded_program(limits.MAX_CODE_CHARS + 1)).error


@pytest.mark.parametrize("name", sorted(limits.RESERVED_SCAN_NAMES))
def test_a_reserved_scan_name_is_refused_by_the_schema_and_the_sandbox_alike(name):
    with pytest.raises(ValidationError):
        VolumeInput(id="v1", name=name)
    with pytest.raises(ValueError):
        Sandbox({name: phantom()}, client=RecordingClient())


@pytest.mark.parametrize("name", ["t1", "flair", "scan2", "mprage_1", "a" * limits.MAX_SCAN_NAME_CHARS])
def test_a_good_scan_name_is_accepted_by_both(name):
    assert VolumeInput(id="v1", name=name).name == name
    Sandbox({name: phantom()}, client=RecordingClient())


@pytest.mark.parametrize("name", ["_t1", "1t", "t-1", "tē", "a" * (limits.MAX_SCAN_NAME_CHARS + 1)])
def test_a_malformed_scan_name_is_refused_by_both(name):
    assert limits.scan_name_problem(name)
    with pytest.raises(ValidationError):
        VolumeInput(id="v1", name=name)
