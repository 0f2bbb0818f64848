"""From the pattern of a candidate's differences to known causes, in plain words.

Two kinds of evidence:

* decisions (where a delta is written at all), read against the reference's
  per-slot roles: objectness written on cells darknet ignores, cells left
  out that only the class-match test kept, extra anchors missing, an anchor
  chosen within the mask, truth_thresh positives missing;
* values, per term, where both write: the ratio (or difference) candidate /
  reference is fitted against the factors ports get wrong: the sign, a
  normalizer, the ``2 - w*h`` box scale, the logistic derivative, ``scale_x_y``
  and the decoding's ``1/grid``, ``exp(t)``, autograd IoU through the decoded
  box (w, h: darknet doubles the exact derivative), label smoothing, and
  where the differences sit (boxes written twice: last writer vs accumulate;
  averaged cells; the IoU losses' no-overlap branch).

Every cause carries the fraction of that term's differing elements it
explains; a cause is reported only when it explains most of them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np

from .case import Case
from .diff import CaseDiff
from .facts import SlotFacts
from .result import LayerRun as ReferenceResult
from .roles import (ROLE_BEST_ANCHOR, ROLE_CLASS_SHORTCUT, ROLE_CLASSMATCH_BLOCKED, ROLE_EXTRA_ANCHOR, ROLE_IGNORED,
                    ROLE_REWRITTEN, ROLE_TRUTH_THRESH)

BOX_TERMS = ("x", "y", "w", "h")
# A fitted factor "holds" where it is within this relative distance ...
FIT_RTOL = 2e-3
# ... for at least this share of the differing elements.
EXPLAINS = 0.9


@dataclass
class Cause:
    """One named reason a term differs, with the evidence for it."""

    term: str            # x, y, w, h, obj, cls, or "box" for all four box terms
    cause: str           # a stable id, e.g. "logistic_derivative"
    message: str         # the explanation in plain words
    evidence: str        # the numbers behind it
    confidence: float    # share of the term's differing elements it explains


@dataclass
class _Term:
    """The differing elements of one term: values, raw inputs, slot indices."""

    name: str
    ref: np.ndarray
    cand: np.ndarray
    raw: np.ndarray      # the head's raw input at those elements
    out: np.ndarray      # the activated output at those elements
    slot: tuple[np.ndarray, ...]   # (b, a, j, i) per element
    entry: np.ndarray


def _sigmoid(v: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-v.astype(np.float64)))


def _share(mask: np.ndarray) -> float:
    return float(mask.mean()) if mask.size else 0.0


def _holds(ratio: np.ndarray, factor: np.ndarray | float) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.abs(ratio / factor - 1.0) <= FIT_RTOL


def _fmt(v: float) -> str:
    return f"{v:.6g}"


def diagnose(case: Case, ref: ReferenceResult, cand_delta: np.ndarray, facts: SlotFacts,
             diff: CaseDiff) -> list[Cause]:
    """Known causes explaining the candidate's differences, most explanatory first."""
    config = case.config
    B, _, H, W = ref.delta.shape
    E = 5 + config.classes
    shape = (B, config.n, E, H, W)
    views = (ref.delta.reshape(shape), cand_delta.reshape(shape), case.input.reshape(shape),
             ref.output.reshape(shape))
    causes = list(_decision_causes(views, facts))
    positives = (views[0][:, :, 5:] > 0).sum(axis=2)   # classes_in_one_box per slot (darknet's averaging)
    causes += _value_causes(views, facts, positives)
    causes.sort(key=lambda c: -c.confidence)
    return _dedupe(causes)


def _dedupe(causes: list[Cause]) -> list[Cause]:
    seen: set[tuple[str, str]] = set()
    out = []
    for c in causes:
        if (c.term, c.cause) not in seen:
            seen.add((c.term, c.cause))
            out.append(c)
    return out


# ---------------------------------------------------------------- decisions


