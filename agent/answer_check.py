"""Whether an answer may be reported as ``succeeded``: the gate both the agent loop and scripted
programs pass their final answer through.

A run that stopped is not yet a run that answered. Seen in the wild: "Here is {r}." (an f-string
whose placeholder was never filled because the text was not an f-string), "}." (token soup),
"Here is the T1 scan croppedrespond(" (program code in the text), "Noc, the cerebellumb}." (a
stray brace: no value the sandbox formats has braces, so any left in an answer is residue of a
broken f-string), "... brainstem, brainstem, brainstem ..." (a decoder stuck in a loop), and
answers whose last step failed. Those are ``no_answer`` with the reason, never
``succeeded``.
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

PLACEHOLDER = re.compile(r"\{[A-Za-z_][A-Za-z0-9_.\[\]'\"]*(?:![rsa])?(?::[^{}]*)?\}")
CONTENT = re.compile(r"[A-Za-z]{2,}|\d")
# one word three times in a row, whatever punctuation lies between
LOOP = re.compile(r"\b([A-Za-z_]{3,})\b(?:\W+\1\b){2,}", re.IGNORECASE)
# code of the program inside its own answer: a call of the control functions or a marker token
CODE = re.compile(r"(?:encode|generate|respond|read|output|stop)\(|<(?:MOD|ENC|STEP|FB)>")


def answer_problem(text: str) -> str | None:
    """Why ``text`` is not an answer (None if it is): unfilled placeholders, no words at all, stray
    braces or a word looping."""
    stripped = text.strip()
    if not stripped:
        return None  # no text: metrics or outputs may still answer; callers decide on emptiness
    holes = PLACEHOLDER.findall(stripped)
    if holes:
        return f"the answer has unfilled placeholders ({', '.join(dict.fromkeys(holes))})"
    if not CONTENT.search(stripped):
        return f"the answer {stripped[:40]!r} has no words or numbers"
    brace = re.search(r"[{}]", stripped)
    if brace:
        at = brace.start()
        return f"the answer has a stray brace (garbled text: {stripped[max(0, at - 30):at + 10]!r})"
    code = CODE.search(stripped)
    if code:
        at = code.start()
        return f"the answer has program code in it (garbled text: {stripped[max(0, at - 30):at + 10]!r})"
    loop = LOOP.search(stripped)
    if loop:
        return f"the answer repeats {loop.group(1)!r} (garbled text: {loop.group(0)[:60]!r})"
    return None


def ungrounded_problem(responses: Sequence[str], measured: bool, read_texts: int,
                       library_texts: Iterable[str] = ()) -> str | None:
    """Why a *decoded* answer rests on nothing the run computed (None when it rests on something):
    no metric or output (``measured``), no value read back from a step that ran (``read_texts``),
    and no text the library wrote (``library_texts``, e.g. the capability answer) among the responses.

    Why: every task program answers from what it measured, read or output, or with
    ``respond(capabilities())``; a plain sentence with none of that behind it is the model talking
    after its real steps failed (seen on dev requests: "The lesion volume is <scan flair: ...> and
    seq removed." after ``volume()`` failed, "The lesion is in the lesion centroid is in the frontal
    lobes(..." after ``generate()`` failed). Programs a user writes are not held to this.
    """
    if measured or read_texts or not responses:
        return None
    texts = [t for t in library_texts if t]
    if any(lib in r for r in responses for lib in texts):
        return None
    return "the answer rests on nothing the program measured, read back or output"


__all__ = ["answer_problem", "ungrounded_problem"]
