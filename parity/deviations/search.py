"""The explanation search: the smallest set of catalogue deviations under which darknet reproduces a port.

Given cases and the candidate's delta on each (darknet's sign), find the
``Variant`` (darknet with a few named switches changed, parameters fitted)
whose delta equals the candidate's under the one tolerance rule on every
element, with as few deviations as possible, each one necessary:

1. **Greedy forward selection** on a few *screening* cases (the smallest
   failing ones, covering every failing term): each step tries every
   catalogue deviation that can touch a failing term (each decision value
   of its parameters, thresholds fitted as intervals from the candidate's
   own decisions) and keeps the one that most reduces the count of elements
   outside the rule. Every trial refits the per-term factors (reductions
   and weights, ``parity.deviations.fit``), so deviations that mask each
   other are judged as they combine.
2. **Backward elimination**: a deviation whose removal (factors refitted)
   leaves the count no worse is dropped. What remains is necessary.
3. **Validation on the whole suite**: cases the result does not reproduce
   join the screening set and the search goes on from there (a few rounds).

Runs are cached per case and *structural* variant (the switches that change
decisions or per-write formulas); chain-rule factors and reductions are
applied to a cached run, so most trials cost no forward pass.
"""
from __future__ import annotations

import dataclasses
import time
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch

from .. import roles as _roles
from ..case import Case
from ..errors import DarknetInputWarning
from ..result import LayerRun
from ..tolerance import TERMS, Tolerance, ToleranceRule
from .catalogue import BY_ID, Deviation, executable
from .fit import DARKNET_FACTOR, TermFactor, case_ratio, fit_factor, fit_ratio_limit, fit_threshold
from .variant import CHOICES, DARKNET, Variant
from .variant_forward import configured, reduction_quantities, rescale
from ..torch_layer import yolo_forward

__all__ = ["SearchCase", "Finding", "Explanation", "search"]

# term groups that share one fitted factor, and the Variant fields that hold it
GROUPS = (("box", slice(0, 4), "reduce_box", "weight_box"), ("obj", slice(4, 5), "reduce_obj", "weight_obj"),
          ("cls", slice(5, None), "reduce_cls", "weight_cls"))
FACTOR_FIELDS = ("reduce_box", "reduce_obj", "reduce_cls", "weight_box", "weight_obj", "weight_cls", "heads",
                 "iou_normalizer", "obj_normalizer")
# deviations that are fitted as a term's factor, never tried one by one
FACTOR_DEVIATIONS = frozenset({"term_weight", "iou_normalizer_ignored", "obj_normalizer_ignored", "sign_flipped"})
# the cfg normalizer a port may leave out of each term group (None: the group has none)
NORMALIZERS = {"box": "iou_normalizer", "obj": "obj_normalizer", "cls": None}
# an element's distance from the candidate: the log of the ratio, capped; a zero/nonzero or sign difference
# costs the cap (the greedy step ranks trials by the sum, so factors that fix no element alone still count)
DISTANCE_CAP = 10.0
# switches applied to a finished run (no forward pass of their own)
CHAIN_FIELDS = ("xy_logistic_grad", "xy_scale_grad", "obj_loss")
SCREEN_CASES = 6
RUN_CACHE_BYTES = 512 * 2**20     # cached runs the search keeps (oldest dropped first)
PROXY_CASES = 1     # a greedy step first ranks every trial on the screening cases that differ most ...
SHORTLIST = 8       # ... and runs only this many closest ones on every screening case
ROUNDS = 3          # validations on the whole suite (cases it misses join the screening set)
PASSES = 4          # forward, backward and swap passes per round
_POSITIVE = _roles.ROLE_BEST_ANCHOR | _roles.ROLE_EXTRA_ANCHOR | _roles.ROLE_TRUTH_THRESH


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


@dataclass(frozen=True)
class Finding:
    """One deviation of the explanation, with its fitted parameters."""

    id: str
    params: dict[str, Any]
    accounts_for: int          # elements outside the rule on the searched cases when it is taken out
    text: str                  # what the candidate does, parameters in words

    @property
    def deviation(self) -> Deviation:
        return BY_ID[self.id]


@dataclass
class Explanation:
    """The search's answer: the deviations, what they reproduce, and what remains."""

    findings: list[Finding]
    variant: Variant
    cases: int
    cases_reproduced: int
    elements: int
    elements_outside: int          # elements still outside the rule under ``variant``
    outside_before: int            # elements outside the rule under darknet's own semantics
    remains: dict[str, int] = field(default_factory=dict)    # term -> elements still outside
    first: str | None = None        # where the first remaining difference is
    seconds: float = 0.0
    screened: tuple[str, ...] = ()

    @property
    def exact(self) -> bool:
        return self.elements_outside == 0

    @property
    def ids(self) -> set[str]:
        return {f.id for f in self.findings}

    def as_dict(self) -> dict[str, Any]:
        return {"changes": [{"id": f.id, "family": f.deviation.family, "params": _plain_params(f.params),
                             "accounts_for": f.accounts_for, "text": f.text, "darknet_does": f.deviation.darknet_does,
                             "darknet_function": f.deviation.darknet_function, "fix": f.deviation.fix,
                             "snippet": f.deviation.snippet} for f in self.findings],
                "cases": self.cases, "cases_reproduced": self.cases_reproduced, "elements": self.elements,
                "elements_outside": self.elements_outside, "outside_before": self.outside_before,
                "remains": dict(self.remains), "first": self.first, "seconds": round(self.seconds, 3)}


