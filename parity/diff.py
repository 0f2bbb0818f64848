"""The result types of a comparison: per term x role cells, listed mismatches, one case's diff.

``CaseDiff`` is the one result of comparing a candidate run with a reference
run (``parity.compare.compare``): every report renders it, the suite gathers
it, the diagnosis reads its per-element mask. ``Agreement`` is a one-line
summary view of a ``CaseDiff`` for tables. Pure data: no computation here.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from .tolerance import TERMS

__all__ = ["Agreement", "CaseDiff", "Cell", "Mismatch", "TERMS"]


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
    ofast_drift: int = 0             # outside the rule, within the -Ofast bound (an -Ofast reference only)

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
        self.ofast_drift += other.ofast_drift
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
    ofast_drift: int = 0             # delta elements within -Ofast drift: reported, not failures
    mismatches: list[Mismatch] = field(default_factory=list)
    needed: dict[str, dict[str, float | None]] = field(default_factory=dict)
    heatmaps: dict[str, list[list[int]]] = field(default_factory=dict)
    branches: dict[str, int] = field(default_factory=dict)
    causes: list[dict[str, Any]] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    error: str | None = None         # the case could not be compared (candidate failed, ...)
    skipped: str | None = None       # not compared, and why (not a failure)
    # Beyond the delta, where the candidate reports them (a full layer run):
    output_mismatches: int = 0       # activated output outside the rule
    role_mismatches: int = 0         # slots whose role bits differ (not borderline)
    stats_mismatches: dict[str, list[Any]] = field(default_factory=dict)   # name -> [candidate, reference]
    max_abs: float = 0.0             # largest |cand - ref| over delta (and output) where both are finite
    max_rel: float = 0.0
    # Per element of the delta ([B, n, 5+C, H, W]): failing mismatches and borderline ones (not saved).
    mask: np.ndarray | None = field(default=None, repr=False, compare=False)
    borderline_mask: np.ndarray | None = field(default=None, repr=False, compare=False)
    output_mask: np.ndarray | None = field(default=None, repr=False, compare=False)   # failing output elements
    role_mask: np.ndarray | None = field(default=None, repr=False, compare=False)     # [B, n, H, W] failing roles
    # For the explanation search (``RunOptions.search``): the candidate's delta and the case (not saved).
    candidate_delta: np.ndarray | None = field(default=None, repr=False, compare=False)
    source: Any = field(default=None, repr=False, compare=False)

    @property
    def passed(self) -> bool:
        return (self.error is None and not self.decision_mismatches and not self.value_mismatches
                and not self.output_mismatches and not self.role_mismatches and not self.stats_mismatches)

    def to_json(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in _NOT_SAVED}
        out["cells"] = [dataclasses.asdict(c) for c in self.cells]
        out["mismatches"] = [dataclasses.asdict(m) for m in self.mismatches]
        out["passed"] = self.passed
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "CaseDiff":
        data = {k: v for k, v in data.items() if k != "passed" and k not in _NOT_SAVED}
        data["shape"] = tuple(data["shape"])
        data["cells"] = [Cell(**c) for c in data.get("cells", [])]
        data["mismatches"] = [Mismatch(**m) for m in data.get("mismatches", [])]
        return cls(**data)


_NOT_SAVED = frozenset({"mask", "borderline_mask", "output_mask", "role_mask", "candidate_delta", "source"})


@dataclass
class Agreement:
    """One line of a table: how a candidate run compares with a reference run (a view of a ``CaseDiff``)."""

    name: str
    elements: int = 0
    decision_mismatches: int = 0
    value_mismatches: int = 0
    max_abs: float = 0.0
    max_rel: float = 0.0
    stats_mismatches: dict[str, Any] = field(default_factory=dict)
    skipped: str | None = None
    borderline: int = 0
    error: str | None = None
    ofast_drift: int = 0

    @classmethod
    def of(cls, diff: CaseDiff) -> "Agreement":
        elements = int(np.prod(diff.shape)) if diff.shape else 0
        value = diff.value_mismatches + diff.output_mismatches
        decision = diff.decision_mismatches + diff.role_mismatches
        return cls(diff.case, elements, decision, value, diff.max_abs, diff.max_rel, dict(diff.stats_mismatches),
                   diff.skipped, diff.borderline, diff.error, diff.ofast_drift)

    def __bool__(self) -> bool:
        return self.skipped is None and self.error is None and not (
            self.decision_mismatches or self.value_mismatches or self.stats_mismatches)

    @property
    def status(self) -> str:
        return "skipped" if self.skipped is not None else ("ok" if self else "MISMATCH")
