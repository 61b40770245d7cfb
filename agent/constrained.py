"""Constrained decoding of agent steps: every decoded step is valid by construction.

Why: a greedy decoder that may emit any token writes undefined names (``left_b``), functions the
library does not have, targets the vision model cannot draw and half-formed syntax; the sandbox
then refuses the step and the run ends in an error the user cannot act on. Here the decoder may
only emit a token whose text keeps the step a *prefix of a program of the sandbox subset*:

- statements are ``name[, name...] = expression`` or a call of a library function, one per line,
  no indentation, no blank lines, nothing after ``stop()``, new names of at most 32 characters,
  single spaces between tokens;
- a name that is read must be defined (the scans and variables of the environment, or assigned by
  an earlier statement of this step); a name that is assigned must not be a library function, a
  keyword or start with ``_``; a called name must be a library function;
- calls bind like the registry binds them (positional then keyword, no duplicates, no missing
  required parameter, no surplus argument);
- each volume argument of ``encode``/``generate`` is a defined name directly followed by
  ``<MOD>``, and ``<MOD>`` appears nowhere else (not even as text inside a string, which the
  sandbox would strip as a marker); ``encode`` takes each scan at most once; given ``volumes``,
  that name is an image (a scan of the request), never an encoding or a mask (seen:
  ``generate(e, scan =e <MOD>, ...)``, after which the step ran on to its token limit);
- the target of ``generate`` is a string literal the loaded model supports; where the statement
  assigns the mask to a name that spells a target (``right_lateral_ventricle``, ``lesion_2``,
  ``wm``), the literal is a spelling of that same target (``name_targets``): seen, a model that
  wrote ``right_lateral_ventricle = generate(e, t1<MOD>, "`` and then the bilateral ``lateral
  ventricles``, whose answer then contradicts its own variable; and a program draws each
  (scan, target) pair once (``generated``: the pairs of earlier steps), so the baseline of a
  follow-up comparison cannot be measured twice;
- given ``numbers`` (``request_numbers``), a number literal is one the request states;
- given ``mentions`` (targets the request names, `agent.target_mentions.steering_targets`), while
  none of a named target's answers (itself, its sides, a sided one's union) is drawn, a target slot
  that can draw one draws only those, and a new name that spells another target is refused (the
  runtime asks for this only when a first draft of the step drew nothing the request names);
- expressions use only what the validator allows (literals, f-strings with allow-listed format
  specs, arithmetic, comparisons, ``and/or/not``, conditional expressions, lists, tuples, constant
  subscripts);
- given ``flat=True`` (what the runtime asks for), only the shape every task program has: one name
  assigned one call or literal, or a call statement; arguments positional, each a defined name,
  a number, a string or an f-string whose fields are names; a name is assigned once in a step
  (no ``csf = ...`` twice); a call inside a call only where
  ``NESTED_CALLS`` allows it (``respond(capabilities())``). Why: the training programs never
  leave that shape, and a model that does is lost (seen on dev requests: ``generate(e, scan =
  t1<MOD>, target ='thalamus')``, ``crop(t1, brain, capabilities())``, ``lesion = generate(...),
  centroid(ratio(volume(volume(...`` running to the token limit).

The checker is a character-level pushdown automaton (a lexer with one pending lexeme under a
parser stack of small tuples). It is incremental: ``feed`` costs time proportional to the text fed,
and a candidate token is tried on a copy of the state, which is a handful of attribute copies
because the stack is an immutable tuple. Partial identifiers, target strings and format specs are
checked for *viability* (some completion exists), so a valid prefix never leads into a dead end.

It is deliberately a little stricter than Python where the task code never goes (comments,
semicolons, line continuations, raw/bytes/triple-quoted strings, newlines inside brackets, blank
lines): every such program has an equivalent the checker accepts.
"""
from __future__ import annotations

import bisect
import functools
import keyword
import logging
import re
import string
import weakref
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from agent.functions.registry import REQUIRED, ArgType, LibraryFunction
from agent.functions.types import Encoding, Mask, Quantity, Record, Scan
from agent.sandbox.formatting import spec_allowed
from agent.sandbox.limits import SandboxLimits
from agent.sandbox.markers import MOD_TOKEN

logger = logging.getLogger(__name__)

# Which parameters take a volume (followed by <MOD>) or a target string; the validator's
# `_collect_markers` and library `generate` define these roles.
VOLUME_PARAMS: dict[str, frozenset[str]] = {"encode": frozenset({"scans"}), "generate": frozenset({"scan"})}
# Calls that take each volume at most once: encoding one scan twice is never what a request means
# (seen: ``encode(t1_2020<MOD>, t1_2020<MOD>)`` for a change between 2020 and 2024, which then
# measured the first scan twice).
DISTINCT_VOLUMES = frozenset({"encode"})
TARGET_PARAMS: dict[str, frozenset[str]] = {"generate": frozenset({"target"})}
# flat style: the only calls that may stand as an argument, by the call they stand in
NESTED_CALLS: dict[str, frozenset[str]] = {"respond": frozenset({"capabilities"})}

# A new variable name may not run on: a model that keeps extending one wastes its whole token budget.
MAX_NEW_NAME = 32
_IDENT_START = frozenset(string.ascii_letters + "_")
_IDENT = frozenset(string.ascii_letters + string.digits + "_")
_DIGITS = frozenset(string.digits)
_QUOTES = frozenset("\"'")
_DOUBLE_OPS = frozenset({"==", "!=", "<=", ">=", "**", "//"})
_PENDING_OPS = {"=": ("=", "=="), "!": ("!=",), "<": ("<", "<="), ">": (">", ">="), "*": ("*", "**"),
                "/": ("/", "//")}
_SINGLE_OPS = frozenset("()[],+-%:}")
_BINOPS = frozenset({"+", "-", "*", "/", "//", "%", "**", "==", "!=", "<", "<=", ">", ">="})
_ESCAPES = frozenset("\\'\"ntr0")
_CONSTANTS = frozenset({"None", "True", "False"})
_CONSTANT_WORDS = tuple(sorted(_CONSTANTS))
_AFTER_OPERAND = (("and", "if", "in", "not", "or"), ("and", "else", "in", "not", "or"))  # by ternary phase
_SPEC_PREFIX = re.compile(r"[<>^]?[+-]?(\d{0,3})(?:\.(?:\d{1,2}[fegd%]?)?|[fegd%])?")  # prefixes of FORMAT_SPEC

_X0 = ("X", "op0", 0)  # a fresh expression: wants an operand, `not` allowed, not in a ternary condition

Frame = tuple[Any, ...]


# What a value is, for the flat style's argument types: the library's classes by short name.
_KIND_CLASSES: dict[str, type] = {"encoding": Encoding, "mask": Mask, "scan": Scan, "quantity": Quantity,
                                  "number": float, "text": str, "record": Record}
