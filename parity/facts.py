"""What darknet decided at each (image, anchor, cell) slot, and on what grounds.

The diff needs, for every slot, the quantities darknet compared against a
threshold (best IoU vs ``ignore_thresh``/``truth_thresh``, the largest class
probability vs 0.25, a truth's anchor IoUs vs each other and vs
``iou_thresh``) to tell a real decision mismatch from a borderline one, and
the path darknet took, to explain a mismatch in words. ``slot_facts``
computes them once per case with the PyTorch port's float32 arithmetic (the
same numbers darknet compares); ``explain_cell`` spells out one slot.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .case import Case
from .config import YoloConfig
from .roles import (ROLE_AVERAGED, ROLE_BEST_ANCHOR, ROLE_CLASS_SHORTCUT, ROLE_CLASSMATCH_BLOCKED, ROLE_EXTRA_ANCHOR,
                    ROLE_IGNORED, ROLE_OBJ_NONFINITE, ROLE_REWRITTEN, ROLE_TRUTH_THRESH)
from .torch_box import Boxes, box_iou, box_iou_kind

CLASS_MATCH_THRESH = 0.25
# Slot roles for the diff, in priority order (a slot gets the first that applies).
ROLES = ("rewritten", "truth_thresh", "extra", "best", "ignored", "negative")


def near(value: np.ndarray, threshold: float, atol: float, rtol: float) -> np.ndarray:
    """``value`` within tolerance of ``threshold``: a decision that could go either way."""
    with np.errstate(invalid="ignore"):
        return np.abs(value.astype(np.float64) - threshold) <= atol + rtol * abs(threshold)


_ROLE_FLAGS = (("rewritten", ROLE_REWRITTEN), ("truth_thresh", ROLE_TRUTH_THRESH), ("extra", ROLE_EXTRA_ANCHOR),
               ("best", ROLE_BEST_ANCHOR), ("ignored", ROLE_IGNORED))


def role_of(bits: int) -> str:
    """The role of one slot from its reference role bits (priority as in ``ROLES``)."""
    for name, flag in _ROLE_FLAGS:
        if bits & flag:
            return name
    return "negative"


def slot_roles(bits: np.ndarray) -> np.ndarray:
    """Index into ``ROLES`` per slot ([B, n, H, W] role bits -> int array)."""
    role = np.full(bits.shape, ROLES.index("negative"), dtype=np.int8)
    for name, flag in reversed(_ROLE_FLAGS):  # highest priority written last
        role[(bits & flag) != 0] = ROLES.index(name)
    return role


@dataclass
class SlotFacts:
    """Deciding quantities per slot ([B, n, H, W] arrays) and per assignment.

    ``borderline`` slots have a decision that changes what every term gets
    (truth_thresh, ties between truths or anchors, iou_thresh);
    ``borderline_obj`` slots only an objectness decision (ignore, class match).
    """

    config: YoloConfig
    flavor: str
    roles: np.ndarray            # reference role bits
    pred: np.ndarray             # [B, n, H, W, 4] predicted boxes (x, y, w, h)
    best_iou: np.ndarray         # best IoU over the image's truths
    second_iou: np.ndarray       # the runner-up (ties between truths)
    best_t: np.ndarray           # index of the best truth
    max_class_prob: np.ndarray   # largest class probability (the 0.25 class-match test)
    truth: np.ndarray            # [B, rows, 6] as darknet reads it
    truth_valid: np.ndarray      # [B, rows] rows darknet uses
    assignments: dict[str, np.ndarray]   # b, t, a, anchor, j, i, extra (darknet's order)
    borderline: np.ndarray       # [B, n, H, W] bool: every term's decision could go either way
    borderline_obj: np.ndarray | None = None   # only the objectness decision could (ignore, class match)
    reasons: dict[tuple[int, int, int, int], list[str]] = field(default_factory=dict)


def _iou_matrix(pred: Boxes, truth: Boxes, valid: torch.Tensor, pjreddie: bool) -> torch.Tensor:
    """IoU of every slot with every truth of its image: [B, P, T] (invalid truths: 0)."""
    B, P = pred.x.shape[0], pred.x.numel() // pred.x.shape[0]
    T = truth.x.shape[1]
    flat = Boxes(*(c.reshape(B, P, 1) for c in pred))
    tb = Boxes(*(c.reshape(B, 1, T) for c in truth))
    iou = box_iou(flat, tb, pjreddie=pjreddie)
    return torch.where(valid.view(B, 1, T), iou, torch.zeros_like(iou))


def slot_facts(case: Case, roles: np.ndarray, atol: float = 1e-5, rtol: float = 1e-4,
               output: np.ndarray | None = None) -> SlotFacts:
    """Deciding quantities and borderline flags for every slot of ``case``.

    ``roles`` are the reference's role bits and ``output`` its activated
    output (computed here when not given); ``atol``/``rtol`` say how close to
    its threshold a quantity must be to make the decision borderline.
    """
    from . import torch_layer as tl

    config, flavor = case.config, case.flavor
    x = torch.from_numpy(np.ascontiguousarray(case.input, dtype=np.float32))
    t = torch.from_numpy(np.ascontiguousarray(case.truth, dtype=np.float32))
    if output is None:
        output = tl.yolo_forward(x, t, config, flavor)[0].numpy()
    B, _, H, W = x.shape
    n, C = config.n, config.classes
    o = torch.from_numpy(np.ascontiguousarray(output, dtype=np.float32)).view(B, n, 5 + C, H, W)
    layer = tl._Layer(config, flavor, B, n, C, H, W, o, torch.zeros(0), torch.zeros(B, n, H, W, dtype=torch.int32),
                      torch.tensor(np.asarray(config.anchors, np.float32).reshape(-1, 2)),
                      torch.tensor(config.mask), None)
    pred = tl._grid_pred_boxes(layer)
    truths = tl._read_truths(layer, t)
    asg = tl._assignments(layer, truths)
    assignments = {k: getattr(asg, k).numpy() for k in ("b", "t", "a", "anchor", "j", "i", "extra")}
    best, second, best_t = _best_two(pred, truths, flavor == "pjreddie", (B, n, H, W))
    max_prob = o[:, :, 5:].amax(dim=2).numpy() if flavor == "alexeyab" else np.zeros((B, n, H, W), np.float32)
    valid = np.zeros(case.truth.shape[:2], bool)
    valid[:, :truths.valid.shape[1]] = truths.valid.numpy()
    facts = SlotFacts(config, flavor, roles, torch.stack(list(pred), dim=-1).numpy(), best, second, best_t, max_prob,
                      np.asarray(case.truth), valid, assignments, np.zeros((B, n, H, W), bool))
    _mark_borderline(facts, layer, truths, atol, rtol)
    return facts


def _best_two(pred: Boxes, truths: Any, pjreddie: bool, shape: tuple[int, ...]
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Best and runner-up IoU over the image's truths, and the best's index, per slot."""
    T = truths.valid.shape[1]
    if T == 0:
        zeros = np.zeros(shape, np.float32)
        return zeros, zeros.copy(), np.zeros(shape, np.int64)
    iou = _iou_matrix(pred, truths.box, truths.valid, pjreddie)
    eff = torch.where(iou > 0, iou, torch.zeros_like(iou))
    top = eff.topk(min(2, T), dim=-1)
    best = top.values[..., 0].reshape(shape).numpy()
    best_t = top.indices[..., 0].reshape(shape).numpy()
    second = (top.values[..., 1] if T > 1 else torch.zeros_like(top.values[..., 0])).reshape(shape).numpy()
    return best, second, best_t


