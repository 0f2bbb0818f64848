"""The explanation search's view of a run: cases, the candidate's deltas, cached variant runs, distances.

``Suite`` holds the cases and the candidate's delta on each (darknet's
``[B, n, 5+C, H, W]`` view) and runs a ``Variant`` on a case, cached per
*structural* variant (the switches that change decisions or per-write
formulas); chain-rule factors, normalizers, reductions and weights are
applied to a cached run. ``evaluate`` fits each term's factor
(``parity.deviations.fit``) and counts the elements outside the one
tolerance rule, with a log-ratio distance that ranks near misses.
"""
from __future__ import annotations

import dataclasses
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Sequence

import numpy as np
import torch

from .. import roles as _roles
from ..case import Case
from ..errors import DarknetInputWarning
from ..result import LayerRun
from ..tolerance import TERMS, Tolerance, ToleranceRule
from ..torch_layer import yolo_forward
from .fit import DARKNET_FACTOR, TermFactor, case_ratio, fit_factor
from .variant import DARKNET, Variant
from .variant_forward import configured, reduction_quantities, rescale

# term groups that share one fitted factor, and the Variant fields that hold it
GROUPS = (("box", slice(0, 4), "reduce_box", "weight_box"), ("obj", slice(4, 5), "reduce_obj", "weight_obj"),
          ("cls", slice(5, None), "reduce_cls", "weight_cls"))
FACTOR_FIELDS = ("reduce_box", "reduce_obj", "reduce_cls", "weight_box", "weight_obj", "weight_cls", "heads",
                 "iou_normalizer", "obj_normalizer")
# the cfg normalizer a port may leave out of each term group (None: the group has none)
NORMALIZERS = {"box": "iou_normalizer", "obj": "obj_normalizer", "cls": None}
# an element's distance from the candidate: the log of the ratio, capped; a zero/nonzero or sign difference
# costs the cap (the greedy step ranks trials by the sum, so factors that fix no element alone still count)
DISTANCE_CAP = 10.0
# switches applied to a finished run (no forward pass of their own)
CHAIN_FIELDS = ("xy_logistic_grad", "xy_scale_grad", "obj_loss")
RUN_CACHE_BYTES = 512 * 2**20     # cached runs the search keeps (oldest dropped first)
POSITIVE = _roles.ROLE_BEST_ANCHOR | _roles.ROLE_EXTRA_ANCHOR | _roles.ROLE_TRUTH_THRESH


@dataclass(frozen=True)
class SearchCase:
    """One case and the candidate's delta on it (darknet's sign, the input's shape).

    ``candidate`` None: the candidate agreed with darknet on this case (a
    passing case of the run), so darknet's own delta stands for it and the
    run need not keep it.
    """

    name: str
    case: Case
    candidate: np.ndarray | None
    rule: ToleranceRule = ToleranceRule()


@dataclass
class Score:
    variant: Variant                       # with the fitted factors
    factors: dict[str, TermFactor]
    per_case: dict[int, np.ndarray]        # case index -> elements outside the rule per term (6)
    distances: dict[int, float] = field(default_factory=dict)   # case index -> summed distance

    @property
    def total(self) -> int:
        return int(sum(int(c.sum()) for c in self.per_case.values()))

    @property
    def distance(self) -> float:
        return float(sum(self.distances.values()))

    def terms(self) -> set[str]:
        out: set[str] = set()
        for counts in self.per_case.values():
            out |= {t for t, c in zip(TERMS, counts) if c}
        return out


def _nbytes(run: LayerRun) -> int:
    return sum(int(t.numel() * t.element_size()) for t in (run.delta, run.output) if t is not None)


@lru_cache(maxsize=4096)
def structural(variant: Variant) -> Variant:
    neutral = {k: getattr(DARKNET, k) for k in FACTOR_FIELDS + CHAIN_FIELDS}
    if variant.obj_loss not in ("bce", "mse"):      # focal is a per-write formula, not a factor
        del neutral["obj_loss"]
    return dataclasses.replace(variant, **neutral)


@lru_cache(maxsize=4096)
def without_factors(variant: Variant) -> Variant:
    return dataclasses.replace(variant, **{k: getattr(DARKNET, k) for k in FACTOR_FIELDS})


