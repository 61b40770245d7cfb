"""Sentence grounding: link each sentence of an answer to the metrics and the step its numbers come from.

Why: a report is only worth reading if every number in it can be traced to the code that measured
it (issue 20, "A grounded report"). The sandbox already records every quantity a step reads, formats
into text or responds as a `Metric` with its name, value, unit and step; answers state those values
in the library's text form (``agent.functions.types.number_text``: "1234.5 mL", "0.811", "2"). So the
link is recovered from the text: split the answer into sentences, find the numbers in each, and match
each number (with the unit that follows it) against the formatted values of the metrics.

Never invent a link: a number no metric formats to stays unlinked (listed in ``unlinked``); when
several metrics format to the same text, the words around the number must single one out (its
name's words: "left ... 0.1 mL" is the left hippocampus, not the right); otherwise it stays unlinked.
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from agent.functions.types import UNIT_DECIMALS, number_text
from api_schemas import AnalysisResult, Metric, ReportSentence

# a number not glued to a word or another number: "T2" and "3T" are no numbers, "-0.27" and "12.5" are
NUMBER = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?(?![\w]|\.\d)")
UNIT_AFTER = re.compile(r"\s?(%|[A-Za-z][A-Za-z0-9^]*)")
SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")
WORD = re.compile(r"[a-z]+")
KNOWN_UNITS = frozenset({*UNIT_DECIMALS, "HU", "cc", "L"})
# words every metric name shares or that say nothing about which metric it is
STOP_WORDS = frozenset({"of", "and", "to", "the", "in", "a", "an", "volume", "is", "at", "on", "for", "with"})


@dataclass(frozen=True)
class _Number:
    text: str  # the number as written
    unit: str | None  # the unit written right after it, if it is a unit
    start: int
    end: int


def split_sentences(text: str) -> list[str]:
    """Sentences of an answer: ends at '.', '!' or '?' followed by white space, and at line breaks.

    Decimal points never end a sentence (no white space follows them inside a number).
    """
    return [s.strip() for s in SENTENCE_END.split(text) if s and s.strip()]


def _numbers(sentence: str, units: frozenset[str]) -> list[_Number]:
    found = []
    for m in NUMBER.finditer(sentence):
        after = UNIT_AFTER.match(sentence, m.end())
        unit = after.group(1) if after and after.group(1) in units else None
        found.append(_Number(m.group(0), unit, m.start(), m.end()))
    return found


def _unit_matches(metric: Metric, number: _Number) -> bool:
    if metric.unit is None:
        return number.unit is None
    return number.unit is not None and number.unit.lower() == metric.unit.lower()


def _formats_to(metric: Metric, number: _Number) -> tuple[bool, bool]:
    """(exact, rounded): the metric's own text form is the number; or it rounds to it (a format spec).

    Rounding counts only with a decimal or a unit written: a bare "1" must not claim a ratio of 0.81.
    """
    value = metric.value
    if isinstance(value, (bool, str)) or not _unit_matches(metric, number):
        return False, False
    if number_text(value, metric.unit) == number.text:
        return True, False
    decimals = len(number.text.partition(".")[2])
    if decimals == 0 and metric.unit is None:
        return False, False
    rounded = f"{float(value):.{decimals}f}"
    if rounded.startswith("-") and float(rounded) == 0.0:  # "-0.0" prints as "0.0" in most answers
        rounded = rounded[1:]
    return False, rounded == number.text


def _words(text: str) -> set[str]:
    return {w for w in WORD.findall(text.lower()) if w not in STOP_WORDS}


def _same_word(a: str, b: str) -> bool:
    """Equal, or one inflection of the other ("ventricle"/"ventricles", "hippocampus"/"hippocampi")."""
    if len(a) >= 5 and len(b) >= 5:
        return a[:6] == b[:6]
    return a == b


def _score(name: str, context: set[str]) -> int:
    return sum(any(_same_word(w, c) for c in context) for w in _words(name))


def _single_out(candidates: list[int], metrics: Sequence[Metric], contexts: list[set[str]]) -> int | None:
    """The one candidate whose name the context supports best, nearest context first; None on a tie."""
    for context in contexts:
        scores = [_score(metrics[i].name, context) for i in candidates]
        best = max(scores)
        if best > 0 and scores.count(best) == 1:
            return candidates[scores.index(best)]
    return None


def _distinct(indices: list[int], metrics: Sequence[Metric]) -> list[int]:
    """One index per (name, value, unit): the same quantity recorded twice is one candidate (the first)."""
    seen: dict[tuple, int] = {}
    for i in indices:
        m = metrics[i]
        seen.setdefault((m.name, m.value, m.unit), i)
    return list(seen.values())


def ground_sentence(sentence: str, metrics: Sequence[Metric], units: frozenset[str] = KNOWN_UNITS
                    ) -> ReportSentence:
    """One sentence with the metrics its numbers come from (see the module docstring for the rules)."""
    linked: list[int] = []
    unlinked: list[str] = []
    numbers = _numbers(sentence, units | {m.unit for m in metrics if m.unit})
    for k, number in enumerate(numbers):
        exact, rounded = [], []
        for i, metric in enumerate(metrics):
            is_exact, is_rounded = _formats_to(metric, number)
            (exact if is_exact else rounded if is_rounded else []).append(i)
        candidates = _distinct(exact or rounded, metrics)
        chosen: int | None = None
        if len(candidates) == 1:
            chosen = candidates[0]
        elif candidates:
            before = sentence[numbers[k - 1].end if k else 0:number.start]
            chosen = _single_out(candidates, metrics, [_words(before), _words(sentence)])
        if chosen is None:
            unlinked.append(f"{number.text} {number.unit}" if number.unit else number.text)
        elif chosen not in linked:
            linked.append(chosen)
    steps = [metrics[i].step for i in linked if metrics[i].step is not None]
    return ReportSentence(text=sentence, metrics=[metrics[i].name for i in linked], metric_indices=linked,
                          step=max(steps) if steps else None, unlinked=unlinked)


def ground(text: str, metrics: Sequence[Metric], trace_length: int | None = None) -> list[ReportSentence]:
    """Every sentence of ``text`` linked to ``metrics`` (a result's own list, so indices refer to it).

    ``trace_length``: steps in the result's trace; a metric step outside it is no trace step and the
    sentence's step is then left out rather than pointing nowhere.
    """
    sentences = [ground_sentence(s, metrics) for s in split_sentences(text)]
    if trace_length is not None:
        for s in sentences:
            if s.step is not None and not 0 <= s.step < trace_length:
                s.step = None
    return sentences


def ground_result(result: AnalysisResult) -> list[ReportSentence]:
    """The report of a finished result: its answer text, grounded in its metrics and trace."""
    return ground(result.text, result.metrics, len(result.trace) if result.trace else None)


__all__ = ["ground", "ground_result", "ground_sentence", "split_sentences"]