def _decision_causes(views: tuple[np.ndarray, ...], facts: SlotFacts) -> Iterator[Cause]:
    ref, cand, _, out = views
    bits = facts.roles
    border = facts.borderline | (facts.borderline_obj if facts.borderline_obj is not None else False)
    cfg = facts.config
    obj_ref, obj_cand = ref[:, :, 4], cand[:, :, 4]
    obj_diff = ((obj_ref != 0) != (obj_cand != 0)) & ~border
    if obj_diff.any():
        total = int(obj_diff.sum())
        ignored_written = obj_diff & ((bits & ROLE_IGNORED) != 0) & (obj_ref == 0) & ~_positive(bits)
        if ignored_written.sum() >= EXPLAINS * total:
            yield Cause("obj", "no_ignore",
                        "objectness is trained toward 0 on cells darknet ignores: the ignore threshold is missing "
                        f"(darknet writes no objectness delta where the best IoU with a truth exceeds "
                        f"ignore_thresh={cfg.ignore_thresh:g})",
                        f"{int(ignored_written.sum())} ignored cells written", _share_of(ignored_written, total))
        blocked_skipped = obj_diff & ((bits & ROLE_CLASSMATCH_BLOCKED) != 0) & (obj_cand == 0)
        if blocked_skipped.sum() >= EXPLAINS * total:
            yield Cause("obj", "no_class_match",
                        "cells are ignored that darknet trains as negatives because no class probability exceeds "
                        "0.25: the ignore test lacks darknet's class-match condition (darknet ignores a cell only "
                        "if its best IoU > ignore_thresh AND some class probability > 0.25)",
                        f"{int(blocked_skipped.sum())} class-match-blocked cells left at 0",
                        _share_of(blocked_skipped, total))
        negative_skipped = obj_diff & (bits == 0) & (obj_cand == 0)
        if negative_skipped.sum() >= EXPLAINS * total:
            yield Cause("obj", "ignore_too_wide",
                        "cells darknet trains as negatives are left out: the candidate ignores more cells than "
                        f"darknet (a lower ignore threshold than {cfg.ignore_thresh:g}, or IoUs computed "
                        "differently)", f"{int(negative_skipped.sum())} negative cells left at 0",
                        _share_of(negative_skipped, total))
    box_ref = (ref[:, :, :4] != 0).any(axis=2)
    box_cand = (cand[:, :, :4] != 0).any(axis=2)
    box_diff = (box_ref != box_cand) & ~border
    if not box_diff.any():
        return
    total = int(box_diff.sum())
    extra_missing = box_diff & box_ref & ((bits & ROLE_EXTRA_ANCHOR) != 0) & ((bits & ROLE_BEST_ANCHOR) == 0)
    if extra_missing.sum() >= EXPLAINS * total:
        yield Cause("box", "no_iou_thresh",
                    "anchors darknet also assigns through iou_thresh get no deltas: the iou_thresh assignment is "
                    f"missing (darknet assigns every mask anchor whose {cfg.iou_thresh_kind} with the truth's "
                    f"shape exceeds iou_thresh={cfg.iou_thresh:g})",
                    f"{int(extra_missing.sum())} extra-anchor slots left at 0", _share_of(extra_missing, total))
    thresh_missing = box_diff & box_ref & ((bits & ROLE_TRUTH_THRESH) != 0) & ~_assigned(bits)
    if thresh_missing.sum() >= EXPLAINS * total:
        yield Cause("box", "no_truth_thresh",
                    f"cells whose best IoU exceeds truth_thresh={cfg.truth_thresh:g} get no box/class deltas: the "
                    "truth_thresh positives of darknet's per-cell pass are missing",
                    f"{int(thresh_missing.sum())} truth_thresh slots left at 0", _share_of(thresh_missing, total))
    wrong_anchor = box_diff & box_cand & ~box_ref
    if wrong_anchor.sum() >= EXPLAINS * total and _best_anchor_outside_mask_at(facts, wrong_anchor):
        yield Cause("box", "anchor_within_mask",
                    "boxes are assigned in cells where darknet assigns nothing in this layer: the best anchor is "
                    "chosen among this layer's mask, but darknet picks it over ALL anchors and skips the truth "
                    "when that anchor belongs to another layer",
                    f"{int(wrong_anchor.sum())} slots written that darknet leaves at 0",
                    _share_of(wrong_anchor, total))