_ALL_KINDS = frozenset(_KIND_CLASSES)
ANY_KIND = frozenset({"any"})  # a name whose value the constraint does not know (fits everywhere)
_FIELD_KINDS = frozenset({"quantity", "number", "text", "record"})  # what an f-string field may show


def accepted_kinds(arg_type: ArgType) -> frozenset[str]:
    """The kinds of value a parameter of this type takes."""
    return frozenset(k for k, cls in _KIND_CLASSES.items() if issubclass(cls, arg_type.classes)
                     and not (arg_type.exclude and issubclass(cls, arg_type.exclude)))


def returned_kinds(returns: str) -> frozenset[str]:
    """The kinds a library function's ``returns`` text names (``"scan or mask"``: both; ``"None"``: none)."""
    words = set(re.findall(r"[a-z]+", returns.lower()))
    if "none" in words:
        return frozenset({"none"})
    return frozenset(words & set(_KIND_CLASSES)) or ANY_KIND


def value_kinds(value: Any) -> frozenset[str]:
    """The kinds of a value of the sandbox's environment (`StepConstraint`'s ``kinds``)."""
    if isinstance(value, bool):
        return ANY_KIND
    if isinstance(value, int):
        return frozenset({"number"})
    return frozenset(k for k, cls in _KIND_CLASSES.items() if isinstance(value, cls)) or ANY_KIND


def _fits(kinds: frozenset[str], accepted: frozenset[str] | None) -> bool:
    return accepted is None or "any" in kinds or bool(kinds & accepted)


@dataclass(frozen=True)
class Signature:
    """How a library function binds its arguments, and which ones are volumes or targets."""

    name: str
    params: tuple[str, ...]
    required: frozenset[str]  # non-variadic parameters without a default
    variadic: int | None  # index of the *param (takes every remaining positional argument)
    volume: frozenset[str] = frozenset()
    target: frozenset[str] = frozenset()
    kinds: tuple[frozenset[str], ...] = ()  # per parameter, the kinds it takes (empty: not known)
    returns: frozenset[str] = ANY_KIND

    @classmethod
    def of(cls, fn: LibraryFunction) -> "Signature":
        variadic = next((i for i, p in enumerate(fn.params) if p.variadic), None)
        return cls(fn.name, tuple(p.name for p in fn.params),
                   frozenset(p.name for p in fn.params if not p.variadic and p.default is REQUIRED), variadic,
                   VOLUME_PARAMS.get(fn.name, frozenset()), TARGET_PARAMS.get(fn.name, frozenset()),
                   tuple(accepted_kinds(p.type) for p in fn.params), returned_kinds(fn.returns))

    def accepts(self, param: str | None) -> frozenset[str] | None:
        """The kinds ``param`` takes (None: any value, as far as this signature knows)."""
        if param is None or not self.kinds:
            return None
        return self.kinds[self.params.index(param)]

    def role(self, param: str) -> str:
        return "vol" if param in self.volume else "target" if param in self.target else "expr"

    def positional(self, npos: int) -> str | None:
        """Parameter that the next positional argument binds to (after ``npos`` of them), or None."""
        if self.variadic is not None and npos >= self.variadic:
            return self.params[self.variadic]
        return self.params[npos] if npos < len(self.params) else None

    def bound(self, npos: int, keywords: frozenset[str]) -> set[str]:
        upto = npos if self.variadic is None else min(npos, self.variadic)
        return set(self.params[:upto]) | set(keywords)

    def can_close(self, npos: int, keywords: frozenset[str]) -> bool:
        if not self.required <= self.bound(npos, keywords):
            return False
        return self.variadic is None or npos > self.variadic

    def keyword_names(self, npos: int, keywords: frozenset[str]) -> tuple[str, ...]:
        bound = self.bound(npos, keywords)
        return tuple(sorted(p for i, p in enumerate(self.params) if i != self.variadic and p not in bound))


def signatures(functions: Mapping[str, LibraryFunction | Signature]) -> dict[str, Signature]:
    """Name -> `Signature` (build it once per registry: a constraint is made for every step)."""
    return {name: f if isinstance(f, Signature) else Signature.of(f) for name, f in functions.items()}


_TOKEN_TEXTS: weakref.WeakKeyDictionary[Any, tuple[str | None, ...]] = weakref.WeakKeyDictionary()


def token_texts(tokenizer: Any) -> tuple[str | None, ...]:
    """Each token's text as code, computed once per tokenizer; None where a token may never be code.

    The agent tokenizer decodes piece by piece to the same text as the whole sequence (identity
    normalization, no dummy prefix), so a step's text is the concatenation of these. Excluded: the
    special ids (``<MOD>`` keeps its text, the step and eos ids are decided by ``complete()``), unk,
    and byte-fallback pieces that are not text on their own (parts of a multi-byte character).
    """
    cached = _TOKEN_TEXTS.get(tokenizer)
    if cached is not None:
        return cached
    special = set(tokenizer.special_ids) | {tokenizer.pad_id, tokenizer.bos_id, tokenizer.eos_id,
                                            tokenizer.sp.unk_id()}
    texts: list[str | None] = []
    for i in range(tokenizer.vocab_size):
        if i == tokenizer.mod_id:
            texts.append(MOD_TOKEN)
            continue
        text = tokenizer.decode([i])
        texts.append(None if i in special or not text or "\ufffd" in text or MOD_TOKEN in text else text)
    result = tuple(texts)
    _TOKEN_TEXTS[tokenizer] = result
    logger.debug("token texts for constrained decoding: %d of %d tokens usable", sum(t is not None for t in texts),
                 len(texts))
    return result


def target_strings(bank: Any) -> tuple[str, ...]:
    """Every target string the sandbox's ``generate`` accepts with this phi bank (``bank.supports``):
    the bank's own names, the aliases of ``agent.phi_bank`` and the synonyms of the vision target
    table, kept only where the bank supports them (so a string allowed here never fails there)."""
    from agent.phi_bank import TARGET_ALIASES

    candidates = set(bank.targets) | set(TARGET_ALIASES)
    try:
        from vision.targets import TARGETS

        for target in TARGETS.values():
            candidates.update((target.name, *target.synonyms))
    except ImportError:  # pragma: no cover - vision ships with the agent
        logger.debug("vision.targets unavailable; target synonyms limited to the phi bank's aliases")
    return tuple(sorted(c for c in candidates if bank.supports(c)))


class InvalidContinuation(ValueError):
    """Text fed to a `StepConstraint` that no program of the sandbox subset continues."""


