"""Independently written porter-style YOLO losses, each with its documented set of catalogue deviations.

``PORTERS``: one ``Porter`` per loss (name, profile, the loss, its documented
set {catalogue id: {fitted params}}, and the equivalent ``Variant``). The
losses (``yolov3_style``, ``yolov4_style``) never call the project's port or
read its decisions: they read the labels, match anchors, build targets and
reduce on their own, and autograd gives their gradient. ``porter_cases`` and
``porter_delta`` give an explanation search what it needs: the cases of a
profile and a loss's delta (darknet's sign) on each.
"""
from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable

import numpy as np
import torch

from parity.cases import case_from_spec
from parity.deviations.catalogue import BY_ID
from parity.deviations.variant import Variant
from parity.generate import CaseFeatures, CaseShape, random_case

from . import yolov3_style as v3
from . import yolov4_style as v4

__all__ = ["PORTERS", "PROFILE_FEATURES", "Porter", "compose", "porter_by_name", "porter_cases", "porter_delta",
           "variant_of"]

# Dense cases without truth-reading or non-finite specials (no loss documents those). On the yolov4
# profile more planted predictions sit in a neighbouring cell with a class above 0.25, so that darknet's
# ignore test reaches slots no label is matched to (with 80 classes the class check rarely passes).
FEATURES = CaseFeatures(nonfinite=0.0, shared_cell=0.45, class_oob=0.0, mid_terminator=0.0, over_max=0.0,
                        empty_image=0.0, plant=0.9, plant_wild=0.3, anchor_sized=0.5)
PROFILE_FEATURES = {"yolov3": FEATURES,
                    "yolov4": dataclasses.replace(FEATURES, plant_neighbour=0.4, plant_class_match=0.8)}
# Varied batch sizes and grids, so that means over the batch, slots or matches are not one constant.
SHAPES = (CaseShape(2, 8, 8, 12), CaseShape(1, 7, 9, 10), CaseShape(3, 6, 6, 12), CaseShape(4, 5, 7, 8),
          CaseShape(2, 9, 6, 14))


@dataclass(frozen=True)
class Porter:
    name: str
    profile: str                                   # "yolov3" (MSE-family box) or "yolov4" (CIoU)
    loss: Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor]
    documented: dict[str, dict[str, Any]]          # catalogue id -> fitted params
    variant: Variant                               # the same set as Variant switches
    # deviations the loss also has that no porter case can reveal (left out of ``documented``): an
    # autograd CIoU port never clips, but its gradient carries anchor/net_size, so at the cfg's
    # iou_normalizer darknet's clip at max_delta is never reached by the variant either
    unrevealed: tuple[str, ...] = ()


def compose(documented: dict[str, dict[str, Any]]) -> Variant:
    """The Variant of a documented set: each entry's switches, then its fitted params.

    ``term_weight``'s switch only names an example weight, so only its params count.
    Two entries setting one field to different values is an error.
    """
    fields: dict[str, Any] = {}
    for dev_id, params in documented.items():
        entry = BY_ID[dev_id]
        if entry.switch is None:
            raise ValueError(f"{dev_id}: not executable")
        own = ({} if dev_id == "term_weight" else dict(entry.switch)) | dict(params)
        for k, v in own.items():
            if k in fields and fields[k] != v:
                raise ValueError(f"{dev_id}: {k}={v!r} conflicts with {fields[k]!r}")
            fields[k] = v
    return Variant(**fields)


AUTOGRAD_CIOU = {"box_grad_autograd": {"ciou_alpha": "detached"}, "xy_logistic_derivative": {},
                 "xy_scale_derivative": {}}
NO_CLIP = ("max_delta_ignored",)