def _plain_params(params: dict[str, Any]) -> dict[str, Any]:
    return {k: (float(v) if isinstance(v, (float, np.floating)) else v) for k, v in params.items()}


# ---------------------------------------------------------------------------------------------------------
# evaluating a variant on cases

@dataclass
class _Score:
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
def _structural(variant: Variant) -> Variant:
    neutral = {k: getattr(DARKNET, k) for k in FACTOR_FIELDS + CHAIN_FIELDS}
    if variant.obj_loss not in ("bce", "mse"):      # focal is a per-write formula, not a factor
        del neutral["obj_loss"]
    return dataclasses.replace(variant, **neutral)


@lru_cache(maxsize=4096)
def _without_factors(variant: Variant) -> Variant:
    return dataclasses.replace(variant, **{k: getattr(DARKNET, k) for k in FACTOR_FIELDS})


class _Suite:
    """The cases, the candidate's deltas in darknet's [B, n, 5+C, H, W] view, and cached runs."""

    def __init__(self, cases: Sequence[SearchCase]) -> None:
        self.cases = list(cases)
        self._runs: OrderedDict[tuple[int, Variant], LayerRun] = OrderedDict()
        self._held = 0          # bytes of the cached runs' deltas and outputs
        self._features: frozenset[str] | None = None
        self.forwards = 0
        self.cand = [self._view(c, np.asarray(c.candidate, dtype=np.float32) if c.candidate is not None
                                else self.run(i, DARKNET).delta.numpy()) for i, c in enumerate(self.cases)]

    @staticmethod
    def _view(c: SearchCase, delta: np.ndarray) -> np.ndarray:
        B, _, H, W = c.case.input.shape
        cfg = c.case.config
        return delta.reshape(B, cfg.n, 5 + cfg.classes, H, W)

    def run(self, i: int, variant: Variant) -> LayerRun:
        """The structural run of case ``i`` (cached): decisions and per-write formulas, no factors."""
        key = (i, _structural(variant))
        got = self._runs.get(key)
        if got is not None:
            self._runs.move_to_end(key)
        else:
            c = self.cases[i].case
            structural = key[1]
            cfg = configured(c.config, structural)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DarknetInputWarning)
                got = yolo_forward(torch.from_numpy(c.input), torch.from_numpy(c.truth), cfg, c.flavor,
                                   variant=None if structural.is_darknet else structural)
            self._runs[key] = got
            self._held += _nbytes(got)
            while self._held > RUN_CACHE_BYTES and len(self._runs) > 1:
                _, old = self._runs.popitem(last=False)
                self._held -= _nbytes(old)
            self.forwards += 1
        return got

    def chained(self, i: int, variant: Variant) -> np.ndarray:
        """Case ``i``'s delta under ``variant`` without its reductions and weights, [B, n, 5+C, H, W]."""
        c = self.cases[i].case
        run = self.run(i, variant)
        chain = _without_factors(variant)
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
        c = self.cases[i].case
        cfg = c.config
        heads = c.meta.get("heads")
        if not isinstance(heads, int):
            total = len(cfg.anchors) // 2
            heads = total // cfg.n if cfg.n and total % cfg.n == 0 else 1
        out: dict[str, float] = dict(reduction_quantities(self.run(i, variant), cfg.classes, heads))
        if heads <= 1:
            del out["heads"]
        if group != "cls":      # a mean over classes is a class term's (the catalogue's reductions)
            out = {k: v for k, v in out.items() if not k.endswith("_classes")}
        name = NORMALIZERS[group]
        out["normalizer"] = float(np.float32(getattr(cfg, name))) if name else 1.0
        return out



def _term_rows(k: int) -> slice:
    return slice(k, k + 1) if k < 5 else slice(5, None)


def _outside_mask(cand: np.ndarray, model: np.ndarray, tol: Tolerance) -> np.ndarray:
    """Elements outside the rule: a zero/nonzero difference or a value beyond ``tol`` (the one rule).

    Only elements that differ are judged (NaN differs from itself; the rule
    lets NaN agree with NaN and an infinity with itself).
    """
    out = cand != model
    if out.any():
        c, m = cand[out], model[out]
        out[out] = ~tol.within(c, m) | ((c == 0) != (m == 0))
    return out