def _flag(facts: SlotFacts, mask: np.ndarray, reason: str, objectness_only: bool = False) -> None:
    """Mark slots borderline: for every term, or (ignore, class match) for objectness only."""
    if objectness_only:
        facts.borderline_obj |= mask
    else:
        facts.borderline |= mask
    for idx in map(tuple, np.argwhere(mask)):
        facts.reasons.setdefault(idx, []).append(reason)


def _mark_borderline(facts: SlotFacts, layer: Any, truths: Any, atol: float, rtol: float) -> None:
    cfg = facts.config
    ab = facts.flavor == "alexeyab"
    ignore, tthresh = cfg.ignore_thresh, cfg.truth_thresh
    class_match = facts.max_class_prob > CLASS_MATCH_THRESH if ab else np.ones_like(facts.best_iou, bool)
    facts.borderline_obj = np.zeros_like(facts.borderline)
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
    _anchor_borderline(facts, layer, truths, atol, rtol)
    for idx, reasons in facts.reasons.items():
        facts.reasons[idx] = [r.format(float(facts.best_iou[idx])) for r in reasons]


def _anchor_borderline(facts: SlotFacts, layer: Any, truths: Any, atol: float, rtol: float) -> None:
    """A truth whose best anchor is a near tie, or an anchor near iou_thresh: its cell is borderline."""
    cfg = facts.config
    b, t = np.nonzero(truths.valid.numpy())
    if b.size == 0:
        return
    tw = truths.box.w.numpy()[b, t]
    th = truths.box.h.numpy()[b, t]
    tx = truths.box.x.numpy()[b, t]
    ty = truths.box.y.numpy()[b, t]
    i = (tx.astype(np.float32) * np.float32(layer.W)).astype(np.int64)
    j = (ty.astype(np.float32) * np.float32(layer.H)).astype(np.int64)
    anchors = np.asarray(cfg.anchors, np.float32).reshape(-1, 2)
    aw = torch.from_numpy(anchors[:, 0]) / torch.tensor(float(cfg.net_w))
    ah = torch.from_numpy(anchors[:, 1]) / torch.tensor(float(cfg.net_h))
    zero = torch.zeros_like(aw)
    shapes = Boxes(torch.zeros(len(b)), torch.zeros(len(b)), torch.from_numpy(tw), torch.from_numpy(th))
    anchor_boxes = Boxes(zero[None], zero[None], aw[None], ah[None])
    truth_boxes = Boxes(*(c[:, None] for c in shapes))
    iou = box_iou(anchor_boxes, truth_boxes, pjreddie=facts.flavor == "pjreddie").numpy()   # [N, total]
    ordered = np.sort(np.where(iou > 0, iou, 0), axis=1)
    if iou.shape[1] > 1:   # with one anchor there is nothing to tie with
        tie = near(ordered[:, -1] - ordered[:, -2], 0.0, atol, rtol) & (ordered[:, -2] > 0)
    else:
        tie = np.zeros(len(b), bool)
    near_thresh = np.zeros(len(b), bool)
    if facts.flavor == "alexeyab" and cfg.iou_thresh < 1:
        kind = box_iou_kind(anchor_boxes, truth_boxes, cfg.iou_thresh_kind).numpy()
        in_mask = np.isin(np.arange(iou.shape[1]), cfg.mask)
        near_thresh = (near(kind, cfg.iou_thresh, atol, rtol) & in_mask[None]).any(axis=1)
    for k in np.nonzero(tie | near_thresh)[0]:
        mask = np.zeros_like(facts.borderline)
        if 0 <= i[k] < layer.W and 0 <= j[k] < layer.H:
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
    hits = np.nonzero((asg["b"] == b) & (asg["a"] == a) & (asg["j"] == j) & (asg["i"] == i))[0]
    for k in hits:
        how = (f"iou_thresh ({cfg.iou_thresh_kind} of anchor shapes > {cfg.iou_thresh:g})" if asg["extra"][k]
               else "its best anchor over all anchors")
        steps.append(f"assigned {_truth_text(facts, b, int(asg['t'][k]))} through {how} "
                     f"(anchor {int(asg['anchor'][k])}): box, objectness and class deltas")
    for flag, text in ((ROLE_REWRITTEN, "box delta written more than once (accumulated)"),
                       (ROLE_CLASS_SHORTCUT, "class delta 'already set' shortcut"),
                       (ROLE_AVERAGED, "box delta divided by the number of positive class deltas")):
        if bits & flag:
            steps.append(text)
    return {
        "role": role_of(bits),
        "pred": [float(v) for v in facts.pred[idx]],
        "best_iou": best,
        "best_truth": t if best > 0 else None,
        "max_class_prob": float(facts.max_class_prob[idx]) if facts.flavor == "alexeyab" else None,
        "truths": [int(asg["t"][k]) for k in hits],
        "borderline": facts.reasons.get(idx, []),
        "path": steps,
    }