def _positive(bits: np.ndarray) -> np.ndarray:
    return (bits & (ROLE_BEST_ANCHOR | ROLE_EXTRA_ANCHOR | ROLE_TRUTH_THRESH)) != 0


def _assigned(bits: np.ndarray) -> np.ndarray:
    return (bits & (ROLE_BEST_ANCHOR | ROLE_EXTRA_ANCHOR)) != 0


def _share_of(mask: np.ndarray, total: int) -> float:
    return float(mask.sum()) / total if total else 0.0


def _best_anchor_outside_mask_at(facts: SlotFacts, slots: np.ndarray) -> bool:
    """Do the written cells hold truths whose best anchor (over all) is outside the mask?"""
    from .torch_box import Boxes, box_iou
    import torch

    cfg = facts.config
    B, n, H, W = slots.shape
    cells = {(int(b), int(j), int(i)) for b, _, j, i in np.argwhere(slots)}
    anchors = np.asarray(cfg.anchors, np.float32).reshape(-1, 2)
    zero = torch.zeros(len(anchors))
    anchor_boxes = Boxes(zero, zero, torch.from_numpy(anchors[:, 0]) / cfg.net_w,
                         torch.from_numpy(anchors[:, 1]) / cfg.net_h)
    hits = 0
    for b, t in zip(*np.nonzero(facts.truth_valid)):
        x, y, w, h = (float(v) for v in facts.truth[b, t, :4])
        cell = (int(b), int(np.float32(y) * np.float32(H)), int(np.float32(x) * np.float32(W)))
        if cell not in cells:
            continue
        one = torch.tensor([0.0])
        iou = box_iou(anchor_boxes, Boxes(one, one, torch.tensor([w]), torch.tensor([h])))
        if int(torch.argmax(torch.where(iou > 0, iou, torch.zeros_like(iou)))) not in cfg.mask:
            hits += 1
    return hits > 0


# ------------------------------------------------------------------- values


def _differing(views: tuple[np.ndarray, ...], facts: SlotFacts, entries: np.ndarray, name: str,
               tol: tuple[float, float]) -> _Term | None:
    ref, cand, raw, out = views
    sel = np.zeros(ref.shape, bool)
    sel[:, :, entries] = True
    both = sel & (ref != 0) & (cand != 0) & np.isfinite(ref) & np.isfinite(cand)
    with np.errstate(invalid="ignore"):
        close = np.abs(cand.astype(np.float64) - ref) <= tol[0] + tol[1] * np.abs(ref.astype(np.float64))
    border = np.repeat(facts.borderline[:, :, None], ref.shape[2], axis=2)
    if facts.borderline_obj is not None:
        border[:, :, 4] |= facts.borderline_obj
    differing = both & ~close & ~border
    if not differing.any():
        return None
    idx = np.nonzero(differing)
    b, a, e, j, i = idx
    return _Term(name, ref[idx].astype(np.float64), cand[idx].astype(np.float64), raw[idx].astype(np.float64),
                 out[idx].astype(np.float64), (b, a, j, i), e)


def _value_causes(views: tuple[np.ndarray, ...], facts: SlotFacts, positives: np.ndarray) -> list[Cause]:
    cfg = facts.config
    tol = (1e-5, 1e-4)
    causes: list[Cause] = []
    groups = [("x", [0]), ("y", [1]), ("w", [2]), ("h", [3]), ("obj", [4]), ("cls", list(range(5, 5 + cfg.classes)))]
    for name, entries in groups:
        term = _differing(views, facts, np.asarray(entries), name, tol)
        if term is None:
            continue
        found = _where_causes(term, facts, positives) or _factor_causes(term, facts)
        if not found:
            ratio = term.cand / term.ref
            found = [Cause(name, "unexplained",
                           "the differences fit none of the known causes",
                           f"{term.ref.size} elements differ; candidate/reference ratio from "
                           f"{_fmt(np.min(ratio))} to {_fmt(np.max(ratio))}", 0.0)]
        causes += found
    return causes


