"""Term-by-term comparison of a candidate's delta with the reference's. Pure: no printing.

The delta splits into terms (x, y, w, h, objectness, classes; per class on
request) and each slot gets a role from the reference's decisions (negative,
ignored, best anchor, extra anchor via iou_thresh, truth_thresh positive,
written more than once). For every term x role: element counts, decision
mismatches (zero vs nonzero: whether darknet writes the delta at all, never a
tolerance question), value mismatches under the tolerance rule, max abs/rel
error (relative only where the reference is nonzero) and ulps. A mismatch at a
slot whose deciding quantity sits within tolerance of its threshold is
borderline: reported, not a failure. ``CaseDiff`` is the one result every
report renders.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from .agreement import within
from .errors import ParityError
from .facts import ROLES, SlotFacts, slot_path, slot_roles

TERMS = ("x", "y", "w", "h", "obj", "cls")
DEFAULT_TOLERANCE_FILE = Path(__file__).resolve().parent / "tolerances.yaml"


@dataclass(frozen=True)
class Tolerance:
    """|cand - ref| <= atol + rtol*|ref|."""

    atol: float = 1e-5
    rtol: float = 1e-4

    def within(self, cand: np.ndarray, ref: np.ndarray) -> np.ndarray:
        return within(cand, ref, self.atol, self.rtol)


@dataclass(frozen=True)
class ToleranceRule:
    """A default tolerance and per-term overrides (from a checked-in YAML file)."""

    default: Tolerance = Tolerance()
    terms: Mapping[str, Tolerance] = field(default_factory=dict)
    source: str = "built-in defaults"

    def for_term(self, term: str) -> Tolerance:
        base = term if term in self.terms else ("cls" if term.startswith("cls") else term)
        return self.terms.get(base, self.default)

    def describe(self) -> str:
        d = self.default
        text = f"|cand - ref| <= {d.atol:g} + {d.rtol:g}*|ref|"
        extra = ", ".join(f"{t}: {v.atol:g} + {v.rtol:g}*|ref|" for t, v in sorted(self.terms.items()))
        return f"{text}{' (' + extra + ')' if extra else ''} [{self.source}]"

    def as_dict(self) -> dict[str, Any]:
        return {"default": dataclasses.asdict(self.default),
                "terms": {k: dataclasses.asdict(v) for k, v in self.terms.items()}, "source": self.source}


def load_tolerances(path: str | Path | None = None) -> ToleranceRule:
    """The tolerance rule from YAML: ``default: {atol, rtol}`` and ``terms: {x: {atol, rtol}, ...}``."""
    import yaml

    path = Path(path) if path is not None else DEFAULT_TOLERANCE_FILE
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ParityError(f"{path}: cannot read the tolerance file: {exc}") from exc

    def tol(value: Any, where: str) -> Tolerance:
        if not isinstance(value, Mapping) or set(value) - {"atol", "rtol"}:
            raise ParityError(f"{path}: {where} must be a mapping with atol and/or rtol")
        try:
            t = Tolerance(float(value.get("atol", 1e-5)), float(value.get("rtol", 1e-4)))
        except (TypeError, ValueError) as exc:
            raise ParityError(f"{path}: {where}: {exc}") from exc
        if t.atol < 0 or t.rtol < 0:
            raise ParityError(f"{path}: {where}: tolerances must be >= 0")
        return t

    if not isinstance(data, Mapping) or set(data) - {"default", "terms"}:
        raise ParityError(f"{path}: expected keys 'default' and 'terms'")
    default = tol(data.get("default", {}), "default")
    terms = {}
    for name, value in (data.get("terms") or {}).items():
        if name not in TERMS and not (str(name).startswith("cls") and str(name)[3:].isdigit()):
            raise ParityError(f"{path}: unknown term {name!r}; terms are {', '.join(TERMS)} (or cls<k>)")
        terms[str(name)] = tol(value, f"terms.{name}")
    return ToleranceRule(default, terms, str(path))


@dataclass
class Cell:
    """One term x role of one case."""

    term: str
    role: str
    elements: int = 0
    written: int = 0                 # elements the reference writes (nonzero)
    value_mismatches: int = 0
    decision_mismatches: int = 0
    borderline: int = 0
    max_abs: float = 0.0
    max_rel: float = 0.0
    max_ulps: int = 0

    @property
    def failing(self) -> int:
        return self.decision_mismatches + self.value_mismatches

    def add(self, other: "Cell") -> None:
        """Fold another case's cell of the same term x role into this one (sums and maxima)."""
        self.elements += other.elements
        self.written += other.written
        self.decision_mismatches += other.decision_mismatches
        self.value_mismatches += other.value_mismatches
        self.borderline += other.borderline
        self.max_abs = max(self.max_abs, other.max_abs)
        self.max_rel = max(self.max_rel, other.max_rel)
        self.max_ulps = max(self.max_ulps, other.max_ulps)


