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
explains; a cause is reported only when it explains most of them. The
diagnosis has no tolerance and no geometry of its own: the differing
elements are the comparison's failing mask (``CaseDiff.mask``), and every
decision it reasons about is the reference's own (``SlotFacts``). Whenever
the comparison fails, it says something: at least "unexplained", with where.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np

from .case import Case
from .diff import CaseDiff
from .facts import SlotFacts
from .result import LayerRun
from .roles import (ROLE_BEST_ANCHOR, ROLE_CLASSMATCH_BLOCKED, ROLE_CLASS_SHORTCUT, ROLE_EXTRA_ANCHOR, ROLE_IGNORED,
                    ROLE_REWRITTEN, ROLE_TRUTH_THRESH, positive)

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


def diagnose(case: Case, reference: LayerRun, cand_delta: np.ndarray, facts: SlotFacts,
             diff: CaseDiff) -> list[Cause]:
    """Known causes explaining the candidate's differences, most explanatory first.

    ``reference`` gives the delta the candidate was compared with and the
    activated output; ``diff`` (from ``parity.compare.compare``) says which
    elements fail. A failing ``diff`` always gets at least one cause.
    """
    config = case.config
    ref = reference.numpy()
    B, _, H, W = ref.delta.shape
    E = 5 + config.classes
    shape = (B, config.n, E, H, W)
    views = (ref.delta.reshape(shape), cand_delta.reshape(shape), case.input.reshape(shape),
             ref.output.reshape(shape))
    failing = diff.mask if diff.mask is not None else np.zeros(shape, bool)
    causes = list(_nonfinite_causes(views, failing))
    failing = failing & np.isfinite(views[1])     # the rest is read from finite values only
    causes += list(_decision_causes(views, facts, failing))
    causes += _value_causes(views, facts, failing)
    if not causes and failing.any():
        causes.append(_unexplained_where(views, failing))
    causes.sort(key=lambda c: -c.confidence)
    return _dedupe(causes)


# How darknet keeps each term's delta finite where the input is not.
_GUARDS = {
    "x": "its box delta is set to 0 where not finite (fix_nan_inf in delta_yolo_box)",
    "y": "its box delta is set to 0 where not finite (fix_nan_inf in delta_yolo_box)",
    "w": "its box delta is set to 0 where not finite (fix_nan_inf in delta_yolo_box)",
    "h": "its box delta is set to 0 where not finite (fix_nan_inf in delta_yolo_box)",
    "obj": "a non-finite objectness is zeroed in the output before its delta is written "
           "(the isnan/isinf check in forward_yolo_layer's truth loop)",
    "cls": "delta_yolo_class keeps the previous delta where the new one is not finite",
}


def _nonfinite_causes(views: tuple[np.ndarray, ...], failing: np.ndarray) -> Iterator[Cause]:
    """The candidate returns NaN/Inf where darknet's delta is finite: name the input that holds it."""
    ref, cand, raw, _ = views
    bad = failing & ~np.isfinite(cand) & np.isfinite(ref)
    if not bad.any():
        return
    where_in = np.argwhere(~np.isfinite(raw))
    if where_in.size:
        b, a, e, j, i = (int(v) for v in where_in[0])
        holds = (f"the input holds {float(raw[b, a, e, j, i])!r} at image {b}, anchor {a}, entry {e}, "
                 f"cell (j={j}, i={i}) ({len(where_in)} non-finite input element(s))")
    else:
        holds = "the input is finite: the candidate makes NaN/Inf itself"
    b, a, e, j, i = (int(v) for v in np.argwhere(bad)[0])
    term = ("x", "y", "w", "h", "obj")[e] if e < 5 else "cls"
    if where_in.size:
        words = (f"{holds}; darknet's delta stays finite there ({_GUARDS[term]}); yours returns "
                 f"{float(cand[b, a, e, j, i])!r}. Guard the same way, or leave such cases out with --finite-only")
    else:
        words = (f"{holds} (darknet's delta there is {float(ref[b, a, e, j, i])!r}, yours "
                 f"{float(cand[b, a, e, j, i])!r})")
    yield Cause(term, "nonfinite", words,
                f"{int(bad.sum())} NaN/Inf element(s) where darknet's delta is finite; first at image {b}, "
                f"anchor {a}, cell (j={j}, i={i}), term {term}", 1.0)


def _unexplained_where(views: tuple[np.ndarray, ...], failing: np.ndarray) -> Cause:
    """The last word: how many elements fail and the first of them."""
    ref, cand = views[0], views[1]
    b, a, e, j, i = (int(v) for v in np.argwhere(failing)[0])
    term = ("x", "y", "w", "h", "obj")[e] if e < 5 else "cls"
    return Cause(term, "unexplained", "the differences fit none of the known causes",
                 f"{int(failing.sum())} elements fail; first at image {b}, anchor {a}, cell (j={j}, i={i}), "
                 f"entry {e}: candidate {float(cand[b, a, e, j, i])!r}, darknet {float(ref[b, a, e, j, i])!r}", 0.0)