PORTERS: tuple[Porter, ...] = (
    # ---- yolov3 profile (cfg: mse box loss, iou_normalizer 0.75, ignore_thresh 0.7, iou_thresh 1)
    Porter("keras_yolo3", "yolov3", v3.keras_yolo3,
           {"box_mean_over_batch": {}, "obj_mean_over_batch": {}, "cls_mean_over_batch": {},
            "iou_normalizer_ignored": {}, "ignore_no_class_match": {}, "ignore_threshold": {"ignore_thresh": 0.5},
            "box_last_writer": {}},
           Variant(reduce_box="batch", reduce_obj="batch", reduce_cls="batch", iou_normalizer="ignored",
                   ignore="no_class_match", ignore_thresh=0.5, box_writer="last")),
    Porter("erik_pytorch_yolov3", "yolov3", v3.erik_pytorch_yolov3,
           {"assign_best_in_mask": {}, "box_last_writer": {}, "xy_logistic_derivative": {},
            "scale_2wh_missing": {}, "iou_normalizer_ignored": {}, "term_weight": {"weight_box": 2.0},
            "ignore_none": {}},
           Variant(assign="best_in_mask", box_writer="last", xy_logistic_grad=True, scale_2wh="missing",
                   iou_normalizer="ignored", weight_box=2.0, ignore="none")),
    Porter("ultralytics_v3_giou", "yolov3", v3.ultralytics_v3_giou,
           {"assign_ratio": {"ratio_k": 4.0}, "box_kind_other": {"box_kind": "giou"}, "box_grad_autograd": {},
            "xy_logistic_derivative": {}, "iou_normalizer_ignored": {}, "box_mean_over_positives": {},
            "obj_mean_over_slots": {}, "ignore_none": {}},
           Variant(assign="ratio", ratio_k=4.0, box_kind="giou", box_grad="autograd", xy_logistic_grad=True,
                   iou_normalizer="ignored", reduce_box="positives", reduce_obj="slots", ignore="none")),
    Porter("yolov2_sse", "yolov3", v3.yolov2_sse,
           {"xy_logistic_derivative": {}, "term_weight": {"weight_box": 2.0}, "obj_mse": {"weight_obj": 2.0},
            "class_rewrite": {}, "ignore_threshold": {"ignore_thresh": 0.5}},
           Variant(xy_logistic_grad=True, weight_box=2.0, obj_loss="mse", weight_obj=2.0, class_write="rewrite",
                   ignore_thresh=0.5)),
    Porter("mmdet_style_heads", "yolov3", v3.mmdet_style_heads,
           {"term_weight": {"weight_box": 2.0}, "scale_2wh_missing": {}, "iou_normalizer_ignored": {},
            "ignore_no_class_match": {}, "box_mean_over_heads": {}, "obj_mean_over_heads": {},
            "cls_mean_over_heads": {}},
           Variant(weight_box=2.0, scale_2wh="missing", iou_normalizer="ignored", ignore="no_class_match",
                   reduce_box="heads", reduce_obj="heads", reduce_cls="heads", heads=3)),
    Porter("iou_aware_objectness", "yolov3", v3.iou_aware_objectness,
           {"xy_logistic_derivative": {}, "box_mean_over_positives": {}, "obj_target_iou": {"obj_target": "iou"},
            "obj_mean_over_slots": {}, "cls_mean_over_positives_classes": {}},
           Variant(xy_logistic_grad=True, reduce_box="positives", obj_target="iou", reduce_obj="slots",
                   reduce_cls="positives_classes")),
    # ---- yolov4 profile (cfg: ciou, iou_normalizer 0.07, iou_thresh 0.213, scale_x_y 1.2, max_delta 5)
    Porter("ultralytics_ratio_ciou", "yolov4", v4.ultralytics_ratio_ciou,
           {"assign_ratio": {"ratio_k": 4.0}, **AUTOGRAD_CIOU, "averaging_none": {},
            "box_mean_over_positives": {}, "ignore_none": {}},
           Variant(assign="ratio", ratio_k=4.0, box_grad="autograd", ciou_alpha="detached", xy_logistic_grad=True,
                   xy_scale_grad=True, averaging="none", reduce_box="positives",
                   ignore="none"),
           unrevealed=NO_CLIP),
    Porter("bubbliiiing_style", "yolov4", v4.bubbliiiing_style,
           {"assign_no_extras": {}, "scale_2wh_on_iou": {}, "box_grad_autograd": {"ciou_alpha": "differentiated"},
            "xy_logistic_derivative": {}, "xy_scale_derivative": {},
            "averaging_none": {}, "ignore_no_class_match": {}},
           Variant(extras="none", scale_2wh="everywhere", box_grad="autograd", ciou_alpha="differentiated",
                   xy_logistic_grad=True, xy_scale_grad=True, averaging="none",
                   ignore="no_class_match"),
           unrevealed=NO_CLIP),
    Porter("tf_custom_gradient", "yolov4", v4.tf_custom_gradient,
           {"box_grad_exact": {"ciou_alpha": "detached"}, "averaging_none": {}, "box_mean_over_batch": {},
            "obj_mean_over_batch": {}, "cls_mean_over_batch": {}},
           Variant(box_grad="exact", ciou_alpha="detached", averaging="none", reduce_box="batch",
                   reduce_obj="batch", reduce_cls="batch")),
    Porter("inplace_targets_ciou", "yolov4", v4.inplace_targets_ciou,
           {"box_last_writer": {}, "class_rewrite": {}, **AUTOGRAD_CIOU, "obj_target_iou": {"obj_target": "iou"},
            "obj_mean_over_slots": {}},
           Variant(box_writer="last", class_write="rewrite", box_grad="autograd", ciou_alpha="detached",
                   xy_logistic_grad=True, xy_scale_grad=True, obj_target="iou",
                   reduce_obj="slots"),
           unrevealed=NO_CLIP),
    Porter("darknet_aware_weights", "yolov4", v4.darknet_aware_weights,
           {"box_grad_autograd": {"ciou_alpha": "differentiated"}, "xy_logistic_derivative": {},
            "xy_scale_derivative": {}, "iou_normalizer_ignored": {},
            "term_weight": {"weight_box": 0.05, "weight_cls": 0.5}, "cls_mean_over_positives": {}},
           Variant(box_grad="autograd", ciou_alpha="differentiated", xy_logistic_grad=True, xy_scale_grad=True,
                   iou_normalizer="ignored", weight_box=0.05, weight_cls=0.5,
                   reduce_cls="positives"),
           unrevealed=NO_CLIP),
    Porter("own_anchors_mse_obj", "yolov4", v4.own_anchors_mse_obj,
           {"assign_best_in_mask": {}, "assign_no_extras": {}, **AUTOGRAD_CIOU, "averaging_none": {},
            "obj_mse": {}},
           Variant(assign="best_in_mask", extras="none", box_grad="autograd", ciou_alpha="detached",
                   xy_logistic_grad=True, xy_scale_grad=True, averaging="none",
                   obj_loss="mse"),
           unrevealed=NO_CLIP),

)


def porter_by_name(name: str) -> Porter:
    return next(p for p in PORTERS if p.name == name)


@lru_cache(maxsize=None)
def porter_cases(profile: str) -> tuple:
    """The dense generated cases every loss of ``profile`` is checked on (one per shape)."""
    config = case_from_spec(f"{profile}#0").config
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return tuple(random_case(seed, config, shape=shape, features=PROFILE_FEATURES[profile])
                     for seed, shape in enumerate(SHAPES))


def porter_delta(loss: Callable, case) -> np.ndarray:
    """-(d loss / d input) on ``case``: the loss's delta in darknet's sign, float32, the input's shape."""
    x = torch.tensor(case.input).requires_grad_(True)
    truth = torch.tensor(case.truth)
    loss(x, truth, case.config).backward()
    return (-x.grad).detach().numpy().astype(np.float32)


def variant_of(porter: Porter) -> Variant:
    """The documented set composed (equal to ``porter.variant``; checked by the tests)."""
    return compose(porter.documented)