class Suite:
    """The cases, the candidate's deltas in darknet's [B, n, 5+C, H, W] view, and cached runs."""

    def __init__(self, cases: Sequence[SearchCase]) -> None:
        self.cases = list(cases)
        self._runs: OrderedDict[tuple[int, Variant], LayerRun] = OrderedDict()
        self._held = 0          # bytes of the cached runs' deltas and outputs
        self._counts: dict[tuple[int, Variant], dict[str, int]] = {}   # reduction counts per run (small)
        self._features: frozenset[str] | None = None
        self.cand = [self._view(c, np.asarray(c.candidate, dtype=np.float32) if c.candidate is not None
                                else self.run(i, DARKNET).delta.numpy()) for i, c in enumerate(self.cases)]

    @staticmethod
    def _view(c: SearchCase, delta: np.ndarray) -> np.ndarray:
        B, _, H, W = c.case.input.shape
        cfg = c.case.config
        return delta.reshape(B, cfg.n, 5 + cfg.classes, H, W)

    def run(self, i: int, variant: Variant) -> LayerRun:
        """The structural run of case ``i`` (cached): decisions and per-write formulas, no factors."""
        key = (i, structural(variant))
        got = self._runs.get(key)
        if got is not None:
            self._runs.move_to_end(key)
        else:
            c = self.cases[i].case
            shape = key[1]
            cfg = configured(c.config, shape)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DarknetInputWarning)
                got = yolo_forward(torch.from_numpy(c.input), torch.from_numpy(c.truth), cfg, c.flavor,
                                   variant=None if shape.is_darknet else shape)
            self._runs[key] = got
            self._held += _nbytes(got)
            while self._held > RUN_CACHE_BYTES and len(self._runs) > 1:
                _, old = self._runs.popitem(last=False)
                self._held -= _nbytes(old)
        return got

    def chained(self, i: int, variant: Variant) -> np.ndarray:
        """Case ``i``'s delta under ``variant`` without its reductions and weights, [B, n, 5+C, H, W]."""
        c = self.cases[i].case
        run = self.run(i, variant)
        chain = without_factors(variant)
        if any(getattr(chain, k) != getattr(DARKNET, k) for k in CHAIN_FIELDS):
            run = rescale(run, torch.from_numpy(c.input), configured(c.config, chain), chain, c.flavor)
        return self._view(self.cases[i], run.delta.numpy())

    @property
    def features(self) -> frozenset[str]:
        """Input darknet treats specially that some case holds (a deviation about it is tried only then)."""
        if self._features is None:
            found = set()
            for sc in self.cases:
                c = sc.case
                if not np.isfinite(c.input).all():
                    found.add("nonfinite")
                x = c.truth[..., 0]
                limit = min(c.config.max_boxes, x.shape[1])
                zero = np.cumsum(x[:, :limit] == 0, axis=1) > 0
                if (zero & (x[:, :limit] != 0)).any():
                    found.add("terminator")
                if (x[:, limit:] != 0).any():
                    found.add("past_max")
                cls = c.truth[..., 4]
                if ((x != 0) & ((cls < 0) | (cls >= c.config.classes))).any():
                    found.add("class_oob")
            self._features = frozenset(found)
        return self._features

    def quantities(self, i: int, variant: Variant, group: str) -> dict[str, float]:
        """The counts a term of ``group`` may be divided by, for case ``i`` under ``variant``'s decisions.

        Also ``"normalizer"``: the cfg's normalizer of that term (a port may leave it out).
        """
        cfg = self.cases[i].case.config
        key = (i, structural(variant))
        counts = self._counts.get(key)
        if counts is None:      # one count per run, shared by the three term groups and every trial
            heads = self.cases[i].case.meta.get("heads")
            if not isinstance(heads, int):
                total = len(cfg.anchors) // 2
                heads = total // cfg.n if cfg.n and total % cfg.n == 0 else 1
            counts = self._counts[key] = dict(reduction_quantities(self.run(i, variant), cfg.classes, heads))
            if heads <= 1:
                del counts["heads"]
        out: dict[str, float] = dict(counts)
        if group != "cls":      # a mean over classes is a class term's (the catalogue's reductions)
            out = {k: v for k, v in out.items() if not k.endswith("_classes")}
        name = NORMALIZERS[group]
        out["normalizer"] = float(np.float32(getattr(cfg, name))) if name else 1.0
        return out


def term_rows(k: int) -> slice:
    return slice(k, k + 1) if k < 5 else slice(5, None)