@dataclass
class Mismatch:
    """One differing element with the reference's reasoning at its slot."""

    kind: str                        # "value" or "decision"
    image: int
    anchor: int
    j: int
    i: int
    term: str
    entry: int
    reference: float
    candidate: float
    role: str
    borderline: bool
    exact: float | None = None       # the PyTorch port in float64
    closer: str | None = None        # "reference", "candidate" or "tie"
    context: dict[str, Any] = field(default_factory=dict)


@dataclass
class CaseDiff:
    """The comparison of one case; ``passed`` ignores borderline decisions."""

    case: str
    flavor: str
    shape: tuple[int, ...]
    rule: dict[str, Any]
    cells: list[Cell] = field(default_factory=list)
    decision_mismatches: int = 0
    value_mismatches: int = 0
    borderline: int = 0
    mismatches: list[Mismatch] = field(default_factory=list)
    needed: dict[str, dict[str, float | None]] = field(default_factory=dict)
    heatmaps: dict[str, list[list[int]]] = field(default_factory=dict)
    branches: dict[str, int] = field(default_factory=dict)
    causes: list[dict[str, Any]] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    error: str | None = None         # the case could not be compared (candidate failed, ...)
    skipped: str | None = None       # not compared, and why (not a failure)

    @property
    def passed(self) -> bool:
        return self.error is None and not self.decision_mismatches and not self.value_mismatches

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["passed"] = self.passed
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "CaseDiff":
        data = dict(data)
        data.pop("passed", None)
        data["shape"] = tuple(data["shape"])
        data["cells"] = [Cell(**c) for c in data.get("cells", [])]
        data["mismatches"] = [Mismatch(**m) for m in data.get("mismatches", [])]
        return cls(**data)