def _outside(cand: np.ndarray, model: np.ndarray, rule: ToleranceRule) -> tuple[np.ndarray, float]:
    """Elements outside the rule per term (x, y, w, h, obj, cls), and their summed distance."""
    counts = np.zeros(len(TERMS), dtype=np.int64)
    distance = 0.0
    for k, term in enumerate(TERMS):
        c, m = cand[:, :, _term_rows(k)], model[:, :, _term_rows(k)]
        bad = _outside_mask(c, m, rule.for_term(term))
        if not bad.any():
            continue
        cb, mb = c[bad].astype(np.float64), m[bad].astype(np.float64)
        counts[k] = cb.size
        with np.errstate(divide="ignore", invalid="ignore"):
            gap = np.abs(np.log(np.abs(cb)) - np.log(np.abs(mb)))
        gap = np.where(np.isfinite(gap) & (np.sign(cb) == np.sign(mb)), np.minimum(gap, DISTANCE_CAP), DISTANCE_CAP)
        distance += float(gap.sum())
    return counts, distance


def _apply(delta: np.ndarray, factors: dict[str, TermFactor], quantities: dict[str, dict[str, float]]) -> np.ndarray:
    out = delta
    for name, rows, _, _ in GROUPS:
        f = factors.get(name, DARKNET_FACTOR)
        if f.is_darknet:
            continue
        if out is delta:
            out = delta.copy()
        out[:, :, rows] = out[:, :, rows] * np.float32(f.multiplier(quantities[name]))
    return out


def _evaluate(suite: _Suite, variant: Variant, idx: Sequence[int], *, fixed: dict[str, TermFactor] | None = None,
              fit_on: Sequence[int] | None = None) -> _Score:
    """Elements outside the rule on ``idx`` under ``variant`` with per-term factors fitted (or ``fixed``)."""
    base = _without_factors(variant)
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
        per_case[i], distances[i] = _outside(suite.cand[i], _apply(chained[i], factors, quantities[i]),
                                             suite.cases[i].rule)
    heads = int(quantities[idx[0]]["box"].get("heads", 1)) if idx else 1
    return _Score(_with_factors(base, factors, heads), factors, per_case, distances)


def _with_factors(variant: Variant, factors: dict[str, TermFactor], heads: int = 1) -> Variant:
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


def _necessary_factors(suite: _Suite, variant: Variant, idx: Sequence[int], score: _Score) -> _Score:
    """Drop a fitted factor whose removal leaves the count no worse (a factor must be necessary too)."""
    for name, *_ in GROUPS:
        if score.factors.get(name, DARKNET_FACTOR).is_darknet:
            continue
        fixed = dict(score.factors)
        fixed[name] = DARKNET_FACTOR
        trial = _evaluate(suite, variant, idx, fixed=fixed)
        if trial.total <= score.total:
            score = trial
    return score


# ---------------------------------------------------------------------------------------------------------
# the trials: catalogue deviations with their parameters

@dataclass(frozen=True)
class _Item:
    """One chosen deviation: a catalogue id and the Variant fields it sets."""

    id: str
    switch: tuple[tuple[str, Any], ...]

    @property
    def fields(self) -> dict[str, Any]:
        return dict(self.switch)


def _item(deviation_id: str, switch: dict[str, Any]) -> _Item:
    return _Item(deviation_id, tuple(sorted(switch.items())))


def _compose(items: Iterable[_Item]) -> Variant:
    fields: dict[str, Any] = {}
    for it in items:
        fields.update(it.fields)
    return Variant(**fields)


Fitter = Callable[[_Suite, Variant, Sequence[int]], "float | None"]


