"""Sentence grounding: every sentence of an answer links to the metrics and step its numbers come from,
and a number nothing accounts for stays unlinked (agent.grounding)."""
from __future__ import annotations

from agent.grounding import ground, ground_result, split_sentences
from agent.runtime import AgentRuntime, RuntimeLimits
from agent.sandbox.outcome import StepOutcome
from api_schemas import AnalysisResult, Metric, ReportSentence, StepTrace
from tests.agent.conftest import RecordingExecutor
from tests.agent.test_runtime import scripted
from tests.agent.test_state import SCANS

METRICS = [
    Metric(name="intracranial volume volume", value=1412.3456, unit="mL", step=1),
    Metric(name="brain volume", value=1150.21, unit="mL", step=1),
    Metric(name="ratio of brain volume to intracranial volume volume", value=0.81442, step=1),
    Metric(name="left hippocampus volume", value=4.12, unit="mL", step=2),
    Metric(name="right hippocampus volume", value=4.08, unit="mL", step=2),  # both print as 4.1 mL
    Metric(name="asymmetry of left hippocampus volume and right hippocampus volume", value=0.0098, step=2),
    Metric(name="lesion component count", value=2, step=1),
    Metric(name="lesion volume", value=3.54, unit="mL", step=3),
]
TEXT = ("Intracranial volume: 1412.3 mL. Brain volume: 1150.2 mL (0.814 of ICV). "
        "Hippocampus: left 4.1 mL, right 4.1 mL, asymmetry index 0.010. "
        "Positive asymmetry indices mean the left side is larger. "
        "Lesions: 2 found, total volume 3.5 mL, side: left.")


def _result() -> AnalysisResult:
    trace = [StepTrace(index=i, code=f"step {i}") for i in range(4)]
    return AnalysisResult(text=TEXT, metrics=METRICS, trace=trace)


def test_sentences_split_at_sentence_ends_never_inside_numbers():
    assert split_sentences(TEXT) == [
        "Intracranial volume: 1412.3 mL.", "Brain volume: 1150.2 mL (0.814 of ICV).",
        "Hippocampus: left 4.1 mL, right 4.1 mL, asymmetry index 0.010.",
        "Positive asymmetry indices mean the left side is larger.",
        "Lesions: 2 found, total volume 3.5 mL, side: left."]
    assert split_sentences("One.\nTwo 2.5 mL!  Three?") == ["One.", "Two 2.5 mL!", "Three?"]


def test_each_sentence_links_to_its_metrics_and_the_step_that_computed_them():
    report = ground_result(_result())
    assert [(s.metrics, s.step) for s in report] == [
        (["intracranial volume volume"], 1),
        (["brain volume", "ratio of brain volume to intracranial volume volume"], 1),
        (["left hippocampus volume", "right hippocampus volume",
          "asymmetry of left hippocampus volume and right hippocampus volume"], 2),
        ([], None),  # no number: nothing to link
        (["lesion component count", "lesion volume"], 3),  # values of steps 1 and 3: the latest
    ]
    assert report[2].metric_indices == [3, 4, 5]
    assert all(not s.unlinked for s in report)
    assert [s.text for s in report] == split_sentences(TEXT)


def test_equal_texts_are_told_apart_by_the_words_before_them_or_stay_unlinked():
    left_right = ground("Right 4.1 mL and left 4.1 mL.", METRICS)[0]
    assert left_right.metrics == ["right hippocampus volume", "left hippocampus volume"]
    (tie,) = ground("Something measures 4.1 mL.", METRICS)  # nothing says which hippocampus
    assert tie.metrics == [] and tie.unlinked == ["4.1 mL"] and tie.step is None


def test_an_untraceable_number_stays_unlinked():
    (s,) = ground("The brain measures 1150.2 mL on a 3 T scanner, 1150.2 mm wide and 77.7 mL in all.", METRICS)
    assert s.metrics == ["brain volume"] and s.step == 1
    assert s.unlinked == ["3", "1150.2 mm", "77.7 mL"]  # no such value; wrong unit; no such value
    (count,) = ground("There is 1 lesion.", METRICS)  # a bare 1 never claims a ratio of 0.81
    assert count.metrics == [] and count.unlinked == ["1"]
    (t2,) = ground("Bright on T2 and FLAIR.", METRICS)  # letters glued to a digit are no number
    assert t2.unlinked == [] and t2.metrics == []


def test_a_format_spec_still_links_but_only_by_rounding_with_decimals_or_a_unit():
    (s,) = ground("Brain 1150 mL, fraction 0.81.", METRICS)
    assert s.metrics == ["brain volume", "ratio of brain volume to intracranial volume volume"]


def test_a_result_without_numbers_has_sentences_without_links():
    report = ground("Here is the segmentation of the brain. It looks fine!", METRICS)
    assert [(s.text, s.metrics, s.step, s.unlinked) for s in report] == [
        ("Here is the segmentation of the brain.", [], None, []), ("It looks fine!", [], None, [])]
    assert ground("", METRICS) == []


def test_a_step_outside_the_trace_is_not_linked():
    (s,) = ground("Lesion volume 3.5 mL.", METRICS, trace_length=2)
    assert s.metrics == ["lesion volume"] and s.step is None


def test_old_records_without_a_report_still_parse_and_new_ones_round_trip():
    old = AnalysisResult.model_validate({"status": "succeeded", "text": "ok", "metrics": [], "outputs": [],
                                         "trace": [], "error": None, "warnings": []})
    assert old.report == []
    new = _result().model_copy(update={"report": ground_result(_result())})
    assert AnalysisResult.model_validate_json(new.model_dump_json()) == new
    assert isinstance(new.report[0], ReportSentence)


def test_the_runtime_fills_the_report_of_a_succeeded_run(tokenizer, random_model):
    step1 = 'e = encode(t1<MOD>, flair<MOD>)\nm = generate(e, flair<MOD>, "lesion")\nv = volume(m)\nread(v)\n'
    step2 = 'respond(f"The lesion measures {v}. Nothing else.")\nstop()\n'
    executor = RecordingExecutor([
        StepOutcome(metrics=[Metric(name="lesion volume", value=12.5, unit="mL")]),
        StepOutcome(responses=["The lesion measures 12.5 mL. Nothing else."], stopped=True),
    ])
    runtime = AgentRuntime(scripted(tokenizer, random_model, [step1, step2]), tokenizer, executor,
                           limits=RuntimeLimits(max_steps=5))
    result = runtime.run("How large is the lesion?", SCANS)
    assert result.status == "succeeded"
    assert [(s.text, s.metrics, s.step) for s in result.report] == [
        ("The lesion measures 12.5 mL.", ["lesion volume"], 0), ("Nothing else.", [], None)]
