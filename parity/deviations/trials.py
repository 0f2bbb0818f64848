"""What the explanation search may add to a variant: catalogue deviations, their settings, fitted parameters.

Each executable deviation is tried in every decision value of its
parameters; thresholds, ratio limits and truth caps are fitted from the
candidate's own decisions (intervals, ``parity.deviations.fit``), other
numbers come from the short lists of values porters use. ``relevant``
leaves out switches a run's configs or inputs cannot reach.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from .catalogue import BY_ID, Deviation, executable
from .fit import fit_ratio_limit, fit_threshold
from .runs import POSITIVE, Suite
from .variant import CHOICES, DARKNET, Variant

# deviations that are fitted as a term's factor, never tried one by one
FACTOR_DEVIATIONS = frozenset({"term_weight", "iou_normalizer_ignored", "obj_normalizer_ignored", "sign_flipped"})


@dataclass(frozen=True)
class Item:
    """One chosen deviation: a catalogue id and the Variant fields it sets."""

    id: str
    switch: tuple[tuple[str, Any], ...]

    @property
    def fields(self) -> dict[str, Any]:
        return dict(self.switch)


def item(deviation_id: str, switch: dict[str, Any]) -> Item:
    """An ``Item`` (hashable: its switch as sorted pairs)."""
    return Item(deviation_id, tuple(sorted(switch.items())))


def compose(items: Iterable[Item]) -> Variant:
    """darknet's semantics with every item's switches set."""
    fields: dict[str, Any] = {}
    for it in items:
        fields.update(it.fields)
    return Variant(**fields)


Fitter = Callable[[Suite, Variant, Sequence[int]], "float | None"]


def _joined(parts: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(parts) if parts else np.zeros(0)


def fit_ignore_thresh(suite: Suite, variant: Variant, idx: Sequence[int]) -> float | None:
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
        unassigned = (run.roles.numpy() & POSITIVE) == 0
        obj = suite.cand[i][:, :, 4]
        finite = np.isfinite(obj)
        kept.append(iou[unassigned & finite & (obj != 0)])
        cut.append(iou[unassigned & finite & (obj == 0)])
    value = fit_threshold(_joined(kept), _joined(cut), lower=0.0, upper=1.0)
    cfg_thresh = suite.cases[idx[0]].case.config.ignore_thresh
    if value is None or np.float32(value) == np.float32(cfg_thresh):
        return None
    return value


def _fit_ratio_k(suite: Suite, variant: Variant, idx: Sequence[int]) -> float | None:
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


def _fit_assign_cap(suite: Suite, variant: Variant, idx: Sequence[int]) -> int | None:
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


FITTERS: dict[str, Fitter] = {"ignore_thresh": fit_ignore_thresh, "ratio_k": _fit_ratio_k,
                              "assign_cap": _fit_assign_cap}
# The values porters use, each tried: for parameters without a fitter, and where a fit fails.
GRIDS: dict[str, tuple[Any, ...]] = {"ratio_k": (4.0, 3.0), "assign_t": (0.2, 0.3, 0.5, 0.1),
                                     "focal_gamma": (2.0, 1.5, 1.0), "focal_alpha": (0.25, None, 0.5),
                                     "cls_smooth_eps": (0.1, 0.05, 0.01, None)}


# deviations about input only some cases hold -> the feature (``Suite.features``)
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


def _companions(dev: Deviation, option: dict[str, Any], taken: set[str]) -> list[Item]:
    out = []
    for other_id in COMPANIONS.get(dev.id, ()):
        other = BY_ID[other_id]
        for other_option in options_of(other):
            if set(other_option) & (taken | set(option)):
                continue
            if other_option.get("ciou_alpha") == "detached" and option.get("box_kind") != "ciou":
                continue
            out.append(item(other_id, other_option))
    return out


def settings(suite: Suite, dev: Deviation, current: Variant, taken: set[str],
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


def trials_for(suite: Suite, chosen: list[Item], idx: Sequence[int], failing: set[str]) -> list[list[Item]]:
    """Every way to add one deviation (with fitted parameters) to ``chosen``."""
    current = compose(chosen)
    taken = set(current.changes())
    chosen_ids = {it.id for it in chosen}
    out: list[list[Item]] = []
    for dev in executable():
        if (dev.family == "reduction" or dev.id in FACTOR_DEVIATIONS or dev.id in chosen_ids
                or not (set(dev.terms) & failing)):
            continue
        for option in settings(suite, dev, current, taken, idx):
            out.append([item(dev.id, option)])
            out += [[item(dev.id, option), companion] for companion in _companions(dev, option, taken)]
            if option.get("ignore") not in (None, "none") and "ignore_thresh" not in taken:
                thresh = fit_ignore_thresh(suite, dataclasses.replace(current, **option), idx)
                if thresh is not None:
                    out.append([item(dev.id, option), item("ignore_threshold", {"ignore_thresh": thresh})])
    return out


def fitted_count(trial: list[Item]) -> int:
    """How many fitted parameters a trial holds (on a tie, the explanation with fewer wins)."""
    return sum(1 for it in trial for name in it.fields if name in FITTERS)


# Deviations that may stand in for one another (a greedy step can take the wrong one of a pair).
SIBLINGS = ({"box_grad_exact", "box_grad_autograd"}, {"box_last_writer", "box_first_writer", "box_max_iou_writer"},
            {"averaging_none", "averaging_always"}, {"class_rewrite", "class_sum"},
            {"cls_label_smoothing", "cls_label_smoothing_ignored"},
            {"ignore_none", "ignore_no_class_match", "ignore_own_class", "ignore_assigned_only"},
            {"obj_mse", "obj_focal"},
            {"assign_best_in_mask", "assign_ratio", "assign_every_above"})