def _where_causes(term: _Term, facts: SlotFacts, positives: np.ndarray) -> list[Cause]:
    """Causes read off where the differences sit (slot roles), not off the values."""
    bits = facts.roles[term.slot]
    cfg = facts.config
    out = []
    if term.name == "cls":
        shortcut = (bits & ROLE_CLASS_SHORTCUT) != 0
        if _share(shortcut) >= EXPLAINS:
            out.append(Cause("cls", "class_shortcut",
                             "class deltas differ only where darknet's 'already set' shortcut applies (a second "
                             "truth in the same slot): darknet then rewrites only that truth's class entry, "
                             "without the focal or smoothing formula for the others",
                             f"{int(shortcut.sum())} of {bits.size} differing class elements are on such slots",
                             _share(shortcut)))
    if term.name in BOX_TERMS:
        rewritten = (bits & ROLE_REWRITTEN) != 0
        if _share(rewritten) >= EXPLAINS:
            out.append(Cause(term.name, "last_writer",
                             "box deltas differ only where darknet writes the same slot more than once: the "
                             "candidate keeps the last writer, darknet accumulates (+=) every truth's delta",
                             f"{int(rewritten.sum())} of {bits.size} differing {term.name} elements are on "
                             "slots written twice", _share(rewritten)))
        averaged = _averaging_cause(term, facts, positives)
        if averaged is not None:
            out.append(averaged)
        if cfg.iou_loss in ("giou", "diou", "ciou") and facts.flavor == "alexeyab":
            apart = _no_overlap(term, facts)
            if _share(apart) >= EXPLAINS:
                out.append(Cause(term.name, "no_overlap_branch",
                                 "differs only where the prediction does not overlap its truth: "
                                 f"darknet's {cfg.iou_loss.upper()} derivative there keeps only its extra term "
                                 "(the Iw<=0 || Ih<=0 branch), unlike autograd",
                                 f"{int(apart.sum())} of {apart.size} differing elements have IoU 0",
                                 _share(apart)))
    return out


def _averaging_cause(term: _Term, facts: SlotFacts, positives: np.ndarray) -> Cause | None:
    """Box deltas times the number of positive class deltas: darknet's averaging is missing."""
    if facts.flavor != "alexeyab" or not facts.config.iou_thresh < 1:
        return None
    count = positives[term.slot]
    ratio = term.cand / term.ref
    fits = (count > 1) & _holds(ratio, count)
    if _share(fits) < EXPLAINS:
        return None
    return Cause(term.name, "no_averaging",
                 "box deltas are not divided by the number of classes with a positive delta: darknet's "
                 "averaging pass (iou_thresh < 1) is missing",
                 f"candidate/reference = classes_in_one_box on {int(fits.sum())} of {fits.size} elements",
                 _share(fits))


def _no_overlap(term: _Term, facts: SlotFacts) -> np.ndarray:
    """Per differing element: does the slot's prediction miss every truth assigned to it?"""
    asg = facts.assignments
    pred = facts.pred[term.slot]                      # [N, 4]
    apart = np.zeros(term.ref.size, bool)
    for k, (b, a, j, i) in enumerate(zip(*term.slot)):
        hit = np.nonzero((asg["b"] == b) & (asg["a"] == a) & (asg["j"] == j) & (asg["i"] == i))[0]
        if hit.size == 0:
            continue
        tr = facts.truth[b, asg["t"][hit[-1]], :4]
        px, py, pw, ph = pred[k]
        iw = min(px + pw / 2, tr[0] + tr[2] / 2) - max(px - pw / 2, tr[0] - tr[2] / 2)
        ih = min(py + ph / 2, tr[1] + tr[3] / 2) - max(py - ph / 2, tr[1] - tr[3] / 2)
        apart[k] = iw <= 0 or ih <= 0
    return apart


# Per-element factors a port may add (candidate = factor * darknet) or drop (candidate = darknet / factor).
FactorFn = Callable[[_Term, SlotFacts], np.ndarray]


