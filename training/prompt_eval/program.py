"""What a program did, read from its code: findings of a kind, on targets composed from generate().

The sandbox subset is straight-line code (assignments of calls, literals, f-strings, constant
subscripts), so every value a step reports can be traced back symbolically to the calls it came from:
``respond(f"... {a}")`` with ``a = asymmetry(volume(intersection(...)), volume(...))`` is an
asymmetry finding on two composed targets. A finding's kind is decided by the function that made
the reported value (and by what it was made of: a ratio of a volume to the intracranial volume is a
normalized volume, a change of one target's volume across two scans is a longitudinal change), never
by the words of the answer, which the language model writes itself.

Only steps that ran without error contribute what they report (respond, read, output); every step
contributes its assignments, so later steps still resolve names a failed step had set before it
failed. Code that does not parse (a step cut off by a limit) contributes nothing.
"""
from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from agent.sandbox.markers import strip_mod_markers
from training.prompt_eval.targets import SET_OPS, Expr, from_generated, head_size_keys

# function -> (kind, index of its mask argument, index of its image argument or None)
MEASURES: dict[str, tuple[str, int, int | None]] = {
    "volume": ("volume", 0, None), "extents": ("extent", 0, None), "height": ("extent", 0, None),
    "width": ("extent", 0, None), "depth": ("extent", 0, None), "bbox": ("bbox", 0, None),
    "centroid": ("centroid", 0, None), "mean_intensity": ("mean_intensity", 1, 0),
    "intensity_stats": ("mean_intensity", 1, 0), "snr": ("snr", 1, 0),
    "count_components": ("lesion_count", 0, None), "hemisphere": ("lesion_side", 0, None),
    "signal": ("lesion_signal", 1, 0),
}
EDITS = {"keep": "keep_region", "remove": "remove_region", "crop": "crop"}
MASK_OPS = {"largest_component", "extreme_component", "brightest_component", "dilate", "erode", "fill_holes"}
DIFFUSION = frozenset({"DWI", "ADC"})
MEASURED_FOR_REPORT = frozenset({"volume", "normalized_volume", "asymmetry", "extent", "mean_intensity", "snr",
                                 "lesion_count", "lesion_side", "lesion_signal"})


@dataclass(frozen=True)
class Node:
    """A value of the program: ``call`` (``fn`` with ``args``), ``name`` (a free name: an input scan or
    an undefined one, in ``value``), ``const`` (a literal), ``item`` (``args[0]`` subscripted or
    unpacked by ``value``), ``other`` (arithmetic and anything else). ``var``: the variable it was
    assigned to, for reading its value back from the sandbox's environment."""

    kind: str
    fn: str = ""
    args: tuple["Node", ...] = ()
    value: Any = None
    var: str | None = None
    step: int = -1


@dataclass
class Finding:
    """One thing the program reported: its kind, the targets it concerns and where its value lives."""

    kind: str
    targets: tuple[Expr | None, ...] = ()
    scans: tuple[str | None, ...] = ()
    fn: str = ""
    var: str | None = None
    field_key: Any = None  # subscript of a record (e.g. "x" of a centroid), when one was reported
    image_scan: str | None = None  # the scan an intensity/signal was taken on
    step: int = -1
    how: str = ""  # respond, read or output
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "targets": [t.text() if t is not None else None for t in self.targets],
                "scans": list(self.scans), "function": self.fn, "variable": self.var, "step": self.step,
                "reported_by": self.how, **({"field": self.field_key} if self.field_key is not None else {}),
                **({"image": self.image_scan} if self.image_scan else {})}


@dataclass
class ProgramView:
    findings: list[Finding]
    generated: list[tuple[str | None, Expr]]  # every generate() call: (scan, target)
    functions: list[str]  # every library function called, in order
    unparsed_steps: list[int]

    @property
    def kinds(self) -> list[str]:
        seen: list[str] = []
        for f in self.findings:
            if f.kind not in seen:
                seen.append(f.kind)
        return seen