def outside_mask(cand: np.ndarray, model: np.ndarray, tol: Tolerance) -> np.ndarray:
    """Elements outside the rule: a zero/nonzero difference or a value beyond ``tol`` (the one rule).

    Only elements that differ are judged (NaN differs from itself; the rule
    lets NaN agree with NaN and an infinity with itself).
    """
    out = cand != model
    if out.any():
        c, m = cand[out], model[out]
        out[out] = ~tol.within(c, m) | ((c == 0) != (m == 0))
    return out


def outside(cand: np.ndarray, model: np.ndarray, rule: ToleranceRule) -> tuple[np.ndarray, float]:
    """Elements outside the rule per term (x, y, w, h, obj, cls), and their summed distance."""
    counts = np.zeros(len(TERMS), dtype=np.int64)
    distance = 0.0
    for k, term in enumerate(TERMS):
        c, m = cand[:, :, term_rows(k)], model[:, :, term_rows(k)]
        bad = outside_mask(c, m, rule.for_term(term))
        if not bad.any():
            continue
        cb, mb = c[bad].astype(np.float64), m[bad].astype(np.float64)
        counts[k] = cb.size
        with np.errstate(divide="ignore", invalid="ignore"):
            gap = np.abs(np.log(np.abs(cb)) - np.log(np.abs(mb)))
        gap = np.where(np.isfinite(gap) & (np.sign(cb) == np.sign(mb)), np.minimum(gap, DISTANCE_CAP), DISTANCE_CAP)
        distance += float(gap.sum())
    return counts, distance


def apply_factors(delta: np.ndarray, factors: dict[str, TermFactor], quantities: dict[str, dict[str, float]]) -> np.ndarray:
    out = delta
    for name, rows, _, _ in GROUPS:
        f = factors.get(name, DARKNET_FACTOR)
        if f.is_darknet:
            continue
        if out is delta:
            out = delta.copy()
        out[:, :, rows] = out[:, :, rows] * np.float32(f.multiplier(quantities[name]))
    return out


def evaluate(suite: Suite, variant: Variant, idx: Sequence[int], *, fixed: dict[str, TermFactor] | None = None,
              fit_on: Sequence[int] | None = None) -> Score:
    """Elements outside the rule on ``idx`` under ``variant`` with per-term factors fitted (or ``fixed``)."""
    base = without_factors(variant)
    chained = {i: suite.chained(i, base) for i in idx}
    quantities = {i: {name: suite.quantities(i, base, name) for name, *_ in GROUPS} for i in idx}
    factors = dict(fixed or {})
    for name, rows, _, _ in GROUPS:
        if name in factors:
            continue
        use = [i for i in (fit_on or idx) if i in chained]
        ratios = [case_ratio(suite.cand[i][:, :, rows], chained[i][:, :, rows]) for i in use]
        factors[name] = fit_factor(ratios, [quantities[i][name] for i in use])
    per_case, distances = {}, {}
    for i in idx:
        per_case[i], distances[i] = outside(suite.cand[i], apply_factors(chained[i], factors, quantities[i]),
                                             suite.cases[i].rule)
    heads = int(quantities[idx[0]]["box"].get("heads", 1)) if idx else 1
    return Score(with_factors(base, factors, heads), factors, per_case, distances)


def with_factors(variant: Variant, factors: dict[str, TermFactor], heads: int = 1) -> Variant:
    changes: dict[str, Any] = {}
    for name, _, reduce_field, weight_field in GROUPS:
        f = factors.get(name, DARKNET_FACTOR)
        changes[reduce_field] = f.reduction
        changes[weight_field] = float(f.weight)
        if f.normalizer_ignored and NORMALIZERS[name]:
            changes[NORMALIZERS[name]] = "ignored"
    if any(f.reduction == "heads" for f in factors.values()):
        changes["heads"] = heads
    return dataclasses.replace(variant, **changes)


def necessary_factors(suite: Suite, variant: Variant, idx: Sequence[int], score: Score) -> Score:
    """Drop a fitted factor whose removal leaves the count no worse (a factor must be necessary too)."""
    for name, *_ in GROUPS:
        if score.factors.get(name, DARKNET_FACTOR).is_darknet:
            continue
        fixed = dict(score.factors)
        fixed[name] = DARKNET_FACTOR
        trial = evaluate(suite, variant, idx, fixed=fixed)
        if trial.total <= score.total:
            score = trial
    return score
