"""A catalogue variant of darknet's [yolo] pass: the PyTorch port run with a ``Variant``.

Three kinds of switches, each implemented once:

* options a port ignores or replaces (``box_kind``, ``max_delta``,
  ``cls_multipliers``, ``objectness_smooth``, ``cls_focal``): darknet run
  with the option at the value the port effectively uses (``configured``);
* decisions and per-write formulas (ignore, assignment, box gradient,
  objectness target and focal loss, writers, averaging, class loss and
  smoothing, truth reading, non-finite guards): the port's own hooks
  (``yolo_forward(..., variant=...)``, the larger ones in ``parity.torch_variant``);
* factors on a finished term (the logistic's and ``scale_x_y``'s derivative
  in x, y, MSE objectness, a normalizer left out, reductions and weights):
  applied here to the port's delta, as the chain rule would (``rescale``).
  A port that leaves out ``iou_normalizer`` has the box term divided by it;
  darknet's clip at ``max_delta`` stays where darknet has it (after the
  normalizer), so a port that also never clips is a second deviation.

``Variant()`` gives darknet's run bit for bit. A rescaled run carries no
stats (darknet's cost describes darknet's delta, not the port's).
"""
from __future__ import annotations

import dataclasses

import numpy as np
import torch
from torch import Tensor

from ..config import FLT_MAX, YoloConfig
from ..result import LayerRun
from ..torch_layer import logistic, yolo_forward
from .variant import DARKNET, Variant

__all__ = ["configured", "rescale", "variant_forward", "reduction_quantity"]

# switches that only change an option's value (handled by ``configured``) or a finished term (``rescale``)
OPTION_SWITCHES = ("box_kind", "max_delta", "cls_multipliers", "objectness_smooth", "cls_focal")
RESCALE_SWITCHES = ("xy_logistic_grad", "xy_scale_grad", "obj_loss", "iou_normalizer", "obj_normalizer",
                    "reduce_box", "reduce_obj", "reduce_cls", "weight_box", "weight_obj", "weight_cls", "heads")


def configured(config: YoloConfig, variant: Variant) -> YoloConfig:
    """``config`` with the options the variant's port ignores or replaces set to what it uses.

    pjreddie's darknet reads none of these options (its configs must keep the
    defaults), so a pjreddie config is returned as it is.
    """
    if config.flavor != "alexeyab":
        return config
    changes: dict[str, object] = {}
    if variant.box_kind != "cfg":
        changes["iou_loss"] = variant.box_kind
    if variant.max_delta == "ignored":
        changes["max_delta"] = FLT_MAX
    if variant.cls_multipliers == "ignored":
        changes["counters_per_class"] = None
    if variant.objectness_smooth == "ignored":
        changes["objectness_smooth"] = 0
    if variant.cls_focal == "ignored":
        changes["focal_loss"] = 0
    return dataclasses.replace(config, **changes) if changes else config


def _hooked(variant: Variant) -> Variant | None:
    """The variant the port's hooks need to see (None when only options or factors change)."""
    neutral = {k: getattr(DARKNET, k) for k in OPTION_SWITCHES + RESCALE_SWITCHES}
    if variant.obj_loss == "focal":     # a hook (the delta's formula), not a factor: rescale applies only mse
        del neutral["obj_loss"]
    rest = dataclasses.replace(variant, **neutral)
    return None if rest.is_darknet else rest


def reduction_quantities(run: LayerRun, classes: int, heads: int = 1) -> dict[str, int]:
    """Every count a port may divide a term's sum by (a mean), for one run's decisions.

    batch; b*n*h*w slots; truth-anchor pairs written ("positives", as a loss
    summed per pair and divided by their number); distinct slots written
    ("positive_slots", as ``loss(pred[mask], target[mask])`` with a mean over
    an in-place target tensor); each times classes; heads. Counts of zero are 1.
    """
    B, _, H, W = run.delta.shape
    n = run.roles.shape[1]
    asg = run.decisions.assignments if run.decisions is not None else None
    pairs = len(asg) if asg is not None else 0
    slots = int(torch.unique(((asg.b * n + asg.a) * H + asg.j) * W + asg.i).numel()) if pairs else 0
    pairs, slots = max(1, pairs), max(1, slots)
    return {"sum": 1, "batch": B, "slots": B * n * H * W, "positives": pairs, "positives_classes": pairs * classes,
            "positive_slots": slots, "positive_slots_classes": slots * classes, "heads": heads}