class _Reader:
    def __init__(self) -> None:
        self.env: dict[str, Node] = {}
        self.reports: list[tuple[Node, str, int]] = []
        self.generated: list[tuple[str | None, Expr]] = []
        self.functions: list[str] = []
        self.step = -1

    def expr(self, e: ast.expr) -> Node:
        if isinstance(e, ast.Name):
            return self.env.get(e.id, Node("name", value=e.id, step=self.step))
        if isinstance(e, ast.Constant):
            return Node("const", value=e.value, step=self.step)
        if isinstance(e, ast.Call) and isinstance(e.func, ast.Name):
            args = tuple(self.expr(a) for a in e.args)
            self.functions.append(e.func.id)
            node = Node("call", fn=e.func.id, args=args, step=self.step)
            if e.func.id == "generate" and len(args) >= 3 and isinstance(args[2].value, str):
                self.generated.append((_scan_name(args[1]), from_generated(args[2].value)))
            return node
        if isinstance(e, ast.Subscript):
            key = e.slice.value if isinstance(e.slice, ast.Constant) else None
            return Node("item", args=(self.expr(e.value),), value=key, step=self.step)
        if isinstance(e, ast.UnaryOp) and isinstance(e.operand, ast.Constant):
            return Node("const", value=-e.operand.value if isinstance(e.op, ast.USub) else e.operand.value)
        if isinstance(e, ast.JoinedStr):
            return Node("other", fn="fstring", args=tuple(self.expr(v.value) for v in e.values
                                                           if isinstance(v, ast.FormattedValue)))
        return Node("other", args=tuple(self.expr(c) for c in ast.iter_child_nodes(e) if isinstance(c, ast.expr)))

    def statement(self, s: ast.stmt, reporting: bool) -> None:
        if isinstance(s, ast.Assign):
            value = self.expr(s.value)
            for target in s.targets:
                if isinstance(target, ast.Name):
                    self.env[target.id] = replace(value, var=target.id)
                elif isinstance(target, (ast.Tuple, ast.List)):
                    for i, elt in enumerate(target.elts):
                        if isinstance(elt, ast.Name):
                            self.env[elt.id] = Node("item", args=(value,), value=i, var=elt.id, step=self.step)
        elif isinstance(s, ast.Expr) and isinstance(s.value, ast.Call) and isinstance(s.value.func, ast.Name):
            node = self.expr(s.value)
            if not reporting or not node.args:
                return
            if node.fn == "respond":
                arg = node.args[0]
                for part in (arg.args if arg.fn == "fstring" else (arg,)):
                    self.reports.append((part, "respond", self.step))
            elif node.fn == "read":
                self.reports.append((node.args[0], "read", self.step))
            elif node.fn == "output":
                self.reports.append((node.args[0], "output", self.step))


def _scan_name(node: Node) -> str | None:
    """The input scan a value lies on: a free name, or the scan of the image/mask it derives from."""
    if node.kind == "name":
        return str(node.value)
    if node.kind == "call" and node.fn == "generate" and len(node.args) >= 2:
        return _scan_name(node.args[1])
    if node.kind == "call" and node.args:
        return _scan_name(node.args[1] if node.fn in EDITS or node.fn == "brightest_component" else node.args[0])
    return None


def mask_of(node: Node) -> Expr | None:
    """The target expression of a mask value; None when the value is not a mask."""
    if node.kind == "item":
        return None
    if node.kind != "call":
        return None
    if node.fn == "generate" and len(node.args) >= 3 and isinstance(node.args[2].value, str):
        return from_generated(node.args[2].value)
    if node.fn in SET_OPS and len(node.args) == 2:
        a, b = mask_of(node.args[0]), mask_of(node.args[1])
        return Expr(SET_OPS[node.fn], args=(a, b)) if a is not None and b is not None else None
    if node.fn in MASK_OPS and node.args:
        inner = mask_of(node.args[1] if node.fn == "brightest_component" and len(node.args) > 1 else node.args[0])
        detail = str(node.args[1].value) if node.fn in ("extreme_component", "dilate", "erode") and \
            len(node.args) > 1 else ""
        return Expr(node.fn, args=(inner,), detail=detail) if inner is not None else None
    if node.fn == "threshold":
        return Expr("unknown", "threshold")
    return None


def _measure(node: Node) -> Finding | None:
    """The finding a quantity-valued node is (a measurement, or a combination of two)."""
    item_key = None
    while node.kind == "item":
        item_key, node = node.value, node.args[0]
    if node.kind != "call":
        return None
    if node.fn in MEASURES and len(node.args) > MEASURES[node.fn][1]:
        kind, m, img = MEASURES[node.fn]
        mask_node = node.args[m]
        return Finding(kind, (mask_of(mask_node),), (_scan_name(mask_node),), fn=node.fn, var=node.var,
                       field_key=item_key, image_scan=_scan_name(node.args[img]) if img is not None else None,
                       step=node.step)
    if node.fn in ("ratio", "asymmetry", "difference", "change", "percent_change") and len(node.args) == 2:
        a, b = (_measure(x) for x in node.args)
        targets = (a.targets[0] if a and a.targets else None, b.targets[0] if b and b.targets else None)
        scans = (a.scans[0] if a and a.scans else None, b.scans[0] if b and b.scans else None)
        volumes = bool(a and b and a.kind == "volume" and b.kind == "volume")
        if node.fn == "ratio":
            if volumes and targets[1] is not None and targets[1].key() in head_size_keys():
                kind, targets = "normalized_volume", (targets[0],)
            else:
                kind = "ratio"
        elif node.fn == "asymmetry":
            kind = "asymmetry"
        else:
            same = targets[0] is not None and targets[1] is not None and targets[0].key() == targets[1].key()
            kind = "longitudinal_change" if volumes and same and scans[0] != scans[1] else "difference"
            if kind == "longitudinal_change":
                targets = (targets[0],)
        return Finding(kind, targets, scans, fn=node.fn, var=node.var, field_key=item_key, step=node.step)
    return None