def _logistic_derivative(term: _Term, facts: SlotFacts) -> np.ndarray:
    p = _sigmoid(term.raw)
    return p * (1 - p)


def _exp_t(term: _Term, facts: SlotFacts) -> np.ndarray:
    return np.exp(term.raw)


def _box_scale(term: _Term, facts: SlotFacts) -> np.ndarray:
    """2 - w*h of the last truth assigned to each slot (NaN where none)."""
    asg = facts.assignments
    out = np.full(term.ref.size, np.nan)
    for k, (b, a, j, i) in enumerate(zip(*term.slot)):
        hit = np.nonzero((asg["b"] == b) & (asg["a"] == a) & (asg["j"] == j) & (asg["i"] == i))[0]
        if hit.size:
            tr = facts.truth[b, asg["t"][hit[-1]]]
            out[k] = 2.0 - float(np.float32(tr[2]) * np.float32(tr[3]))
    return out


def _anchor_over_net(term: _Term, facts: SlotFacts) -> np.ndarray:
    cfg = facts.config
    anchors = np.asarray(cfg.anchors, np.float64).reshape(-1, 2)
    a = np.asarray(cfg.mask)[term.slot[1]]
    dim = np.where(np.isin(term.entry, [2]), 0, 1)
    net = np.where(dim == 0, cfg.net_w, cfg.net_h)
    return anchors[a, dim] / net


def _constant(ratio: np.ndarray) -> tuple[float, float]:
    k = float(np.median(ratio))
    return k, _share(_holds(ratio, k)) if k != 0 else 0.0


def _name_constant(k: float, term: str, facts: SlotFacts) -> tuple[str, str] | None:
    """A known constant ``k`` (candidate/reference) means ... (cause id, words)."""
    cfg = facts.config
    grid = facts.pred.shape[3] if term == "x" else facts.pred.shape[2]
    s = cfg.scale_x_y if facts.flavor == "alexeyab" else 1.0
    known: list[tuple[float, str, str]] = [
        (-1.0, "sign", "the sign is flipped: the candidate returns a gradient (prediction minus target), darknet's "
                       "delta is target minus prediction"),
        (2.0, "iou_wh_factor", "twice darknet's value"),
        (0.5, "iou_wh_factor", "half darknet's value: the exact IoU derivative; darknet's hand-written derivative "
                               "does not halve p_dr - p_dl (w, h are twice the exact derivative)"),
    ]
    for name, value in (("iou_normalizer", cfg.iou_normalizer), ("obj_normalizer", cfg.obj_normalizer),
                        ("cls_normalizer", cfg.cls_normalizer)):
        if value not in (0.0, 1.0):
            known.append((1.0 / value, "normalizer", f"{name}={value:g} is not applied (darknet multiplies by it)"))
            known.append((value, "normalizer", f"{name}={value:g} is applied once more than darknet does"))
    if s != 1.0:
        known.append((s, "scale_x_y", f"scale_x_y={s:g} is back-propagated; darknet does not chain through it"))
    known.append((1.0 / grid, "decoding", f"the box decoding's 1/grid (1/{grid}) is back-propagated"))
    known.append((s / grid, "decoding", f"scale_x_y={s:g} and the decoding's 1/{grid} are back-propagated"))
    for value, cause, words in known:
        if abs(k / value - 1.0) <= FIT_RTOL:
            if cause == "iou_wh_factor" and term not in ("w", "h"):
                continue
            return cause, words
    return None