class _State:
    __slots__ = ("stack", "pend", "step_names", "vars", "varset", "load", "nstmt", "calls", "depth", "chars", "tail",
                 "gen", "once", "kinds", "rhs")

    stack: tuple[Frame, ...]
    pend: tuple[str, str] | None
    step_names: frozenset[str]
    vars: tuple[str, ...]
    varset: frozenset[str]
    load: tuple[str, ...]
    nstmt: int
    calls: int
    depth: int
    chars: int
    tail: str
    gen: frozenset[tuple[str, str]]  # (scan, normalized target) drawn by generate() in this step
    once: frozenset[tuple[str, str]]  # (function, argument) of the one-argument measurements of this step
    kinds: dict[str, frozenset[str]]  # kinds of the names this step assigned (replaced, never mutated)
    rhs: frozenset[str]  # kinds of the value the open assignment gives its name

    def copy(self) -> "_State":
        other = object.__new__(_State)
        other.stack, other.pend, other.step_names, other.vars = self.stack, self.pend, self.step_names, self.vars
        other.varset, other.load, other.nstmt, other.calls = self.varset, self.load, self.nstmt, self.calls
        other.depth, other.chars, other.tail, other.gen = self.depth, self.chars, self.tail, self.gen
        other.once, other.kinds, other.rhs = self.once, self.kinds, self.rhs
        return other