def reduction_quantity(kind: str, run: LayerRun, variant: Variant, classes: int) -> int:
    """What a term's sum is divided by under ``variant``'s reduction ``kind``."""
    return reduction_quantities(run, classes, variant.heads)[kind]


def rescale(run: LayerRun, raw: Tensor, config: YoloConfig, variant: Variant, flavor: str) -> LayerRun:
    """The variant's factors applied to a finished delta: chain-rule factors, then reductions and weights."""
    if all(getattr(variant, k) == getattr(DARKNET, k) for k in RESCALE_SWITCHES):
        return run
    B, _, H, W = run.delta.shape
    n, E = config.n, 5 + config.classes
    delta = run.delta.clone().view(B, n, E, H, W)
    if variant.xy_logistic_grad or variant.xy_scale_grad:
        factor = torch.ones_like(delta[:, :, 0:2])
        if variant.xy_logistic_grad:
            raw_xy = raw.detach().to(delta.dtype).reshape(B, n, E, H, W)[:, :, 0:2]
            new_coords = flavor == "alexeyab" and bool(config.new_coords)
            s = raw_xy if new_coords else logistic(raw_xy, flavor)   # new_coords: the input is already a logistic
            factor = factor * s * (1 - s)
        if variant.xy_scale_grad and flavor == "alexeyab":
            factor = factor * float(np.float32(config.scale_x_y))
        delta[:, :, 0:2] = delta[:, :, 0:2] * factor
    if variant.obj_loss == "mse":
        p = run.output.view(B, n, E, H, W)[:, :, 4]
        delta[:, :, 4] = delta[:, :, 4] * (p * (1 - p))
    alexeyab = flavor == "alexeyab"     # pjreddie has no normalizers to leave out
    box_norm = float(np.float32(config.iou_normalizer)) if alexeyab and variant.iou_normalizer == "ignored" else 1.0
    obj_norm = float(np.float32(config.obj_normalizer)) if alexeyab and variant.obj_normalizer == "ignored" else 1.0
    for rows, kind, weight, norm in ((slice(0, 4), variant.reduce_box, variant.weight_box, box_norm),
                                     (slice(4, 5), variant.reduce_obj, variant.weight_obj, obj_norm),
                                     (slice(5, None), variant.reduce_cls, variant.weight_cls, 1.0)):
        if kind != "sum" or weight != 1.0 or norm != 1.0:
            quantity = reduction_quantity(kind, run, variant, config.classes) * norm
            delta[:, :, rows] = delta[:, :, rows] * (weight / quantity)
    return LayerRun(run.output, delta.view(run.delta.shape), None, run.roles, run.decisions, dict(run.branches),
                    backend="variant")


def variant_forward(input: Tensor, truth: Tensor, config: YoloConfig, variant: Variant | None = None,
                    flavor: str | None = None, **kwargs: object) -> LayerRun:
    """darknet's [yolo] pass with ``variant``'s switches changed (None or ``Variant()``: darknet exactly).

    ``kwargs`` go to ``parity.torch_layer.yolo_forward`` (backward, loss_scale, dtype).
    """
    variant = variant or DARKNET
    flavor = flavor or config.flavor
    cfg = configured(config, variant)
    run = yolo_forward(input, truth, cfg, flavor, variant=_hooked(variant), **kwargs)  # type: ignore[arg-type]
    return rescale(run, input, cfg, variant, flavor)