def _dedupe(causes: list[Cause]) -> list[Cause]:
    seen: set[tuple[str, str]] = set()
    out = []
    for c in causes:
        if (c.term, c.cause) not in seen:
            seen.add((c.term, c.cause))
            out.append(c)
    return out


# ---------------------------------------------------------------- decisions


def _decision_causes(views: tuple[np.ndarray, ...], facts: SlotFacts, failing: np.ndarray) -> Iterator[Cause]:
    ref, cand, _, out = views
    bits = facts.roles
    cfg = facts.config
    obj_ref, obj_cand = ref[:, :, 4], cand[:, :, 4]
    obj_diff = ((obj_ref != 0) != (obj_cand != 0)) & failing[:, :, 4]
    if obj_diff.any():
        total = int(obj_diff.sum())
        ignored_written = obj_diff & ((bits & ROLE_IGNORED) != 0) & (obj_ref == 0) & ~positive(bits)
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
    box_diff = (box_ref != box_cand) & failing[:, :, :4].any(axis=2)
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


def _assigned(bits: np.ndarray) -> np.ndarray:
    return (bits & (ROLE_BEST_ANCHOR | ROLE_EXTRA_ANCHOR)) != 0


def _share_of(mask: np.ndarray, total: int) -> float:
    return float(mask.sum()) / total if total else 0.0


def _best_anchor_outside_mask_at(facts: SlotFacts, slots: np.ndarray) -> bool:
    """Do the written cells hold truths whose best anchor (over all, darknet's choice) is outside the mask?"""
    cells = {(int(b), int(j), int(i)) for b, _, j, i in np.argwhere(slots)}
    for b, t in zip(*np.nonzero(facts.truth_valid)):
        if (int(b), int(facts.truth_j[b, t]), int(facts.truth_i[b, t])) in cells \
                and int(facts.truth_best_anchor[b, t]) not in facts.config.mask:
            return True
    return False


# ------------------------------------------------------------------- values


def _differing(views: tuple[np.ndarray, ...], failing: np.ndarray, entries: np.ndarray, name: str) -> _Term | None:
    """The failing elements of one term that both sides write (a value, not a decision, differs)."""
    ref, cand, raw, out = views
    sel = np.zeros(ref.shape, bool)
    sel[:, :, entries] = True
    differing = sel & failing & (ref != 0) & (cand != 0) & np.isfinite(ref) & np.isfinite(cand)
    if not differing.any():
        return None
    idx = np.nonzero(differing)
    b, a, e, j, i = idx
    return _Term(name, ref[idx].astype(np.float64), cand[idx].astype(np.float64), raw[idx].astype(np.float64),
                 out[idx].astype(np.float64), (b, a, j, i), e)


def _value_causes(views: tuple[np.ndarray, ...], facts: SlotFacts, failing: np.ndarray) -> list[Cause]:
    cfg = facts.config
    causes: list[Cause] = []
    groups = [("x", [0]), ("y", [1]), ("w", [2]), ("h", [3]), ("obj", [4]), ("cls", list(range(5, 5 + cfg.classes)))]
    for name, entries in groups:
        term = _differing(views, failing, np.asarray(entries), name)
        if term is None:
            continue
        found = _where_causes(term, facts) or _factor_causes(term, facts)
        if not found:
            ratio = term.cand / term.ref
            b, a, j, i = (int(v[0]) for v in term.slot)
            found = [Cause(name, "unexplained",
                           "the differences fit none of the known causes",
                           f"{term.ref.size} elements differ; candidate/reference ratio from "
                           f"{_fmt(np.min(ratio))} to {_fmt(np.max(ratio))}; first at image {b}, anchor {a}, "
                           f"cell (j={j}, i={i})", 0.0)]
        causes += found
    return causes


def _where_causes(term: _Term, facts: SlotFacts) -> list[Cause]:
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
        averaged = _averaging_cause(term, facts)
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


def _averaging_cause(term: _Term, facts: SlotFacts) -> Cause | None:
    """Box deltas times the number of positive class deltas: darknet's averaging is missing."""
    if facts.flavor != "alexeyab" or not facts.config.iou_thresh < 1:
        return None
    count = facts.divisor[term.slot]                  # darknet's classes_in_one_box where it divided
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
    """Per differing element: did the slot's prediction miss its (last) assigned truth (darknet's IoU 0)?"""
    asg = facts.assignments
    apart = np.zeros(term.ref.size, bool)
    if asg.iou is None:
        return apart
    for k, (b, a, j, i) in enumerate(zip(*term.slot)):
        hit = asg.at(b, a, j, i)
        apart[k] = hit.size > 0 and not float(asg.iou[hit[-1]]) > 0
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
        hit = asg.at(b, a, j, i)
        if hit.size:
            tr = facts.truth[b, asg.t[hit[-1]]]
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
    grid = facts.best_iou.shape[3] if term == "x" else facts.best_iou.shape[2]
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