def _factor_causes(term: _Term, facts: SlotFacts) -> list[Cause]:
    """Fit candidate/reference to known constant and per-element factors."""
    ratio = term.cand / term.ref
    cfg = facts.config
    out: list[Cause] = []
    k, share = _constant(ratio)
    named = _name_constant(k, term.name, facts) if share >= EXPLAINS else None
    if named:   # a known constant is evidence even on a single element
        return [Cause(term.name, named[0], named[1],
                      f"candidate/reference = {_fmt(k)} on {share:.0%} of {ratio.size} elements", share)]
    per_element = _per_element_causes(term, facts, ratio)
    if per_element:
        return per_element
    if share >= EXPLAINS and ratio.size >= 3:
        return [Cause(term.name, "constant_factor", f"off by a constant factor {_fmt(k)}",
                      f"candidate/reference = {_fmt(k)} on {share:.0%} of {ratio.size} elements", share)]
    if term.name == "cls" and cfg.label_smooth_eps:
        # Smoothed targets are 1 - 0.5*eps (the class) and 0.5*eps (the others): a port that
        # drops or doubles the smoothing is off by +-0.5*eps, a constant magnitude.
        half = 0.5 * cfg.label_smooth_eps
        off = np.abs(np.abs(term.cand - term.ref) - half) <= 1e-5 + 1e-3 * half
        if _share(off) >= EXPLAINS:
            return [Cause("cls", "label_smoothing",
                          f"class deltas are off by +-{_fmt(half)} = 0.5*label_smooth_eps: label smoothing is "
                          "handled differently (darknet's targets are 1 - 0.5*eps for the class, 0.5*eps for "
                          "the others)", f"|candidate - reference| = {_fmt(half)} on {_share(off):.0%} of "
                          f"{off.size} elements", _share(off))]
    if term.name in ("x", "y") and cfg.iou_loss in ("giou", "diou", "ciou"):
        out.append(Cause(term.name, "autograd_iou",
                         f"autograd of {cfg.iou_loss.upper()} instead of darknet's hand-written "
                         "derivative (dx_box_iou): its centre-distance/enclosing terms differ",
                         f"candidate/reference spans {_fmt(np.min(ratio))}..{_fmt(np.max(ratio))}", 0.5))
    return out


_FACTORS: tuple[tuple[str, FactorFn, str], ...] = (
    ("logistic_derivative", _logistic_derivative,
     "the gradient is propagated through the logistic (sigmoid'): darknet's delta skips the logistic derivative"),
    ("exp_t", _exp_t, "an exp(t) factor on w/h differs from darknet's (darknet multiplies the IoU derivative by "
                      "exp(tw), exp(th))"),
    ("box_scale", _box_scale, "the box scale 2 - w*h (of the truth) is applied differently: darknet multiplies "
                              "box deltas by it"),
    ("anchor_over_net", _anchor_over_net,
     "autograd through the decoded box w = exp(t)*anchor/net: darknet uses its own derivative, twice the exact "
     "one, times exp(t) (not exp(t)*anchor/net)"),
)


def _per_element_causes(term: _Term, facts: SlotFacts, ratio: np.ndarray) -> list[Cause]:
    """A known per-element factor, added or dropped, times 1 or a known constant."""
    for cause, fn, words in _FACTORS:
        if term.name not in _FACTOR_TERMS[cause]:
            continue
        f = fn(term, facts)
        for direction, scaled in (("adds", ratio / f), ("drops", ratio * f)):
            with np.errstate(invalid="ignore", divide="ignore"):
                ok = np.isfinite(scaled)
            if not ok.any():
                continue
            rest, rshare = _constant(scaled[ok])
            rshare *= _share(ok)
            if rshare < EXPLAINS:
                continue
            unit = abs(rest - 1) <= FIT_RTOL
            named = None if unit else _name_constant(rest, term.name, facts)
            if not (unit or named):
                continue
            found = [Cause(term.name, cause, f"{words} (the candidate {direction} it)",
                           f"candidate/reference = {'' if direction == 'adds' else '1/'}{cause}"
                           f" x {_fmt(rest)} on {rshare:.0%} of {ratio.size} elements", rshare)]
            if named:
                found.append(Cause(term.name, named[0], named[1],
                                   f"remaining factor {_fmt(rest)} after {cause}", rshare))
            return found
    return []


_FACTOR_TERMS = {
    "logistic_derivative": ("x", "y", "obj", "cls"),
    "exp_t": ("w", "h"),
    "box_scale": BOX_TERMS,
    "anchor_over_net": ("w", "h"),
}
