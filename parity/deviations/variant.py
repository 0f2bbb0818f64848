"""``Variant``: darknet's [yolo] semantics with named switches changed.

A value of every switch of the deviation catalogue (``parity.deviations.catalogue``);
the defaults are darknet's, so ``Variant()`` *is* darknet and the port given
``variant=None`` or ``Variant()`` computes the same bits. Standard library only:
the PyTorch port reads it (its hooks), and the catalogue and the search name
its fields, without either importing the other.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ..errors import InputError

# Quantities a term's gradient may be divided by (a port's reduction), besides darknet's plain sum.
REDUCTIONS = ("sum", "batch", "slots", "positives", "positives_classes", "positive_slots", "positive_slots_classes",
              "heads")

# field -> allowed values (a tuple), or the type of a fitted parameter
CHOICES: dict[str, Any] = {
    "reduce_box": REDUCTIONS, "reduce_obj": REDUCTIONS, "reduce_cls": REDUCTIONS,
    "weight_box": float, "weight_obj": float, "weight_cls": float, "heads": int,
    "box_grad": ("darknet", "exact", "autograd"),
    "ciou_alpha": ("differentiated", "detached"),
    "box_kind": ("cfg", "mse", "iou", "giou", "diou", "ciou"),
    "scale_2wh": ("darknet", "missing", "everywhere"),
    "iou_normalizer": ("cfg", "ignored"),
    "max_delta": ("cfg", "ignored"),
    "xy_logistic_grad": bool, "xy_scale_grad": bool,
    "obj_target": ("one", "iou", "iou_kind"),
    "obj_loss": ("bce", "mse", "focal"),
    "focal_gamma": float, "focal_alpha": (type(None), float),
    "obj_normalizer": ("cfg", "ignored"),
    "ignore": ("darknet", "none", "no_class_match", "own_class"),
    "ignore_truths": ("all", "assigned"),
    "ignore_thresh": (type(None), float),
    "assign": ("darknet", "best_in_mask", "ratio", "every_above"),
    "ratio_k": float,
    "assign_t": float,
    "neighbour_cells": bool,
    "assign_cap": (type(None), int),
    "extras": ("darknet", "none"),
    "box_writer": ("darknet", "last", "first", "max_iou"),
    "class_write": ("darknet", "rewrite", "sum"),
    "averaging": ("darknet", "none", "always"),
    "averaging_classes": bool,
    "cls_loss": ("logistic", "softmax"),
    "cls_smooth": ("darknet", "uniform", "none"),
    "cls_smooth_eps": (type(None), float),
    "cls_multipliers": ("cfg", "ignored"),
    "objectness_smooth": ("cfg", "ignored"),
    "cls_focal": ("cfg", "ignored"),
    "truth_terminator": ("darknet", "skip"),
    "truth_max": ("cfg", "ignored"),
    "truth_class": ("darknet", "clamped"),
    "nonfinite": ("guarded", "propagates"),
}

# fitted parameters with a range: field -> (test, what the error names)
RANGES: dict[str, tuple[Any, str]] = {
    "focal_gamma": (lambda v: v >= 0, "a float >= 0"),
    "focal_alpha": (lambda v: 0 <= v <= 1, "None or a float in [0, 1]"),
    "cls_smooth_eps": (lambda v: 0 <= v <= 1, "None or a float in [0, 1]"),
    "assign_cap": (lambda v: not isinstance(v, bool) and v >= 0, "None or an int >= 0"),
}


@dataclass(frozen=True)
class Variant:
    """Switch values; every default is darknet's own semantics (see the catalogue for each)."""

    # reduction and weights per term: the gradient of a term is multiplied by weight / quantity
    reduce_box: str = "sum"
    reduce_obj: str = "sum"
    reduce_cls: str = "sum"
    weight_box: float = 1.0
    weight_obj: float = 1.0
    weight_cls: float = 1.0
    heads: int = 1                  # the quantity "heads" (a mean over the network's heads)
    # box gradient
    box_grad: str = "darknet"       # dx_box_iou | exact IoU-kind derivative | autograd through the decoding
    ciou_alpha: str = "differentiated"   # exact/autograd CIoU only: alpha differentiated or detached (common ports)
    box_kind: str = "cfg"           # the box loss a port uses instead of the cfg's iou_loss
    scale_2wh: str = "darknet"      # (2 - w*h): darknet's (mse only) | missing | on every path
    iou_normalizer: str = "cfg"
    max_delta: str = "cfg"
    # x, y
    xy_logistic_grad: bool = False  # the logistic's derivative multiplied into x, y
    xy_scale_grad: bool = False     # scale_x_y multiplied into x, y
    # objectness
    obj_target: str = "one"
    obj_loss: str = "bce"           # bce: darknet's target - p; mse: times p*(1 - p); focal: -d focal BCE / d logit
    focal_gamma: float = 2.0        # obj_loss="focal" only: (1 - p_t)**gamma
    focal_alpha: float | None = 0.25     # obj_loss="focal" only: alpha_t weighting (None: none)
    obj_normalizer: str = "cfg"
    # ignore
    ignore: str = "darknet"
    ignore_thresh: float | None = None   # None: the cfg's
    ignore_truths: str = "all"      # the truths the best IoU is searched over: all | only those assigned here
    # assignment
    assign: str = "darknet"
    ratio_k: float = 4.0
    assign_t: float = 0.2           # assign="every_above": anchor-shape IoU threshold
    extras: str = "darknet"
    neighbour_cells: bool = False   # yolov5: also the 2 neighbour cells nearest the centre
    assign_cap: int | None = None   # at most this many (used) truths per image are assigned
    # slots written twice
    box_writer: str = "darknet"     # darknet: AlexeyAB accumulates, pjreddie keeps the last; max_iou: best IoU's
    class_write: str = "darknet"    # darknet: the "already set" shortcut; rewrite: the last truth's row; sum: every row
    # averaging over iou_thresh extras
    averaging: str = "darknet"
    averaging_classes: bool = False     # the averaging pass divides the class deltas too
    # classes
    cls_loss: str = "logistic"      # softmax: onehot - softmax(logits) at the written rows
    cls_smooth: str = "darknet"     # darknet: y*(1 - eps) + 0.5*eps; uniform: y*(1 - eps) + eps/classes; none
    cls_smooth_eps: float | None = None  # None: the cfg's label_smooth_eps
    cls_multipliers: str = "cfg"    # ignored: counters_per_class has no effect
    objectness_smooth: str = "cfg"  # ignored: the cfg's objectness_smooth left out (targets 1 and 0)
    cls_focal: str = "cfg"          # ignored: the cfg's focal_loss left out (plain logistic class deltas)
    # truth reading
    truth_terminator: str = "darknet"    # skip: x == 0 rows are skipped, reading goes on
    truth_max: str = "cfg"          # ignored: every row of the truth tensor is read
    truth_class: str = "darknet"    # clamped: a finite class id outside [0, classes) is clamped, the truth kept
    # non-finite
    nonfinite: str = "guarded"      # propagates: no zeroing of NaN/Inf objectness, box or class deltas

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value, allowed = getattr(self, f.name), CHOICES[f.name]
            if isinstance(allowed, tuple) and all(isinstance(a, str) for a in allowed):
                ok = value in allowed
            elif isinstance(allowed, tuple):
                ok = isinstance(value, allowed) or (float in allowed and isinstance(value, int))
            elif allowed is float:
                ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            else:
                ok = isinstance(value, allowed)
            expected = f"one of {allowed}"
            if ok and value is not None and f.name in RANGES:
                ok, expected = RANGES[f.name][0](value), RANGES[f.name][1]
            if not ok:
                raise InputError(f"Variant.{f.name}={value!r}: expected {expected}")

    def changes(self) -> dict[str, Any]:
        """The switches that differ from darknet's values."""
        base = Variant()
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if getattr(self, f.name) != getattr(base, f.name)}

    @property
    def is_darknet(self) -> bool:
        return not self.changes()


DARKNET = Variant()