def _joined(parts: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(parts) if parts else np.zeros(0)


def _fit_ignore_thresh(suite: _Suite, variant: Variant, idx: Sequence[int]) -> float | None:
    """The ignore threshold that reproduces which unassigned slots get a negative objectness."""
    kept, cut = [], []
    base = dataclasses.replace(variant, ignore_thresh=None)
    for i in idx:
        run = suite.run(i, base)
        d = run.decisions
        iou = d.best_match_iou          # what the variant's ignore threshold compares
        if iou is None:
            return None
        iou = iou.numpy()
        unassigned = (run.roles.numpy() & _POSITIVE) == 0
        obj = suite.cand[i][:, :, 4]
        finite = np.isfinite(obj)
        kept.append(iou[unassigned & finite & (obj != 0)])
        cut.append(iou[unassigned & finite & (obj == 0)])
    value = fit_threshold(_joined(kept), _joined(cut), lower=0.0, upper=1.0)
    cfg_thresh = suite.cases[idx[0]].case.config.ignore_thresh
    if value is None or np.float32(value) == np.float32(cfg_thresh):
        return None
    return value


def _fit_ratio_k(suite: _Suite, variant: Variant, idx: Sequence[int]) -> float | None:
    """The ratio limit K that reproduces which truth-anchor slots the candidate writes (centre cells)."""
    inside, outside = [], []
    base = dataclasses.replace(variant, assign="darknet")
    for i in idx:
        c = suite.cases[i].case
        cfg = c.config
        d = suite.run(i, base).decisions
        used = d.truth_used.numpy() if d.truth_used is not None else None
        if used is None:
            return None
        B, _, H, W = c.input.shape
        rows = c.truth[:, : used.shape[1]]             # [B, rows, 6]: x, y, w, h, class, track id
        anchors = np.asarray(cfg.anchors, dtype=np.float64).reshape(-1, 2)[list(cfg.mask)]
        written = (suite.cand[i][:, :, 0:4] != 0).any(axis=2)          # [B, n, H, W]
        for b in range(B):
            tr = rows[b][used[b][: rows.shape[1]].astype(bool)]
            if not len(tr):
                continue
            ci = np.clip((tr[:, 0] * W).astype(np.int64), 0, W - 1)
            cj = np.clip((tr[:, 1] * H).astype(np.int64), 0, H - 1)
            rw = tr[:, 2:3].astype(np.float64) * cfg.net_w / anchors[None, :, 0]
            rh = tr[:, 3:4].astype(np.float64) * cfg.net_h / anchors[None, :, 1]
            with np.errstate(divide="ignore"):
                worst = np.maximum(np.maximum(rw, 1 / rw), np.maximum(rh, 1 / rh))   # [T, n]
            cell = cj * W + ci
            shared = np.array([(cell == cell[t]).sum() > 1 for t in range(len(tr))])
            for a in range(cfg.n):
                w = written[b, a, cj, ci]
                inside.append(worst[w & ~shared, a])
                outside.append(worst[~w, a])
    return fit_ratio_limit(_joined(inside), _joined(outside))


def _fit_assign_cap(suite: _Suite, variant: Variant, idx: Sequence[int]) -> int | None:
    """The cap on truths per image that reproduces which truths the candidate writes at all."""
    kept_max, dropped_min = -1, None
    base = dataclasses.replace(variant, assign_cap=None)
    for i in idx:
        run = suite.run(i, base)
        asg, used = run.decisions.assignments, run.decisions.truth_used
        if asg is None or used is None or not len(asg):
            continue
        rank = np.cumsum(used.numpy().astype(np.int64), axis=1) - 1          # a truth's rank among used ones
        written = (suite.cand[i][:, :, 0:4] != 0).any(axis=2)
        b, t, a, j, ii = (v.numpy() for v in (asg.b, asg.t, asg.a, asg.j, asg.i))
        hit = written[b, a, j, ii]
        slot = ((b * suite.cases[i].case.config.n + a) * written.shape[2] + j) * written.shape[3] + ii
        alone = np.bincount(slot)[slot] == 1         # a slot no other truth writes tells this truth's fate
        for bb, tt in set(zip(b.tolist(), t.tolist())):
            mine = (b == bb) & (t == tt) & alone
            if not mine.any():
                continue
            r = int(rank[bb, tt])
            if hit[mine].all():
                kept_max = max(kept_max, r)
            elif not hit[mine].any():
                dropped_min = r if dropped_min is None else min(dropped_min, r)
    if dropped_min is None or kept_max >= dropped_min:
        return None
    return kept_max + 1


FITTERS: dict[str, Fitter] = {"ignore_thresh": _fit_ignore_thresh, "ratio_k": _fit_ratio_k,
                              "assign_cap": _fit_assign_cap}
# The values porters use, each tried: for parameters without a fitter, and where a fit fails.
GRIDS: dict[str, tuple[Any, ...]] = {"ratio_k": (4.0, 3.0), "assign_t": (0.2, 0.3, 0.5, 0.1),
                                     "focal_gamma": (2.0, 1.5, 1.0), "focal_alpha": (0.25, None, 0.5),
                                     "cls_smooth_eps": (0.1, 0.05, 0.01, None)}


# deviations about input only some cases hold -> the feature (``_Suite.features``)
NEEDS_FEATURE = {"truth_after_terminator": "terminator", "truth_past_max": "past_max",
                 "truth_class_out_of_range": "class_oob", "nonfinite_propagates": "nonfinite"}


def relevant(dev: Deviation, switch: dict[str, Any], configs: Sequence[Any],
              features: frozenset[str] | None = None) -> bool:
    """False where the switch cannot change anything for these configs (saves a trial's forward passes)."""
    def any_cfg(test: Callable[[Any], bool]) -> bool:
        return any(test(c) for c in configs)
    if features is not None and dev.id in NEEDS_FEATURE:
        return NEEDS_FEATURE[dev.id] in features
    kind = switch.get("box_kind")
    if dev.id == "box_kind_other":
        return any_cfg(lambda c: c.iou_loss != kind)
    if dev.id == "scale_2wh_missing":
        return any_cfg(lambda c: c.iou_loss == "mse")
    if dev.id in ("scale_2wh_on_iou", "max_delta_ignored"):
        return any_cfg(lambda c: c.iou_loss != "mse")
    if dev.id == "iou_normalizer_ignored":
        return any_cfg(lambda c: c.iou_normalizer != 1)
    if dev.id == "obj_normalizer_ignored":
        return any_cfg(lambda c: c.obj_normalizer != 1)
    if dev.id == "xy_scale_derivative":
        return any_cfg(lambda c: c.scale_x_y != 1)
    if dev.id in ("averaging_none", "assign_no_extras"):
        return any_cfg(lambda c: c.iou_thresh < 1)
    if dev.id == "averaging_classes":
        return any_cfg(lambda c: c.iou_thresh < 1)
    if dev.id == "averaging_always":
        return any_cfg(lambda c: c.iou_thresh >= 1)
    if dev.id == "objectness_smooth_ignored":
        return any_cfg(lambda c: bool(c.objectness_smooth))
    if dev.id == "cls_focal_ignored":
        return any_cfg(lambda c: bool(c.focal_loss))
    if dev.id == "cls_label_smoothing_ignored":
        return any_cfg(lambda c: bool(c.label_smooth_eps))
    if dev.id == "cls_multipliers":
        return any_cfg(lambda c: bool(getattr(c, "counters_per_class", None)))
    if switch.get("obj_target") == "iou_kind":
        return any_cfg(lambda c: c.iou_loss != "mse")
    if switch.get("ciou_alpha") == "detached":
        return any_cfg(lambda c: c.iou_loss == "ciou")
    return True


def options_of(dev: Deviation) -> list[dict[str, Any]]:
    """The switch settings a deviation can take: each decision value of its parameters, each grid value."""
    options = [dict(dev.switch or {})]
    for name in dev.params:
        allowed = CHOICES.get(name)
        if name in GRIDS:
            options = [{**o, name: v} for o in options for v in GRIDS[name]]
            continue
        if not (isinstance(allowed, tuple) and all(isinstance(a, str) for a in allowed)):
            continue
        default = getattr(DARKNET, name)
        values = [v for v in allowed if v != default or name not in (dev.switch or {})]
        values = [v for v in values if not (name == "box_kind" and v == "cfg")]
        options = [{**o, name: v} for o in options for v in values]
    return options


# Deviations tried together with another, because neither alone comes closer: a port that uses another
# box loss than the cfg's differentiates it its own way too.
COMPANIONS = {"box_kind_other": ("box_grad_exact", "box_grad_autograd")}


def _companions(dev: Deviation, option: dict[str, Any], taken: set[str]) -> list[_Item]:
    out = []
    for other_id in COMPANIONS.get(dev.id, ()):
        other = BY_ID[other_id]
        for other_option in options_of(other):
            if set(other_option) & (taken | set(option)):
                continue
            if other_option.get("ciou_alpha") == "detached" and option.get("box_kind") != "ciou":
                continue
            out.append(_item(other_id, other_option))
    return out


def _settings(suite: _Suite, dev: Deviation, current: Variant, taken: set[str],
              idx: Sequence[int]) -> list[dict[str, Any]]:
    """Every setting of ``dev`` that can be added to ``current``: decisions enumerated, parameters fitted."""
    configs = [suite.cases[i].case.config for i in idx]
    out: list[dict[str, Any]] = []
    for option in options_of(dev):
        if set(option) & taken or not relevant(dev, option, configs, suite.features):
            continue
        trial_variant = dataclasses.replace(current, **option)
        fitted: dict[str, Any] = {}
        for name in dev.params:
            if name in FITTERS:
                value = FITTERS[name](suite, trial_variant, idx)
                if value is None and name not in GRIDS:
                    break
                if value is not None:       # else the grid's value stays (a fit other writes obscure)
                    fitted[name] = value
        else:
            setting = {**option, **fitted}
            if setting not in out:
                out.append(setting)
    return out


def _trials(suite: _Suite, chosen: list[_Item], idx: Sequence[int], failing: set[str]) -> list[list[_Item]]:
    """Every way to add one deviation (with fitted parameters) to ``chosen``."""
    current = _compose(chosen)
    taken = set(current.changes())
    chosen_ids = {it.id for it in chosen}
    out: list[list[_Item]] = []
    for dev in executable():
        if (dev.family == "reduction" or dev.id in FACTOR_DEVIATIONS or dev.id in chosen_ids
                or not (set(dev.terms) & failing)):
            continue
        for option in _settings(suite, dev, current, taken, idx):
            out.append([_item(dev.id, option)])
            out += [[_item(dev.id, option), companion] for companion in _companions(dev, option, taken)]
            if option.get("ignore") not in (None, "none") and "ignore_thresh" not in taken:
                thresh = _fit_ignore_thresh(suite, dataclasses.replace(current, **option), idx)
                if thresh is not None:
                    out.append([_item(dev.id, option), _item("ignore_threshold", {"ignore_thresh": thresh})])
    return out


# ---------------------------------------------------------------------------------------------------------
# the search

def _screen(suite: _Suite, baseline: dict[int, np.ndarray], limit: int) -> list[int]:
    """A few small failing cases that together show every failing term (and, where possible, two shapes)."""
    failing = [i for i, c in baseline.items() if c.sum()]
    failing.sort(key=lambda i: (suite.cases[i].case.input.size, i))
    chosen: list[int] = []
    for term in range(len(TERMS)):
        have = sum(1 for i in chosen if baseline[i][term])
        for i in failing:
            if have >= 2 or len(chosen) >= limit:
                break
            if baseline[i][term] and i not in chosen:
                chosen.append(i)
                have += 1
    batches = {suite.cases[i].case.input.shape[0] for i in chosen}
    for i in failing:
        if len(chosen) >= limit:
            break
        if i not in chosen and (suite.cases[i].case.input.shape[0] not in batches or len(chosen) < 3):
            chosen.append(i)
            batches.add(suite.cases[i].case.input.shape[0])
    return sorted(chosen)


def _better(new: _Score, old: _Score) -> bool:
    """Fewer elements outside the rule, or as many and clearly closer (a factor that fixes nothing alone)."""
    if new.total != old.total:
        return new.total < old.total
    return new.distance < old.distance * (1 - 1e-3)


def _forward(suite: _Suite, chosen: list[_Item], idx: Sequence[int], score: _Score,
             budget: float) -> tuple[list[_Item], _Score]:
    """Greedy: add the deviation that brings the variant closest to the candidate, while one helps.

    Among the trials that help (fewer elements outside the rule, or as many
    and clearly closer), the one with the smallest summed distance wins, so
    each of several factors on the same elements counts on its own.
    """
    while score.total and time.perf_counter() < budget:
        best: tuple[tuple[float, int, int, int, int], list[_Item], _Score] | None = None
        trials = _shortlist(suite, chosen, _trials(suite, chosen, idx, score.terms()), score)
        for rank, trial in enumerate(trials):
            s = _evaluate(suite, _compose(chosen + trial), idx)
            key = (s.distance, s.total, len(trial), _fitted(trial), rank)
            if _better(s, score) and (best is None or key < best[0]):
                best = (key, trial, s)
        if best is None:
            break
        chosen = chosen + best[1]
        score = best[2]
    return chosen, score


def _fitted(trial: list[_Item]) -> int:
    """How many fitted parameters a trial holds (on a tie, the explanation with fewer wins)."""
    return sum(1 for it in trial for name in it.fields if name in FITTERS)


def _shortlist(suite: _Suite, chosen: list[_Item], trials: list[list[_Item]], score: _Score) -> list[list[_Item]]:
    """The trials worth a run on every screening case: the closest ones on the two cases that differ most."""
    if len(trials) <= SHORTLIST or len(score.per_case) <= PROXY_CASES:
        return trials
    proxy = sorted(score.per_case, key=lambda i: (-int(score.per_case[i].sum()), i))[:PROXY_CASES]
    keyed = []
    for rank, trial in enumerate(trials):
        s = _evaluate(suite, _compose(chosen + trial), proxy)
        keyed.append(((s.distance, s.total, rank), trial))
    keyed.sort(key=lambda kt: kt[0])
    return [t for _, t in keyed[:SHORTLIST]]


def _backward(suite: _Suite, chosen: list[_Item], idx: Sequence[int], score: _Score) -> tuple[list[_Item], _Score]:
    """Drop every deviation the others make unnecessary: without it the variant is no worse (the test
    ``_forward`` keeps a deviation by, so the two never undo each other's work)."""
    changed = True
    while changed and chosen:
        changed = False
        for it in reversed(chosen):
            rest = [c for c in chosen if c is not it]
            s = _evaluate(suite, _compose(rest), idx)
            if not _better(score, s):
                chosen, score, changed = rest, s, True
                break
    return chosen, score


# Deviations that may stand in for one another (a greedy step can take the wrong one of a pair).
SIBLINGS = ({"box_grad_exact", "box_grad_autograd"}, {"box_last_writer", "box_first_writer", "box_max_iou_writer"},
            {"averaging_none", "averaging_always"}, {"class_rewrite", "class_sum"},
            {"cls_label_smoothing", "cls_label_smoothing_ignored"},
            {"ignore_none", "ignore_no_class_match", "ignore_own_class", "ignore_assigned_only"},
            {"obj_mse", "obj_focal"},
            {"assign_best_in_mask", "assign_ratio", "assign_every_above"})


def _refine(suite: _Suite, chosen: list[_Item], idx: Sequence[int], score: _Score) -> tuple[list[_Item], _Score]:
    """Swap a chosen deviation for another setting of it (or a sibling) where that reproduces more."""
    improved = True
    while improved and score.total:
        improved = False
        for it in list(chosen):
            rest = [c for c in chosen if c is not it]
            current = _compose(rest)
            taken = set(current.changes())
            names = set().union(*(g for g in SIBLINGS if it.id in g)) | {it.id}
            for name in sorted(names):
                for option in _settings(suite, BY_ID[name], current, taken, idx):
                    swap = _item(name, option)
                    if swap == it:
                        continue
                    s = _evaluate(suite, _compose(rest + [swap]), idx)
                    if _better(s, score):
                        chosen, score, improved = rest + [swap], s, True
                        break
                if improved:
                    break
            if improved:
                break
    return chosen, score


def search(cases: Sequence[SearchCase], *, screen: int = SCREEN_CASES, rounds: int = ROUNDS,
           time_limit: float = 600.0) -> Explanation:
    """The smallest set of catalogue deviations (parameters fitted) that reproduces the candidate on ``cases``."""
    start = time.perf_counter()
    budget = start + time_limit
    suite = _Suite(cases)
    everything = list(range(len(cases)))
    with torch.no_grad():
        baseline = _evaluate(suite, DARKNET, everything, fixed={n: DARKNET_FACTOR for n, *_ in GROUPS})
        idx = _screen(suite, baseline.per_case, screen)
        chosen: list[_Item] = []
        final = baseline
        for _ in range(max(1, rounds)):
            if not idx:
                break
            score = _evaluate(suite, _compose(chosen), idx)
            for _ in range(PASSES):     # elimination and swaps may open a better path for the next step
                before = (list(chosen), score.total)
                chosen, score = _forward(suite, chosen, idx, score, budget)
                chosen, score = _backward(suite, chosen, idx, score)
                chosen, score = _refine(suite, chosen, idx, score)
                if not score.total or (chosen, score.total) == before or time.perf_counter() >= budget:
                    break
            structure = _compose(chosen)
            final = _necessary_factors(suite, structure, everything, _evaluate(suite, structure, everything))
            missed = [i for i in everything if final.per_case[i].sum() and i not in idx]
            if not missed or time.perf_counter() >= budget:
                break
            missed.sort(key=lambda i: (-int(final.per_case[i].sum()), i))
            idx = sorted(set(idx) | set(missed[:max(2, screen // 2)]))
        findings = _findings(suite, chosen, final, idx)
    return _explanation(suite, findings, final, baseline, idx, time.perf_counter() - start)


def _findings(suite: _Suite, chosen: list[_Item], final: _Score, idx: Sequence[int]) -> list[Finding]:
    """The chosen deviations and the fitted factors as findings, ranked by the elements each accounts for."""
    structure = _compose(chosen)
    found: list[Finding] = []
    base = _evaluate(suite, structure, idx, fixed=final.factors).total
    fitted = {name: f for name, f in final.factors.items() if not f.is_darknet}
    flipped = bool(fitted) and len(fitted) == len(GROUPS) and all(f.weight < 0 for f in fitted.values())
    if flipped:     # one sign convention, not three negative weights
        unsigned = {name: dataclasses.replace(f, weight=-f.weight) for name, f in final.factors.items()}
        accounts = max(0, _evaluate(suite, structure, idx, fixed=unsigned).total - base)
        found.append(Finding("sign_flipped", dict(BY_ID["sign_flipped"].switch or {}), accounts,
                             BY_ID["sign_flipped"].port_does))
    signed = final.factors
    neutral = TermFactor(weight=-1.0) if flipped else DARKNET_FACTOR
    for it in chosen:
        rest = _compose([c for c in chosen if c is not it])
        without = _evaluate(suite, rest, idx, fixed=final.factors).total
        found.append(Finding(it.id, it.fields, max(0, without - base), _describe(it.id, it.fields)))
    for name, rows, reduce_field, weight_field in GROUPS:
        f = signed.get(name, DARKNET_FACTOR)
        if flipped:
            f = dataclasses.replace(f, weight=-f.weight)
        if f.is_darknet:
            continue
        fixed = dict(signed)
        fixed[name] = neutral
        accounts = max(0, _evaluate(suite, structure, idx, fixed=fixed).total - base)
        parts = []
        if f.normalizer_ignored and NORMALIZERS[name]:
            field_ = NORMALIZERS[name]
            parts.append(Finding(f"{name if name == 'obj' else 'iou'}_normalizer_ignored", {field_: "ignored"}, 0,
                                 BY_ID[f"{name if name == 'obj' else 'iou'}_normalizer_ignored"].port_does))
        if f.reduction != "sum":
            parts.append(Finding(f"{name}_mean_over_{f.reduction}", {reduce_field: f.reduction}, 0,
                                 _describe_factor(name, dataclasses.replace(f, weight=1.0),
                                                  _example(suite, structure, idx, name, f.reduction))))
        if f.weight != 1.0 or not f.factored:
            parts.append(Finding("term_weight", {weight_field: f.weight}, 0,
                                 _describe_factor(name, dataclasses.replace(f, reduction="sum"))
                                 if f.factored else _describe_factor(name, f)))
        # the elements the whole factor accounts for, shared out among its parts
        for k, part in enumerate(parts):
            share = accounts // len(parts) + (1 if k < accounts % len(parts) else 0)
            found.append(dataclasses.replace(part, accounts_for=share))
    _merge_weights(found)
    found.sort(key=lambda f: -f.accounts_for)
    return found


def _merge_weights(found: list[Finding]) -> None:
    """One ``term_weight`` finding holding every term's weight (the catalogue has one entry for it)."""
    weights = [f for f in found if f.id == "term_weight"]
    if len(weights) < 2:
        return
    params: dict[str, Any] = {}
    for f in weights:
        params.update(f.params)
        found.remove(f)
    found.append(Finding("term_weight", params, sum(f.accounts_for for f in weights),
                         "; ".join(f.text for f in weights)))


QUANTITY_WORDS = {"batch": "the batch size", "slots": "b*n*h*w (every slot)",
                  "positives": "the number of truth-anchor pairs", "positives_classes": "truth-anchor pairs x classes",
                  "positive_slots": "the number of slots a truth writes (a mean over a masked target tensor)",
                  "positive_slots_classes": "written slots x classes",
                  "heads": "the number of heads"}


def _describe_factor(term: str, f: TermFactor, example: str = "") -> str:
    """A fitted factor in words: the quantity it divides by (with an example count), the plain weight."""
    if not f.factored:
        return (f"scales the {term} term by a factor near {f.weight:.6g}/{f.reduction} that no known count "
                f"(batch, slots, truth-anchor pairs, classes, heads) and plain constant explains in every case")
    parts = []
    if f.reduction != "sum":
        parts.append(f"divides the {term} term by {QUANTITY_WORDS[f.reduction]} (a mean{example})")
    if f.weight != 1.0:
        parts.append(f"multiplies the {term} term by {f.weight:g}")
    return " and ".join(parts)


def _example(suite: _Suite, structure: Variant, idx: Sequence[int], group: str, reduction: str) -> str:
    """", 6144 in yolov4#3": the quantity's value in the first searched case."""
    if not idx:
        return ""
    value = suite.quantities(idx[0], structure, group).get(reduction)
    return f", {value:g} in {suite.cases[idx[0]].name}" if value is not None else ""


def _describe(deviation_id: str, params: dict[str, Any]) -> str:
    dev = BY_ID[deviation_id]
    extra = [f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items()
             if (k not in (dev.switch or {}) or k in dev.params) and v != getattr(DARKNET, k)]
    return dev.port_does + (f" ({', '.join(extra)})" if extra else "")


def _explanation(suite: _Suite, findings: list[Finding], final: _Score, baseline: _Score, idx: Sequence[int],
                 seconds: float) -> Explanation:
    remains = {t: int(sum(int(c[k]) for c in final.per_case.values())) for k, t in enumerate(TERMS)}
    reproduced = sum(1 for c in final.per_case.values() if not c.sum())
    elements = sum(int(c.case.input.size) for c in suite.cases)
    first = _first_difference(suite, final) if final.total else None
    return Explanation(findings, final.variant, len(suite.cases), reproduced, elements, final.total, baseline.total,
                       {t: n for t, n in remains.items() if n}, first, seconds,
                       tuple(suite.cases[i].name for i in idx))


def _first_difference(suite: _Suite, score: _Score) -> str | None:
    """Where the first element still outside the rule is, with both values."""
    for i, counts in score.per_case.items():
        if not counts.sum():
            continue
        base = _without_factors(score.variant)
        model = _apply(suite.chained(i, base), score.factors,
                       {name: suite.quantities(i, base, name) for name, *_ in GROUPS})
        cand = suite.cand[i]
        rule = suite.cases[i].rule
        for k, term in enumerate(TERMS):
            if not counts[k]:
                continue
            c, m = cand[:, :, _term_rows(k)], model[:, :, _term_rows(k)]
            b, a, e, j, ii = (int(v[0]) for v in np.nonzero(_outside_mask(c, m, rule.for_term(term))))
            entry = k if k < 5 else 5 + e
            return (f"{suite.cases[i].name}: {term} at image {b}, anchor {a}, cell (j={j}, i={ii}): yours "
                    f"{c[b, a, e, j, ii]:.6g}, the variant's {m[b, a, e, j, ii]:.6g}"
                    + (f" (class {entry - 5})" if k == 5 else ""))
    return None