def _output_finding(node: Node) -> Finding:
    if node.kind == "call" and node.fn in EDITS and len(node.args) >= 2:
        return Finding(EDITS[node.fn], (mask_of(node.args[1]),), (_scan_name(node.args[0]),), fn=node.fn,
                       var=node.var, step=node.step)
    target = mask_of(node)
    if target is not None:
        return Finding("segment", (target,), (_scan_name(node),), fn=node.fn, var=node.var, step=node.step)
    return Finding("output", (), (_scan_name(node),), fn=node.fn, var=node.var, step=node.step)


def _key(f: Finding) -> tuple:
    return (f.kind, tuple(t.key() if t is not None else None for t in f.targets), f.scans, f.field_key, f.fn)


def analyze(codes: Sequence[str], errors: Sequence[str | None], modalities: Mapping[str, str]) -> ProgramView:
    """Findings of a run's steps (``codes`` with their ``errors``); ``modalities`` by scan name tell a
    diffusion pair from a pre/post-contrast pair."""
    reader = _Reader()
    unparsed: list[int] = []
    for index, (code, error) in enumerate(zip(codes, errors)):
        reader.step = index
        try:
            tree = ast.parse(strip_mod_markers(code)[0])
        except (SyntaxError, ValueError):
            unparsed.append(index)
            continue
        for statement in tree.body:
            reader.statement(statement, reporting=error is None)
    findings: list[Finding] = []
    seen: set[tuple] = set()
    for node, how, step in reader.reports:
        finding = _output_finding(node) if how == "output" else _measure(node)
        if finding is None:
            continue
        finding.how = how
        if how == "output" or finding.step < 0:
            finding.step = step
        if _key(finding) not in seen:
            seen.add(_key(finding))
            findings.append(finding)
    findings += _derived(findings, modalities)
    return ProgramView(findings, reader.generated, reader.functions, unparsed)


def _derived(findings: Iterable[Finding], modalities: Mapping[str, str]) -> list[Finding]:
    """Kinds made of several findings: a signal on two scans (enhancement: pre/post contrast;
    diffusion restriction: DWI/ADC), side + centroid of one target (lesion region), and a report
    (measurements of at least three things on at least two targets)."""
    findings = list(findings)
    out: list[Finding] = []
    signals: dict[tuple, list[Finding]] = {}
    for f in findings:
        if f.kind == "lesion_signal" and f.targets and f.targets[0] is not None:
            signals.setdefault(f.targets[0].key(), []).append(f)
    for group in signals.values():
        scans = {f.image_scan for f in group}
        if len(scans) >= 2:
            diffusion = any(modalities.get(s or "", "") in DIFFUSION for s in scans)
            out.append(Finding("diffusion_restriction" if diffusion else "enhancement", group[0].targets,
                               group[0].scans, fn="signal", step=max(f.step for f in group),
                               how=group[0].how, extra={"images": sorted(s or "" for s in scans)}))
    sides = {f.targets[0].key(): f for f in findings if f.kind == "lesion_side" and f.targets and f.targets[0]}
    for f in findings:
        if f.kind == "centroid" and f.targets and f.targets[0] is not None and f.targets[0].key() in sides:
            side = sides[f.targets[0].key()]
            out.append(Finding("lesion_region", side.targets, side.scans, fn="hemisphere", var=side.var,
                               step=max(side.step, f.step), how=side.how))
    measured = [f for f in findings if f.kind in MEASURED_FOR_REPORT]
    targets: dict[Any, Expr] = {}  # what the measurements concern, in order: a report "of the brain" measured it
    for t in (t for f in measured for t in f.targets if t is not None):
        targets.setdefault(t.key(), t)
    if len({_key(f) for f in measured}) >= 3 and len(targets) >= 2:
        out.append(Finding("report", tuple(targets.values()), (), fn="", step=max(f.step for f in measured),
                           how="respond"))
    return out


__all__ = ["Finding", "MEASURES", "Node", "ProgramView", "analyze", "mask_of"]
