"""What darknet decided at each (image, anchor, cell) slot, and on what grounds.

The comparison needs, for every slot, the quantities darknet compared against
a threshold (best IoU vs ``ignore_thresh``/``truth_thresh``, the largest class
probability vs 0.25, a truth's anchor IoUs vs each other and vs
``iou_thresh``) to tell a real decision mismatch from a borderline one, and
the path darknet took, to explain a mismatch in words. All of it comes from
the *reference's* own decisions (``LayerRun.decisions``, exported by the C
reference from the pass that made them): nothing here recomputes geometry,
and nothing comes from a candidate, so a bug in a candidate can never excuse
itself. ``slot_facts`` gathers them once per case; ``slot_path`` spells out
one slot.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .case import Case
from .config import YoloConfig
from .errors import ParityError
from .result import Assignments, LayerRun
from .roles import (CLASS_MATCH_THRESH, ROLE_AVERAGED, ROLE_CLASS_SHORTCUT, ROLE_CLASSMATCH_BLOCKED, ROLE_IGNORED,
                    ROLE_OBJ_NONFINITE, ROLE_REWRITTEN, ROLE_TRUTH_THRESH, ROLES, role_of, slot_roles)

__all__ = ["CLASS_MATCH_THRESH", "ROLES", "SlotFacts", "near", "role_of", "slot_facts", "slot_path", "slot_roles"]


def near(value: np.ndarray, threshold: float, atol: float, rtol: float) -> np.ndarray:
    """``value`` within tolerance of ``threshold``: a decision that could go either way."""
    with np.errstate(invalid="ignore"):
        return np.abs(value.astype(np.float64) - threshold) <= atol + rtol * abs(threshold)


@dataclass
class SlotFacts:
    """The reference's deciding quantities per slot ([B, n, H, W] arrays) and per assignment.

    ``borderline`` slots have a decision that changes what every term gets
    (truth_thresh, ties between truths or anchors, iou_thresh);
    ``borderline_obj`` slots only an objectness decision (ignore, class match).
    """

    config: YoloConfig
    flavor: str
    roles: np.ndarray            # reference role bits
    pred: np.ndarray | None      # [B, n, H, W, 4] predicted boxes (x, y, w, h), where the reference reports them
    best_iou: np.ndarray         # best IoU over the image's truths
    second_iou: np.ndarray       # the runner-up (ties between truths)
    best_t: np.ndarray           # index of the best truth (-1: none)
    max_class_prob: np.ndarray   # largest class probability (the 0.25 class-match test)
    truth: np.ndarray            # [B, rows, 6] as given
    truth_valid: np.ndarray      # [B, rows] rows darknet uses
    assignments: Assignments     # step 2's writes, darknet's order (numpy)
    divisor: np.ndarray          # averaging divisor per slot (0: not divided)
    truth_best_anchor: np.ndarray  # [B, rows] darknet's best anchor over all anchors (-1: row unused)
    truth_i: np.ndarray          # [B, rows] the row's cell (-1: unused)
    truth_j: np.ndarray
    borderline: np.ndarray       # [B, n, H, W] bool: every term's decision could go either way
    borderline_obj: np.ndarray   # only the objectness decision could (ignore, class match)
    reasons: dict[tuple[int, int, int, int], list[str]] = field(default_factory=dict)


def slot_facts(case: Case, reference: LayerRun, atol: float = 1e-5, rtol: float = 1e-4) -> SlotFacts:
    """Deciding quantities and borderline flags for every slot of ``case``, from ``reference``'s decisions.

    ``reference`` is a run that made its own decisions (the C reference;
    a recording or a real libdarknet reports none, so callers pass the C
    reference's run on the same input); ``atol``/``rtol`` say how close to its
    threshold a quantity must be to make the decision borderline.
    """
    run = reference.numpy()
    d = run.decisions
    if d is None or run.roles is None or d.best_iou is None or d.assignments is None:
        raise ParityError(f"{case.name}: the {run.backend!r} reference reports no decisions; "
                          "the C reference's run on the same input gives them")
    config = case.config
    B, n = d.best_iou.shape[:2]
    valid = np.zeros(case.truth.shape[:2], bool)
    used = np.asarray(d.truth_used, bool)
    valid[:, :used.shape[1]] = used[:, :valid.shape[1]]
    zeros = np.zeros(d.best_iou.shape, np.float32)
    facts = SlotFacts(
        config, case.flavor, run.roles,
        np.asarray(d.pred_box) if d.pred_box is not None else None,
        d.best_iou, d.second_iou if d.second_iou is not None else zeros, np.asarray(d.best_truth, np.int64),
        d.max_class_prob if d.max_class_prob is not None else zeros, np.asarray(case.truth), valid,
        d.assignments, np.asarray(d.divisor if d.divisor is not None else zeros, np.int64),
        *(_per_row(getattr(d, k), case.truth.shape[:2]) for k in ("truth_best_anchor", "truth_i", "truth_j")),
        np.zeros(d.best_iou.shape, bool), np.zeros(d.best_iou.shape, bool))
    _mark_borderline(facts, d, atol, rtol)
    return facts


def _per_row(values: Any, shape: tuple[int, ...]) -> np.ndarray:
    """A per-truth-row array padded with -1 to the truth's [B, rows]."""
    out = np.full(shape, -1, np.int64)
    if values is not None:
        v = np.asarray(values, np.int64)
        rows = min(v.shape[1], shape[1])
        out[:, :rows] = v[:, :rows]
    return out


def _flag(facts: SlotFacts, mask: np.ndarray, reason: str, objectness_only: bool = False) -> None:
    """Mark slots borderline: for every term, or (ignore, class match) for objectness only."""
    if objectness_only:
        facts.borderline_obj |= mask
    else:
        facts.borderline |= mask
    for idx in map(tuple, np.argwhere(mask)):
        facts.reasons.setdefault(idx, []).append(reason)


def _mark_borderline(facts: SlotFacts, d: Any, atol: float, rtol: float) -> None:
    cfg = facts.config
    ab = facts.flavor == "alexeyab"
    ignore, tthresh = cfg.ignore_thresh, cfg.truth_thresh
    class_match = np.asarray(d.class_match, bool) if (ab and d.class_match is not None) \
        else np.ones_like(facts.best_iou, bool)
    _flag(facts, near(facts.best_iou, ignore, atol, rtol) & class_match,
          f"best IoU {{:.6g}} is within tolerance of ignore_thresh {ignore:g}", objectness_only=True)
    if ab:
        could_ignore = facts.best_iou > ignore - (atol + rtol * abs(ignore))
        _flag(facts, near(facts.max_class_prob, CLASS_MATCH_THRESH, atol, rtol) & could_ignore,
              "the largest class probability is within tolerance of 0.25 (class-match test)", objectness_only=True)
    _flag(facts, near(facts.best_iou, tthresh, atol, rtol), f"best IoU is within tolerance of truth_thresh {tthresh:g}")
    # Which truth is best matters only to the truth_thresh path (its class and box);
    # the ignore test uses the IoU value, the same for either truth.
    tie = near(facts.best_iou - facts.second_iou, 0.0, atol, rtol) & (facts.second_iou > 0)
    relevant = facts.best_iou > tthresh - (atol + rtol * abs(tthresh))
    _flag(facts, tie & relevant, "two truths have (nearly) the same best IoU above truth_thresh")
    _anchor_borderline(facts, d, atol, rtol)
    for idx, reasons in facts.reasons.items():
        facts.reasons[idx] = [r.format(float(facts.best_iou[idx])) for r in reasons]


def _anchor_borderline(facts: SlotFacts, d: Any, atol: float, rtol: float) -> None:
    """A truth whose best anchor is a near tie, or an anchor near iou_thresh: its cell is borderline."""
    cfg = facts.config
    if d.anchor_iou is None or d.truth_used is None:
        return
    b, t = np.nonzero(np.asarray(d.truth_used, bool))
    if b.size == 0:
        return
    iou = np.asarray(d.anchor_iou)[b, t]                       # [N, total]
    ordered = np.sort(np.where(iou > 0, iou, 0), axis=1)
    if iou.shape[1] > 1:   # with one anchor there is nothing to tie with
        tie = near(ordered[:, -1] - ordered[:, -2], 0.0, atol, rtol) & (ordered[:, -2] > 0)
    else:
        tie = np.zeros(len(b), bool)
    near_thresh = np.zeros(len(b), bool)
    if facts.flavor == "alexeyab" and cfg.iou_thresh < 1 and d.anchor_thresh_iou is not None:
        kind = np.asarray(d.anchor_thresh_iou)[b, t]
        in_mask = np.isin(np.arange(iou.shape[1]), cfg.mask)
        near_thresh = (near(kind, cfg.iou_thresh, atol, rtol) & in_mask[None]).any(axis=1)
    i, j = np.asarray(d.truth_i)[b, t], np.asarray(d.truth_j)[b, t]
    H, W = facts.best_iou.shape[2:]
    for k in np.nonzero(tie | near_thresh)[0]:
        mask = np.zeros_like(facts.borderline)
        if 0 <= i[k] < W and 0 <= j[k] < H:
            mask[b[k], :, j[k], i[k]] = True
        why = "truth %d's best anchor is a near tie" % t[k] if tie[k] else \
            "truth %d has an anchor whose %s is within tolerance of iou_thresh %g" % (t[k], cfg.iou_thresh_kind,
                                                                                    cfg.iou_thresh)
        _flag(facts, mask, why)


def _truth_text(facts: SlotFacts, b: int, t: int) -> str:
    row = facts.truth[b, t]
    return (f"truth {t} (x={row[0]:.6g}, y={row[1]:.6g}, w={row[2]:.6g}, h={row[3]:.6g}, "
            f"class {int(row[4])})")


def slot_path(facts: SlotFacts, b: int, a: int, j: int, i: int) -> dict[str, Any]:
    """darknet's reasoning at one slot: the quantities, the truths involved, the path in words."""
    cfg = facts.config
    bits = int(facts.roles[b, a, j, i])
    idx = (b, a, j, i)
    best, t = float(facts.best_iou[idx]), int(facts.best_t[idx])
    steps = []
    if facts.flavor == "alexeyab":
        prob = float(facts.max_class_prob[idx])
        match = "passes" if prob > CLASS_MATCH_THRESH else "fails"
        steps.append(f"best IoU {best:.6g} ({_truth_text(facts, b, t) if best > 0 else 'no overlapping truth'}); "
                     f"class-match test {match} (largest class probability {prob:.6g} vs 0.25)")
    else:
        steps.append(f"best IoU {best:.6g} ({_truth_text(facts, b, t) if best > 0 else 'no overlapping truth'})")
    if bits & ROLE_IGNORED:
        steps.append(f"IoU > ignore_thresh {cfg.ignore_thresh:g}: ignored (objectness delta 0"
                     + (", or the smoothed value" if cfg.objectness_smooth else "") + ")")
    elif bits & ROLE_CLASSMATCH_BLOCKED:
        steps.append(f"IoU > ignore_thresh {cfg.ignore_thresh:g} but the class-match test fails: not ignored")
    else:
        steps.append(f"IoU <= ignore_thresh {cfg.ignore_thresh:g}: negative, objectness delta "
                     f"obj_normalizer*(0 - p)")
    if bits & ROLE_OBJ_NONFINITE:
        steps.append("non-finite objectness zeroed in the output")
    if bits & ROLE_TRUTH_THRESH:
        steps.append(f"IoU > truth_thresh {cfg.truth_thresh:g}: positive with {_truth_text(facts, b, t)}")
    asg = facts.assignments
    hits = asg.at(b, a, j, i)
    for k in hits:
        how = (f"iou_thresh ({cfg.iou_thresh_kind} of anchor shapes > {cfg.iou_thresh:g})" if asg.extra[k]
               else "its best anchor over all anchors")
        steps.append(f"assigned {_truth_text(facts, b, int(asg.t[k]))} through {how} "
                     f"(anchor {int(asg.anchor[k])}): box, objectness and class deltas")
    for flag, text in ((ROLE_REWRITTEN, "box delta written more than once (accumulated)"),
                       (ROLE_CLASS_SHORTCUT, "class delta 'already set' shortcut"),
                       (ROLE_AVERAGED, "box delta divided by the number of positive class deltas")):
        if bits & flag:
            steps.append(text)
    return {
        "role": role_of(bits),
        "pred": [float(v) for v in facts.pred[idx]] if facts.pred is not None else None,
        "best_iou": best,
        "best_truth": t if best > 0 else None,
        "max_class_prob": float(facts.max_class_prob[idx]) if facts.flavor == "alexeyab" else None,
        "truths": [int(asg.t[k]) for k in hits],
        "borderline": facts.reasons.get(idx, []),
        "path": steps,
    }