_NUMBER_WORDS = {w: i for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen twenty".split())} | {"thirty": 30, "forty": 40, "fifty": 50}
_REQUEST_NUMBER = re.compile(r"(?<![\w.])(\d+(?:\.\d+)?)(?:\s*(cm|centimet(?:er|re)s?)\b)?|\b([a-z]+)\b", re.I)


def request_numbers(prompt: str) -> frozenset[str]:
    """The number literals a step may write for this request: the numbers it states (digits or the
    words zero to fifty; centimetres also as millimetres, the library's unit), each also with ``.0``
    when whole, and 0.

    Why: the only numbers programs take are quantities the user gives (a crop margin, a dilation in
    mm, a threshold). A free decoder copies them badly: seen on held-out requests, "leaving 10 mm
    around it" written as ``crop(t1, ventricles, 15)`` and "8 mm" as ``1``. Grounded, a number the
    request does not state cannot be emitted.
    """
    values: set[float] = {0.0}
    for m in _REQUEST_NUMBER.finditer(prompt):
        if m.group(1):
            v = float(m.group(1))
            values.add(v)
            if m.group(2):
                values.add(v * 10)
        elif m.group(3) and m.group(3).lower() in _NUMBER_WORDS:
            values.add(float(_NUMBER_WORDS[m.group(3).lower()]))
    out: set[str] = set()
    for v in values:
        if v.is_integer():
            out |= {str(int(v)), f"{int(v)}.0"}
        else:
            out.add(repr(v))
    return frozenset(out)


@functools.lru_cache(maxsize=8)
def name_targets(targets: frozenset[str]) -> dict[str, tuple[str, ...]]:
    """Variable name -> the target strings (sorted) a ``name = generate(...)`` statement may draw.

    A name that is a target in snake case (``left_ventral_dc``, ``wm``, ``brainstem`` is not one)
    stands for that target: its literal must be a spelling that resolves to the same bank entry
    (`normalize_target`), so ``wm`` may draw ``white matter`` or ``wm`` but not ``gray matter``.
    Names that spell no target, or spellings of two different targets, constrain nothing. Cached:
    the runtime builds a constraint per step over the same target set."""
    from agent.phi_bank import normalize_target

    by_canon: dict[str, set[str]] = {}
    for t in targets:
        by_canon.setdefault(normalize_target(t), set()).add(t.lower())
    by_name: dict[str, set[str]] = {}
    for t in targets:
        by_name.setdefault(snake_case(t), set()).add(normalize_target(t))
    return {name: tuple(sorted(by_canon[next(iter(canon))])) for name, canon in by_name.items()
            if name and len(canon) == 1}


def snake_case(text: str) -> str:
    """A target as a variable name would spell it (``left ventral DC`` -> ``left_ventral_dc``)."""
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


_SIDE_EFFECT_CALLS = frozenset({"read", "respond"})  # the one-argument calls made for their effect
_NAME_SUFFIX = re.compile(r"(?:_?\d+)+$")  # lesion_2, left_hippocampus12, csf_225_1: the same target


def _taken_volumes(call: Frame) -> frozenset[str]:
    """The volumes a CALL frame may not take again (those it took, for ``DISTINCT_VOLUMES``)."""
    return call[6] if call[1] in DISTINCT_VOLUMES else frozenset()


def _prefix_in(words: tuple[str, ...], prefix: str) -> bool:
    """Some word of the sorted tuple starts with ``prefix``."""
    i = bisect.bisect_left(words, prefix)
    return i < len(words) and words[i].startswith(prefix)


class StepConstraint:
    """``StepConstraint(names, functions, targets)``: which continuations keep one step valid.

    ``names``: what is defined before the step (scans, earlier variables). ``functions``: the
    library (a `Registry`, or name -> `Signature`). ``targets``: the strings ``generate`` accepts
    (see `target_strings`); matched case-insensitively, as the phi bank matches them.
    ``feed(text)`` advances (``<MOD>`` in the text is the marker token), ``allows(text)`` asks
    without advancing, ``try_feed(text)`` advances only if allowed, ``complete()`` says whether the
    step may end here.
    """

    def __init__(self, names: Iterable[str], functions: Mapping[str, LibraryFunction | Signature],
                 targets: Iterable[str], *, limits: SandboxLimits | None = None,
                 numbers: Iterable[str] | None = None, volumes: Iterable[str] | None = None,
                 flat: bool = False, generated: Iterable[tuple[str, str]] = (),
                 mentions: Iterable[str] = (), kinds: Mapping[str, frozenset[str]] | None = None) -> None:
        from agent.phi_bank import normalize_target

        self.limits = limits or SandboxLimits()
        self.flat = flat
        # None: any defined name may be a volume argument; else only these (the scans: `volumes`)
        self.volume_names = None if volumes is None else frozenset(volumes)
        # None: any number literal; else the only ones an expression may use (`request_numbers`)
        self.numbers = None if numbers is None else frozenset(numbers)
        self._number_words = None if numbers is None else tuple(sorted(self.numbers))
        self.targets = frozenset(t.lower() for t in targets)
        self._target_words = tuple(sorted(self.targets))
        self._canon = {t: normalize_target(t) for t in self.targets}
        # (scan, normalized target) pairs earlier steps drew: a program draws each pair once
        self.generated = frozenset((scan, normalize_target(t)) for scan, t in generated)
        self._name_targets = name_targets(self.targets)
        self._mention_sets = self._answer_sets(mentions)
        # kinds of the names defined before the step (flat style checks argument types against them)
        self.kinds: dict[str, frozenset[str]] = dict(kinds or {})
        sigs = signatures(functions)
        if not self.targets:
            sigs.pop("generate", None)  # a call whose target slot has no valid value is a dead end
        self.functions = sigs
        self._func_words = tuple(sorted(sigs))
        self._nested = {outer: tuple(sorted(inner & set(sigs))) for outer, inner in NESTED_CALLS.items()}
        self.names = frozenset(n for n in names if n.isidentifier() and n not in sigs)
        s = object.__new__(_State)
        s.stack = (("STMT", "start", None),)
        s.pend = None
        s.step_names = frozenset()
        s.nstmt = s.calls = s.depth = s.chars = 0
        s.tail = ""
        s.gen = s.once = frozenset()
        s.kinds, s.rhs = {}, ANY_KIND
        self._define(s, ())
        self._s = s
        self._fed: list[str] = []
        self._handlers = {tag: getattr(self, "_p_" + tag) for tag in
                          ("STMT", "TGT", "RHS", "X", "CALL", "VOL", "TARG", "PAREN", "LIST", "SUB", "FIELD")}

    # ---- public --------------------------------------------------------------------------------
    @property
    def text(self) -> str:
        """Everything fed so far."""
        return "".join(self._fed)

    @property
    def steers(self) -> bool:
        """Given ``mentions``, at least one of them is a target the model can draw."""
        return bool(self._mention_sets)

    def allows(self, text: str) -> bool:
        return self._run(self._s.copy(), text) is not None

    def try_feed(self, text: str) -> bool:
        """Advance by ``text`` if it keeps the step valid; otherwise leave the state unchanged."""
        state = self._run(self._s.copy(), text)
        if state is None:
            return False
        self._s = state
        self._fed.append(text)
        return True

    def feed(self, text: str) -> None:
        if not self.try_feed(text):
            raise InvalidContinuation(f"{text!r} cannot continue the step {self.text!r}")

    def complete(self) -> bool:
        """The step may end here: at least one statement, and everything so far closes."""
        s = self._s.copy()
        return self._flush(s) and self._tok(s, "END", None)

    # ---- lexer ---------------------------------------------------------------------------------
    def _run(self, s: _State, text: str) -> _State | None:
        if MOD_TOKEN in text:
            for i, piece in enumerate(text.split(MOD_TOKEN)):
                if i and not self._marker(s):
                    return None
                for ch in piece:
                    if not self._char(s, ch):
                        return None
            return s
        for ch in text:
            if not self._char(s, ch):
                return None
        return s

    def _marker(self, s: _State) -> bool:
        s.tail = ""
        if s.stack[-1][0] in ("STR", "TSTR", "FSTR", "FSPEC") or self._field_quote(s) is not None:
            return False
        return self._flush(s) and self._tok(s, "MOD", None)

    def _flush(self, s: _State) -> bool:
        """Finish the pending lexeme (a name, an operator or a number) before a marker or the end."""
        p = s.pend
        if p is not None:
            s.pend = None
            if p[0] == "N":
                return self._tok(s, "N", p[1])
            return p[1] != "!" and self._tok(s, "O", p[1])
        top = s.stack[-1]
        if top[0] == "NUM":
            return self._num_char(s, top, "") is None
        return True

    def _char(self, s: _State, ch: str) -> bool:
        if ch == ">" and s.tail == "<MOD":  # plain text spelling the marker: the sandbox would strip it
            return False
        s.tail = (s.tail + ch)[-4:]
        s.chars += 1
        if s.chars > self.limits.max_code_chars:
            return False
        top = s.stack[-1]
        tag = top[0]
        if tag == "STR":
            return self._str_char(s, top, ch)
        if tag == "TSTR":
            return self._target_char(s, top, ch)
        if tag == "FSTR":
            return self._fstr_char(s, top, ch)
        if tag == "FSPEC":
            return self._spec_char(s, top, ch)
        if tag == "NUM":
            done = self._num_char(s, top, ch)
            if done is not None:
                return done
        return self._code_char(s, ch)

    def _code_char(self, s: _State, ch: str) -> bool:
        p = s.pend
        if p is not None:
            kind, text = p
            if kind == "N":
                if ch in _IDENT:
                    word = text + ch
                    if not self._name_viable(s, word):
                        return False
                    s.pend = ("N", word)
                    return True
                s.pend = None
                if text in ("f", "F") and ch in _QUOTES:
                    return self._tok(s, "FSTR", ch)
                if not self._tok(s, "N", text):
                    return False
            else:
                s.pend = None
                if text + ch in _DOUBLE_OPS:
                    return self._tok(s, "O", text + ch)
                if text == "!" or not self._tok(s, "O", text):
                    return False
        if ch in _IDENT_START:
            if not (self._name_viable(s, ch) or (ch in "fF" and self._tok(s.copy(), "FSTR", '"'))):
                return False
            s.pend = ("N", ch)
            return True
        if ch in _DIGITS:
            if not self._tok(s, "NUM", None):
                return False
            return self._num_char(s, s.stack[-1], ch) is True
        if ch in _QUOTES:
            if self._field_quote(s) == ch:
                return False
            return self._tok(s, "STR", ch)
        if ch == " ":  # one space between tokens: no indentation, no runaway whitespace
            top = s.stack[-1]
            return not (top[0] == "STMT" and top[1] in ("start", "stopped")) and s.tail[-2:-1] != " "
        if ch == "\n":
            return s.depth == 0 and self._tok(s, "NL", None)
        if ch in _PENDING_OPS:
            if not any(self._tok(s.copy(), "O", op) for op in _PENDING_OPS[ch]):
                return False
            s.pend = ("O", ch)
            return True
        if ch in _SINGLE_OPS:
            return self._tok(s, "O", ch)
        return False

    def _num_char(self, s: _State, top: Frame, ch: str) -> bool | None:
        """Digits of a number literal; None when ``ch`` ends the number (then ``ch`` is code)."""
        _, text, int_only = top
        low = text.lower()
        grounded = self._number_words is not None and not int_only
        if ch and ch in _DIGITS:
            if text == "0":
                return False  # leading zeros are a syntax error in Python 3
            if grounded and not _prefix_in(self._number_words, text + ch):
                return False
            return self._replace(s, ("NUM", text + ch, int_only))
        if ch == "." and not int_only and text and "." not in text and "e" not in low:
            if grounded and not _prefix_in(self._number_words, text + ch):
                return False
            return self._replace(s, ("NUM", text + ch, int_only))
        if grounded and ch in ("e", "E"):
            return False  # exponents never appear in a request's numbers (so neither does a sign after one)
        if ch in ("e", "E") and not int_only and text and "e" not in low:
            return self._replace(s, ("NUM", text + ch, int_only))
        if ch in ("+", "-") and text and text[-1] in "eE":
            return self._replace(s, ("NUM", text + ch, int_only))
        if ch and ch in _IDENT:
            return False
        if not text or text[-1] in "eE+-":
            return False
        if "." not in text and "e" not in low and int(text).bit_length() > self.limits.max_int_bits:
            return False
        if grounded and text not in self.numbers:
            return False
        s.stack = s.stack[:-1]
        return None

    def _str_char(self, s: _State, top: Frame, ch: str) -> bool:
        _, quote, n, noesc, esc = top
        if esc:
            return ch in _ESCAPES and self._replace(s, ("STR", quote, n + 1, noesc, False))
        if ch == quote:
            s.stack = s.stack[:-1]
            return True
        if ch == "\\":
            return not noesc and self._replace(s, ("STR", quote, n, noesc, True))
        if not ch.isprintable() or n + 1 > self.limits.max_str_len:
            return False
        return self._replace(s, ("STR", quote, n + 1, noesc, False))

    def _target_char(self, s: _State, top: Frame, ch: str) -> bool:
        _, quote, content, words, scan = top
        if ch == quote:
            if content not in words:  # words: the target strings (or the subset) this literal may be
                return False
            s.stack = s.stack[:-1]
            if scan is not None:
                s.gen = s.gen | {(scan, self._canon[content])}
            return True
        content += ch.lower()
        return _prefix_in(words, content) and self._replace(s, ("TSTR", quote, content, words, scan))

    def _drawn(self, s: _State, scan: str) -> frozenset[str]:
        """Normalized targets already drawn on ``scan`` by this program."""
        return frozenset(t for sc, t in self.generated | s.gen if sc == scan)

    def _target_words_for(self, s: _State, scan: str | None) -> tuple[str, ...]:
        """Target strings the open ``generate`` may draw: those its assigned name allows, less the ones
        already drawn on the same scan. Why: a task program draws each (scan, target) once, and the
        repeat was how the model went wrong (seen: ``lesion_2 = generate(e, flair_a<MOD>, "lesion")``,
        the baseline measured twice, and ``csf = ...`` written twice for "GM, WM and CSF")."""
        words = self._assigned_target_words(s)
        drawn = self._drawn(s, scan) if scan is not None else frozenset()
        if drawn:
            words = tuple(w for w in words if self._canon[w] not in drawn)
        preferred = self._preferred(s)
        if preferred:
            narrowed = tuple(w for w in words if self._canon[w] in preferred)
            words = narrowed or words
        return words

    def _answer_sets(self, mentions: Iterable[str]) -> tuple[frozenset[str], ...]:
        """Per target the request names, the normalized targets that answer it: itself, its left and
        right parts, and for a sided one its bilateral union (only those the model can draw)."""
        from agent.phi_bank import normalize_target

        known = frozenset(self._canon.values())
        out: list[frozenset[str]] = []
        for mention in mentions:
            m = mention.lower()
            side, _, base = m.partition(" ")
            names = [m, f"left {m}", f"right {m}"] + ([base] if side in ("left", "right") else [])
            answers = frozenset(normalize_target(n) for n in names) & known
            if answers:
                out.append(answers)
        return tuple(out)

    def _preferred(self, s: _State) -> frozenset[str]:
        """Normalized targets that answer a named target no ``generate`` of the program drew yet.

        Why: the commonest wrong program on freely worded requests draws a structure the request
        never named ("is the lesion enhancing?" drawn as the left hippocampus, "the enhancing tumour"
        as the accumbens), though the words name it in the target table. While a named target is
        unanswered, a target slot that can draw it draws only such targets (others stay open once
        every named target is drawn, for the ICV of a normalization or the parts of a report)."""
        if not self._mention_sets:
            return frozenset()
        drawn = {t for _, t in self.generated | s.gen}
        return frozenset().union(*(m for m in self._mention_sets if not m & drawn))

    def _name_drawable(self, s: _State, name: str) -> bool:
        """A new name that spells a target names a mask still to draw: its target is not drawn on
        every scan yet (seen: ``csf_2 = generate(e, `` after ``csf = ...``, with no scan left to
        draw the CSF on, so the step was a dead end)."""
        bound = self._bound_targets(name)
        if bound is None or not self.volume_names:
            return True
        return any(self._canon[w] not in self._drawn(s, scan) for scan in self.volume_names for w in bound)

    def _name_answers_mentions(self, s: _State, name: str) -> bool:
        """A new name that spells a target (`name_targets`) is one that answers a named target, while
        one is unanswered: the name decides the target of its ``generate`` (seen: ``lh = generate(``
        for "how long, wide and tall is the brain?")."""
        bound = self._bound_targets(name)
        if bound is None:
            return True
        preferred = self._preferred(s)
        return not preferred or any(self._canon[w] in preferred for w in bound)

    def _measure_once(self, s: _State, sig: Signature, npos: int, arg: str) -> bool:
        """A one-argument library call (``volume(csf)``) is not repeated on the same name in a step:
        task programs compute each measurement once, and the repeat was how a model answered a
        two-target request with one target measured twice (``v1 = volume(left_hippocampus)``,
        ``v2 = volume(left_hippocampus)``, "the ratio ... is 1.0")."""
        if npos or len(sig.params) != 1 or sig.variadic is not None or sig.name in _SIDE_EFFECT_CALLS:
            return True
        if arg in self._measured(s, sig, npos):
            return False
        s.once = s.once | {(sig.name, arg)}
        return True

    @staticmethod
    def _measured(s: _State, sig: Signature, npos: int) -> frozenset[str]:
        """Names this step already passed to the one-argument call ``sig`` (see `_measure_once`)."""
        if npos or not s.once:
            return frozenset()
        return frozenset(arg for fn, arg in s.once if fn == sig.name)

    def _generate_volume_ok(self, s: _State, scan: str) -> bool:
        """A scan for ``generate`` leaves its target slot at least one string to draw."""
        return bool(self._target_words_for(s, scan))

    def _assigned_target_words(self, s: _State) -> tuple[str, ...]:
        """The target strings this statement may draw: all of them, or those its assigned name spells."""
        stmt = s.stack[0]
        if stmt[0] == "STMT" and stmt[1] == "assign" and len(stmt[2]) == 1:
            return self._bound_targets(stmt[2][0]) or self._target_words
        return self._target_words

    def _bound_targets(self, name: str) -> tuple[str, ...] | None:
        """The target strings a variable name stands for (`name_targets`, digit suffixes dropped), or None."""
        return self._name_targets.get(_NAME_SUFFIX.sub("", name))

    def _fstr_char(self, s: _State, top: Frame, ch: str) -> bool:
        _, quote, n, brace = top
        if brace == "{":
            if ch == "{":
                return self._replace(s, ("FSTR", quote, n + 1, None))
            if s.depth + 1 > self.limits.max_bracket_depth:
                return False
            s.stack = s.stack[:-1] + (("FSTR", quote, n, None), ("FIELD", quote), _X0)
            s.depth += 1
            return self._code_char(s, ch)
        if brace == "}":
            return ch == "}" and self._replace(s, ("FSTR", quote, n + 1, None))
        if brace == "\\":
            return ch in _ESCAPES and self._replace(s, ("FSTR", quote, n + 1, None))
        if ch == quote:
            s.stack = s.stack[:-1]
            return True
        if ch in "{}\\":
            return self._replace(s, ("FSTR", quote, n, ch))
        if not ch.isprintable() or n + 1 > self.limits.max_str_len:
            return False
        return self._replace(s, ("FSTR", quote, n + 1, None))

    def _spec_char(self, s: _State, top: Frame, ch: str) -> bool:
        _, quote, spec = top
        if ch == "}":
            if not spec_allowed(spec, self.limits.max_format_width):
                return False
            s.stack = s.stack[:-1]
            return True
        spec += ch
        match = _SPEC_PREFIX.fullmatch(spec)
        if match is None or (match.group(1) and int(match.group(1)) > self.limits.max_format_width):
            return False
        return self._replace(s, ("FSPEC", quote, spec))

    # ---- viability of a partial identifier ----------------------------------------------------
    def _name_viable(self, s: _State, word: str) -> bool:
        """Some identifier starting with ``word`` is accepted where the parser stands."""
        top = s.stack[-1]
        tag, st = top[0], top[1]
        if tag == "X":
            if self.flat:
                return st == "op0" and self._flat_name(s, s.stack[-2], word, prefix=True)
            if st == "op0":
                return _prefix_in(s.load, word) or "not".startswith(word)
            if st == "op1":
                return _prefix_in(s.load, word)
            if st == "notin":
                return "in".startswith(word)
            return _prefix_in(_AFTER_OPERAND[top[2]], word)
        if tag == "CALL":
            if top[2] != "arg":
                return False
            sig, npos, kws = self.functions[top[1]], top[3], top[4]
            if not self.flat and _prefix_in(sig.keyword_names(npos, kws), word):
                return True
            param = None if kws else sig.positional(npos)
            if param is None:
                return False
            role = sig.role(param)
            if role == "vol":
                taken = _taken_volumes(top)
                return any(v.startswith(word) for v in self._volume_vars(s) if v not in taken
                           and (top[1] != "generate" or self._generate_volume_ok(s, v)))
            if role == "expr" and self.flat:
                measured, accepted = self._measured(s, sig, npos), sig.accepts(param)
                constants = _prefix_in(_CONSTANT_WORDS, word) and (accepted is None or accepted >= _ALL_KINDS)
                return (any(v not in measured for v in self._names_fitting(s, word, accepted))
                        or constants or _prefix_in(self._nested.get(top[1], ()), word))
            return role == "expr" and (_prefix_in(s.load, word) or "not".startswith(word))
        if tag == "STMT":
            return st == "start" and (_prefix_in(self._func_words, word) or self._new_prefix_ok(word))
        if tag == "TGT":
            return st == "need" and self._new_prefix_ok(word)
        if tag == "VOL":
            return st == "name" and any(v.startswith(word) for v in self._volume_vars(s))
        if (tag == "RHS" and st == "comma") or (tag == "LIST" and st in ("first", "comma")) or (
                tag == "PAREN" and st == "comma"):
            return _prefix_in(s.load, word) or "not".startswith(word)
        return False

    # ---- parser ----------------------------------------------------------------------------------
    @staticmethod
    def _replace(s: _State, frame: Frame) -> bool:
        s.stack = s.stack[:-1] + (frame,)
        return True

    @staticmethod
    def _field_quote(s: _State) -> str | None:
        for frame in reversed(s.stack):
            if frame[0] == "FIELD":
                return str(frame[1])
        return None

    @staticmethod
    def _new_prefix_ok(word: str) -> bool:
        return len(word) <= MAX_NEW_NAME and not word.startswith("_")

    def _flat_name(self, s: _State, parent: Frame, word: str, *, prefix: bool) -> bool:
        """Flat style: ``word`` is (``prefix``: starts) a name that may stand as an operand in ``parent``:
        a defined name in an f-string field; a defined name or a constant in a call's argument, or a
        call that ``NESTED_CALLS`` allows there; any of those or any call on the right of ``=``."""
        def found(words: tuple[str, ...]) -> bool:
            return _prefix_in(words, word) if prefix else word in words

        tag = parent[0]
        if tag not in ("RHS", "FIELD", "CALL"):
            return False
        if tag == "FIELD":  # a defined name whose value prints as text (never a mask or an encoding)
            return (any(self._names_fitting(s, word, _FIELD_KINDS)) if prefix
                    else word in s.varset and _fits(self._kinds_of(s, word), _FIELD_KINDS))
        if _prefix_in(s.vars, word) if prefix else word in s.varset:  # a defined name stands anywhere
            return True
        return found(_CONSTANT_WORDS) or found(self._func_words if tag == "RHS" else self._nested.get(parent[1], ()))

    def _flat_operand(self, s: _State, top: Frame, kind: str, val: Any) -> bool:
        """Flat style: the one operand an expression is (no operators, brackets or unary signs)."""
        _, st, phase = top
        parent = s.stack[-2]
        if st != "op0":
            return False
        if parent[0] == "CALL" and kind != "N":  # a literal argument: its kind must fit the parameter
            sig = self.functions[parent[1]]
            literal = self._operand_kinds(s, kind, val)
            if not _fits(literal, sig.accepts(None if parent[4] else sig.positional(parent[3] - 1))):
                return False
        if parent[0] == "RHS":
            s.rhs = self._operand_kinds(s, kind, val)
        if kind == "N":
            if not self._flat_name(s, parent, val, prefix=False):
                return False
            if val in self.functions:
                call = ("CALL", val, "open", 0, frozenset(), None, frozenset())
                s.stack = s.stack[:-1] + (("X", "done", phase), call)
                return True
            return self._replace(s, ("X", "dns" if val in _CONSTANTS else "done", phase))
        if kind == "NUM" and parent[0] in ("CALL", "RHS"):
            s.stack = s.stack[:-1] + (("X", "dns", phase), ("NUM", "", False))
            return True
        if kind == "STR" and parent[0] in ("CALL", "RHS"):
            s.stack = s.stack[:-1] + (("X", "dns", phase), ("STR", val, 0, False, False))
            return True
        if kind == "FSTR" and parent[0] in ("CALL", "RHS"):
            s.stack = s.stack[:-1] + (("X", "dns", phase), ("FSTR", val, 0, None))
            return True
        return False

    def _kinds_of(self, s: _State, name: str) -> frozenset[str]:
        return s.kinds.get(name) or self.kinds.get(name) or ANY_KIND

    def _names_fitting(self, s: _State, prefix: str, accepted: frozenset[str] | None) -> Iterable[str]:
        """Defined names starting with ``prefix`` whose kinds fit ``accepted``."""
        for name in s.vars[bisect.bisect_left(s.vars, prefix):]:
            if not name.startswith(prefix):
                return
            if _fits(self._kinds_of(s, name), accepted):
                yield name

    def _operand_fits(self, s: _State, name: str, accepted: frozenset[str] | None) -> bool:
        """Flat style: a name as an argument is a value of a kind the parameter takes (seen:
        ``volume(v)`` of a number, ``asymmetry(lesion, "lesion")``, ``volume(e)`` of an encoding)."""
        if name in _CONSTANTS:  # None/True/False: only where any value goes (task programs pass none)
            return accepted is None or accepted >= _ALL_KINDS
        if name in self.functions:  # a nested call (``respond(capabilities())``): what it returns
            return _fits(self.functions[name].returns, accepted)
        return _fits(self._kinds_of(s, name), accepted)

    def _operand_kinds(self, s: _State, kind: str, val: Any) -> frozenset[str]:
        """The kinds of a flat operand: a call's result, a name's value or a literal."""
        if kind == "N":
            if val in self.functions:
                return self.functions[val].returns
            return ANY_KIND if val in _CONSTANTS else self._kinds_of(s, val)
        return frozenset({"number"}) if kind == "NUM" else frozenset({"text"})

    def _new_name_ok(self, word: str) -> bool:
        return (self._new_prefix_ok(word) and word.isidentifier() and not keyword.iskeyword(word)
                and word not in self.functions)

    def _define(self, s: _State, names: Iterable[str]) -> None:
        s.step_names = s.step_names | frozenset(names)
        s.varset = self.names | s.step_names
        s.vars = tuple(sorted(s.varset))
        s.load = tuple(sorted(s.varset | set(self.functions) | _CONSTANTS))

    def _volume_vars(self, s: _State) -> tuple[str, ...]:
        """Defined names that may stand where a volume goes (before ``<MOD>``)."""
        return s.vars if self.volume_names is None else tuple(v for v in s.vars if v in self.volume_names)

    def _volume_ok(self, s: _State, name: str, taken: frozenset[str] = frozenset()) -> bool:
        return name in s.varset and name not in taken and (self.volume_names is None or name in self.volume_names)

    def _open(self, s: _State) -> bool:
        s.depth += 1
        return s.depth <= self.limits.max_bracket_depth

    def _tok(self, s: _State, kind: str, val: str | None) -> bool:
        """Give one token to the parser; frames that end at a token they do not own pop and pass it on."""
        handlers = self._handlers
        while True:
            top = s.stack[-1]
            handler = handlers.get(top[0])
            if handler is None:  # inside a string or number literal: no token can arrive there
                return False
            handled = handler(s, top, kind, val)
            if handled is not None:
                return bool(handled)

    def _p_STMT(self, s: _State, top: Frame, kind: str, val: Any) -> bool | None:
        st = top[1]
        if st == "start":
            if kind == "N":
                if val in self.functions:
                    s.stack = (("STMT", "call", val), ("CALL", val, "open", 0, frozenset(), None, frozenset()))
                    return True
                if (self._new_name_ok(val) and not (self.flat and val in s.step_names)
                        and self._name_answers_mentions(s, val) and self._name_drawable(s, val)):
                    s.stack = (("STMT", "assign", ()), ("TGT", "after", (val,)))
                    return True
                return False
            return kind == "END" and s.nstmt > 0
        if st == "stopped":
            return kind == "END"
        if kind not in ("NL", "END"):
            return False
        s.nstmt += 1
        if st == "assign":
            if len(top[2]) == 1:
                s.kinds = {**s.kinds, top[2][0]: s.rhs}
            s.rhs = ANY_KIND
            self._define(s, top[2])
            s.stack = (("STMT", "start", None),)
        else:  # a call statement; nothing may follow stop()
            s.stack = (("STMT", "stopped" if top[2] == "stop" else "start", None),)
        return True

    def _p_TGT(self, s: _State, top: Frame, kind: str, val: Any) -> bool | None:
        st, names = top[1], top[2]
        if st == "after" and kind == "O":
            if val == ",":
                return not self.flat and self._replace(s, ("TGT", "need", names))
            if val == "=":
                s.stack = (("STMT", "assign", names), ("RHS", "val"), _X0)
                return True
        if st == "need" and kind == "N" and self._new_name_ok(val):
            return self._replace(s, ("TGT", "after", names + (val,)))
        return False

    def _p_RHS(self, s: _State, top: Frame, kind: str, val: Any) -> bool | None:
        if kind in ("NL", "END"):
            s.stack = s.stack[:-1]
            return None
        if top[1] == "val":
            return not self.flat and kind == "O" and val == "," and self._replace(s, ("RHS", "comma"))
        s.stack = s.stack[:-1] + (("RHS", "val"), _X0)
        return None

    def _p_X(self, s: _State, top: Frame, kind: str, val: Any) -> bool | None:
        _, st, phase = top
        if self.flat and st in ("op0", "op1"):
            return self._flat_operand(s, top, kind, val)
        if st in ("op0", "op1"):
            if kind == "N":
                if val == "not":
                    return st == "op0"
                if val in _CONSTANTS:
                    return self._replace(s, ("X", "dns", phase))
                if val in self.functions:
                    call = ("CALL", val, "open", 0, frozenset(), None, frozenset())
                    s.stack = s.stack[:-1] + (("X", "done", phase), call)
                    return True
                return val in s.varset and self._replace(s, ("X", "done", phase))
            if kind == "NUM":
                s.stack = s.stack[:-1] + (("X", "dns", phase), ("NUM", "", False))
                return True
            if kind == "STR":
                noesc = self._field_quote(s) is not None
                s.stack = s.stack[:-1] + (("X", "dns", phase), ("STR", val, 0, noesc, False))
                return True
            if kind == "FSTR":
                if self._field_quote(s) is not None:
                    return False  # no nested f-strings
                s.stack = s.stack[:-1] + (("X", "dns", phase), ("FSTR", val, 0, None))
                return True
            if kind == "O":
                if val == "(":
                    s.stack = s.stack[:-1] + (("X", "done", phase), ("PAREN", "val"), _X0)
                    return self._open(s)
                if val == "[":
                    s.stack = s.stack[:-1] + (("X", "done", phase), ("LIST", "first"))
                    return self._open(s)
                if val in ("+", "-"):
                    return self._replace(s, ("X", "op1", phase))
            return False
        if st == "notin":
            return kind == "N" and val == "in" and self._replace(s, ("X", "op1", phase))
        # an operand is complete
        if self.flat:  # nothing continues it: the token belongs to the frame below
            s.stack = s.stack[:-1]
            return None
        if kind == "O":
            if val == "[" and st == "done":
                s.stack = s.stack + (("SUB", "open"),)
                return self._open(s)
            if val in _BINOPS:
                return self._replace(s, ("X", "op1", phase))
        elif kind == "N":
            if val in ("and", "or"):
                return self._replace(s, ("X", "op0", phase))
            if val == "in":
                return self._replace(s, ("X", "op1", phase))
            if val == "not":
                return self._replace(s, ("X", "notin", phase))
            if val == "if" and phase == 0:
                return self._replace(s, ("X", "op0", 1))
            if val == "else" and phase == 1:
                return self._replace(s, ("X", "op0", 0))
        if phase == 1:
            return False  # `a if b` needs its else
        s.stack = s.stack[:-1]
        return None

    def _p_CALL(self, s: _State, top: Frame, kind: str, val: Any) -> bool | None:
        _, name, st, npos, kws, word, vols = top
        sig = self.functions[name]
        taken = _taken_volumes(top)
        if st == "open":
            if kind == "O" and val == "(":
                s.calls += 1
                return (s.calls <= self.limits.max_calls_per_step and self._open(s)
                        and self._replace(s, ("CALL", name, "arg", 0, kws, None, vols)))
            return False
        if st == "after":
            if kind == "O" and val == ",":
                return self._replace(s, ("CALL", name, "arg", npos, kws, None, vols))
            return kind == "O" and val == ")" and self._close(s, sig, npos, kws)
        if st == "arg":
            if kind == "O" and val == ")":
                return self._close(s, sig, npos, kws)
            if kind == "N":  # a keyword or an operand: the next token says which; one of them must fit
                param = None if kws else sig.positional(npos)
                role = None if param is None else sig.role(param)
                if self.flat:
                    fits = (role == "vol" and self._volume_ok(s, val, taken)
                            and (name != "generate" or self._generate_volume_ok(s, val))) or (
                        role == "expr" and self._flat_name(s, top, val, prefix=False)
                        and self._operand_fits(s, val, sig.accepts(param)) and self._measure_once(s, sig, npos, val))
                else:
                    operand = val in s.varset or val in self.functions or val in _CONSTANTS or val == "not"
                    fits = (val in sig.keyword_names(npos, kws) or (role == "vol" and self._volume_ok(s, val, taken))
                            or (role == "expr" and operand))
                return fits and self._replace(s, ("CALL", name, "kw?", npos, kws, val, vols))
            param = None if kws else sig.positional(npos)
            if param is None:
                return False
            role = sig.role(param)
            after = ("CALL", name, "after", npos + 1, kws, None, vols)
            if role == "vol":
                return False  # a volume argument is a name
            s.stack = s.stack[:-1] + (after, ("TARG", None) if role == "target" else _X0)
            return None
        # st == "kw?": a name was read at the start of an argument
        if kind == "O" and val == "=":
            if self.flat or word not in sig.keyword_names(npos, kws):
                return False
            role = sig.role(word)
            arg: Frame = ("VOL", "name") if role == "vol" else ("TARG", None) if role == "target" else _X0
            s.stack = s.stack[:-1] + (("CALL", name, "after", npos, kws | {word}, None, vols), arg)
            return True
        param = None if kws else sig.positional(npos)
        if param is None:
            return False
        role = sig.role(param)
        after = ("CALL", name, "after", npos + 1, kws, None, vols)
        if role == "vol":
            if not self._volume_ok(s, word, taken) or (name == "generate" and not self._generate_volume_ok(s, word)):
                return False
            s.stack = s.stack[:-1] + (after[:-1] + (vols | {word},), ("VOL", "mod"))
            return None
        if role == "target":
            return False  # a target is a string literal
        s.stack = s.stack[:-1] + (after, _X0)
        if not self._tok(s, "N", word):
            return False
        return None

    def _close(self, s: _State, sig: Signature, npos: int, kws: frozenset[str]) -> bool:
        if not sig.can_close(npos, kws):
            return False
        s.stack = s.stack[:-1]
        s.depth -= 1
        return True

    def _p_VOL(self, s: _State, top: Frame, kind: str, val: Any) -> bool | None:
        if top[1] == "name":
            return kind == "N" and self._volume_ok(s, val) and self._replace(s, ("VOL", "mod"))
        if kind == "MOD":
            s.stack = s.stack[:-1]
            return True
        return False

    def _p_TARG(self, s: _State, top: Frame, kind: str, val: Any) -> bool | None:
        if kind != "STR":
            return False
        call = s.stack[-2] if len(s.stack) > 1 else None
        vols = call[6] if call is not None and call[0] == "CALL" and call[1] == "generate" else frozenset()
        scan = next(iter(vols)) if len(vols) == 1 else None
        words = self._target_words_for(s, scan)
        return bool(words) and self._replace(s, ("TSTR", val, "", words, scan))

    def _sequence(self, s: _State, top: Frame, kind: str, val: Any, frame: str, close: str) -> bool | None:
        """A parenthesized or bracketed, comma-separated run of expressions, closed by ``close``."""
        if kind == "O" and val == close:
            s.stack = s.stack[:-1]
            s.depth -= 1
            return True
        if top[1] == "val":
            return kind == "O" and val == "," and self._replace(s, (frame, "comma"))
        s.stack = s.stack[:-1] + ((frame, "val"), _X0)
        return None

    def _p_PAREN(self, s: _State, top: Frame, kind: str, val: Any) -> bool | None:
        return self._sequence(s, top, kind, val, "PAREN", ")")

    def _p_LIST(self, s: _State, top: Frame, kind: str, val: Any) -> bool | None:
        return self._sequence(s, top, kind, val, "LIST", "]")

    def _p_SUB(self, s: _State, top: Frame, kind: str, val: Any) -> bool | None:
        st = top[1]
        if st == "close":
            if kind == "O" and val == "]":
                s.stack = s.stack[:-1]
                s.depth -= 1
                return True
            return False
        if kind == "NUM":
            s.stack = s.stack[:-1] + (("SUB", "close"), ("NUM", "", True))
            return True
        if st == "open":
            if kind == "STR":
                noesc = self._field_quote(s) is not None
                s.stack = s.stack[:-1] + (("SUB", "close"), ("STR", val, 0, noesc, False))
                return True
            return kind == "O" and val == "-" and self._replace(s, ("SUB", "neg"))
        return False

    def _p_FIELD(self, s: _State, top: Frame, kind: str, val: Any) -> bool | None:
        if kind == "O" and val in ("}", ":"):
            s.depth -= 1
            if val == "}":
                s.stack = s.stack[:-1]
                return True
            return self._replace(s, ("FSPEC", top[1], ""))
        return False


__all__ = ["NESTED_CALLS", "InvalidContinuation", "Signature", "StepConstraint", "TARGET_PARAMS", "VOLUME_PARAMS",
           "signatures", "target_strings", "token_texts"]
