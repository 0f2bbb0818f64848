"""The layer struct both C backends read: filling ``yref_config`` from a ``YoloConfig``.

The C reference (``yref_forward``) and the libdarknet shim (``dps_forward``)
take the same ``yref_config`` struct (``darknet_ref/yolo_ref.h``); this is
the one place that maps a ``YoloConfig`` onto it.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ..config import YoloConfig

FLAVOR_CODES = {"alexeyab": 0, "pjreddie": 1}
LOSS_CODES = {"mse": 0, "iou": 1, "giou": 2, "diou": 3, "ciou": 4}


def fill_layer_struct(ffi: Any, c: Any, config: YoloConfig, flavor: str, shape: Any, truth: np.ndarray,
                      keep: list[Any]) -> None:
    """Set the layer fields shared by the C reference's and the shim's config structs.

    ``keep`` receives the arrays the struct points into, to keep them alive.
    """
    mask = np.ascontiguousarray(config.mask, dtype=np.int32)
    biases = np.ascontiguousarray(config.anchors[: 2 * config.num], dtype=np.float32)
    mult = config.classes_multipliers() if flavor == "alexeyab" else None
    keep.extend([mask, biases, mult])
    c.batch, c.w, c.h = shape.batch, shape.w, shape.h
    c.n, c.total, c.classes = config.n, config.num, config.classes
    c.max_boxes = config.max_boxes
    c.truth_rows, c.truth_cols = truth.shape[1], truth.shape[2]
    c.net_w, c.net_h = config.net_w, config.net_h
    c.mask = ffi.from_buffer("int[]", mask)
    c.biases = ffi.from_buffer("float[]", biases)
    c.classes_multipliers = ffi.from_buffer("float[]", mult) if mult is not None else ffi.NULL
    c.ignore_thresh, c.truth_thresh, c.iou_thresh = config.ignore_thresh, config.truth_thresh, config.iou_thresh
    c.iou_thresh_kind = LOSS_CODES[config.iou_thresh_kind]
    c.iou_loss = LOSS_CODES[config.iou_loss] if flavor == "alexeyab" else 0
    c.iou_normalizer, c.obj_normalizer, c.cls_normalizer = (
        config.iou_normalizer, config.obj_normalizer, config.cls_normalizer)
    c.scale_x_y = config.scale_x_y
    c.new_coords, c.objectness_smooth = config.new_coords, config.objectness_smooth
    c.focal_loss, c.show_details = config.focal_loss, config.show_details
    c.label_smooth_eps, c.max_delta = config.label_smooth_eps, config.max_delta
    class_map = (np.ascontiguousarray(config.class_map[: config.classes], dtype=np.int32)
                 if config.class_map is not None else None)
    keep.append(class_map)
    c.class_map = ffi.from_buffer("int[]", class_map) if class_map is not None else ffi.NULL


def new_layer_struct(ffi: Any, config: YoloConfig, flavor: str, shape: Any, truth: np.ndarray,
                     keep: list[Any]) -> Any:
    """A new ``yref_config *`` for ``flavor``, filled by ``fill_layer_struct``."""
    c = ffi.new("yref_config *")
    c.flavor = FLAVOR_CODES[flavor]
    fill_layer_struct(ffi, c, config, flavor, shape, truth, keep)
    return c