def ulps(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distance in float32 units in the last place (NaN or inf pairs: 0 if equal)."""
    def ordered(v: np.ndarray) -> np.ndarray:
        bits = np.ascontiguousarray(v, dtype=np.float32).view(np.int32).astype(np.int64)
        return np.where(bits < 0, -(bits & 0x7FFFFFFF), bits)
    return np.abs(ordered(a) - ordered(b))


def _term_index(classes: int, per_class: bool) -> tuple[tuple[str, ...], np.ndarray]:
    """Term names and, per entry of an anchor block, the index of its term."""
    if per_class:
        names = TERMS[:5] + tuple(f"cls{k}" for k in range(classes))
        return names, np.arange(5 + classes)
    return TERMS, np.minimum(np.arange(5 + classes), 5)


def _needed(cand: np.ndarray, ref: np.ndarray, tol: Tolerance) -> dict[str, float | None]:
    """Smallest atol (rtol as set) and rtol (atol as set) under which these values pass."""
    finite = np.isfinite(cand) & np.isfinite(ref)
    c, r = cand[finite].astype(np.float64), ref[finite].astype(np.float64)
    if c.size == 0:
        return {"atol": None, "rtol": None}
    err = np.abs(c - r)
    atol = float(np.max(err - tol.rtol * np.abs(r)))
    rtol: float | None = None
    if np.all(r != 0):
        rtol = float(np.max((err - tol.atol) / np.abs(r)))
    elif np.all(err[r == 0] <= tol.atol):
        rtol = float(np.max((err[r != 0] - tol.atol) / np.abs(r[r != 0]))) if np.any(r != 0) else None
    return {"atol": max(atol, 0.0), "rtol": None if rtol is None else max(rtol, 0.0)}


def diff_case(name: str, flavor: str, ref_delta: np.ndarray, cand_delta: np.ndarray, facts: SlotFacts, *,
              rule: ToleranceRule = ToleranceRule(), per_class: bool = False, top_k: int = 10,
              exact_delta: np.ndarray | None = None, branches: Mapping[str, int] | None = None) -> CaseDiff:
    """Compare ``cand_delta`` with ``ref_delta`` (both [B, n*(5+c), H, W], darknet's sign).

    ``facts`` (from ``slot_facts``) gives each slot's role, borderline flag and
    the context of listed mismatches; ``exact_delta`` (the float64 recompute)
    says which side of a value mismatch is closer.
    """
    config = facts.config
    B, _, H, W = ref_delta.shape
    n, C = config.n, config.classes
    E = 5 + C
    if cand_delta.shape != ref_delta.shape:
        raise ParityError(f"{name}: candidate delta shape {cand_delta.shape} differs from the reference's "
                          f"{ref_delta.shape}")
    ref = ref_delta.reshape(B, n, E, H, W)
    cand = cand_delta.reshape(B, n, E, H, W)
    term_names, term_of_entry = _term_index(C, per_class)
    roles = slot_roles(facts.roles)
    border = np.repeat(facts.borderline[:, :, None], E, axis=2)
    if facts.borderline_obj is not None:
        border[:, :, 4] |= facts.borderline_obj
    decision = (ref != 0) != (cand != 0)
    value = np.zeros(ref.shape, bool)
    result = CaseDiff(name, flavor, tuple(ref_delta.shape), rule.as_dict(), branches=dict(branches or {}))
    for t, term in enumerate(term_names):
        entries = np.nonzero(term_of_entry == t)[0]
        part = slice(int(entries[0]), int(entries[-1]) + 1)      # a term's entries are contiguous
        tol = rule.for_term(term)
        r, c = ref[:, :, part], cand[:, :, part]
        value[:, :, part] = ~decision[:, :, part] & ~tol.within(c, r)
        _fill_term(result, term, r, c, roles, decision[:, :, part], value[:, :, part], border[:, :, part])
        failing_value = value[:, :, part] & ~border[:, :, part]
        if failing_value.any():
            result.needed[term] = _needed(c[failing_value], r[failing_value], tol)
        bad = (decision[:, :, part] | value[:, :, part]) & ~border[:, :, part]
        if bad.any():
            result.heatmaps[term] = bad.sum(axis=(0, 1, 2)).astype(int).tolist()
    failing_decision, failing_value = decision & ~border, value & ~border
    result.decision_mismatches = int(failing_decision.sum())
    result.value_mismatches = int(failing_value.sum())
    result.borderline = int(((decision | value) & border).sum())
    result.mismatches = _first_mismatches(ref, cand, facts, failing_decision, failing_value,
                                          (decision | value) & border, term_names, term_of_entry, top_k)
    if exact_delta is not None:
        add_exact(result, exact_delta, E)
    return result


def add_exact(result: CaseDiff, exact_delta: np.ndarray, entries: int) -> None:
    """Give each listed value mismatch the float64 value and which side is closer to it.

    ``exact_delta`` is the PyTorch port in float64 ([B, n*entries, H, W],
    ``entries`` = 5 + classes); only listed value mismatches read it, so a
    caller need compute it only when ``result`` lists one.
    """
    for m in result.mismatches:
        if m.kind != "value":
            continue
        m.exact = x = float(exact_delta[m.image, m.anchor * entries + m.entry, m.j, m.i])
        dr, dc = abs(m.reference - x), abs(m.candidate - x)
        m.closer = "tie" if dr == dc else ("reference" if dr < dc else "candidate")


def _fill_term(result: CaseDiff, term: str, ref: np.ndarray, cand: np.ndarray, roles: np.ndarray,
               decision: np.ndarray, value: np.ndarray, border: np.ndarray) -> None:
    """The Cells of one term: per-slot sums and maxima over its entries, grouped by role."""
    both = np.isfinite(ref) & np.isfinite(cand)
    with np.errstate(invalid="ignore"):
        err = np.where(both, np.abs(cand.astype(np.float64) - ref), 0.0)
        rel = np.where(both & (ref != 0), err / np.where(ref != 0, np.abs(ref.astype(np.float64)), 1.0), 0.0)
    ulp = np.where(both, ulps(cand, ref), 0)
    per_slot = {
        "written": (ref != 0).sum(axis=2), "value": (value & ~border).sum(axis=2),
        "decision": (decision & ~border).sum(axis=2), "border": ((decision | value) & border).sum(axis=2),
        "abs": err.max(axis=2), "rel": rel.max(axis=2), "ulps": ulp.max(axis=2),
    }
    width = ref.shape[2]
    for r, role in enumerate(ROLES):
        sel = roles == r
        slots = int(sel.sum())
        if slots == 0:
            continue
        result.cells.append(Cell(
            term, role, slots * width, int(per_slot["written"][sel].sum()), int(per_slot["value"][sel].sum()),
            int(per_slot["decision"][sel].sum()), int(per_slot["border"][sel].sum()),
            float(per_slot["abs"][sel].max()), float(per_slot["rel"][sel].max()), int(per_slot["ulps"][sel].max())))


def _first_mismatches(ref, cand, facts, failing_decision, failing_value, borderline, term_names, term_of_entry,
                      top_k: int) -> list[Mismatch]:
    """Up to ``top_k`` failures (decisions first), then borderline ones, with context."""
    picked: list[tuple[str, tuple[int, ...], bool]] = []
    for mask, kind, is_border in ((failing_decision, "decision", False), (failing_value, "value", False),
                                  (borderline, "borderline", True)):
        for idx in map(tuple, np.argwhere(mask)[: max(0, top_k - len(picked))]):
            picked.append((kind, idx, is_border))
    out = []
    paths: dict[tuple[int, int, int, int], dict[str, Any]] = {}
    for kind, (b, a, e, j, i), is_border in picked:
        slot = (int(b), int(a), int(j), int(i))
        if slot not in paths:
            paths[slot] = slot_path(facts, *slot)
        r, c = float(ref[b, a, e, j, i]), float(cand[b, a, e, j, i])
        if kind == "borderline":
            kind = "decision" if (r != 0) != (c != 0) else "value"
        out.append(Mismatch(kind, *slot[:2], slot[2], slot[3], term_names[term_of_entry[e]], int(e), r, c,
                            paths[slot]["role"], is_border, context=paths[slot]))
    return out
