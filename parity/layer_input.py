"""Validation of what enters a [yolo] layer: shapes, dtypes, truths.

Every backend (the C reference, the libdarknet shim, the PyTorch port) calls
``check_layer_input`` first, so they all refuse the same inputs with the same
message, and the native code only ever sees sizes that fit its arrays.

Truth rows follow darknet: an image's rows are read up to the first whose x
is exactly 0 and at most ``max_boxes`` of them. Rows darknet would index the
grid with must have a finite centre in [0, 1): darknet itself indexes past
its row for x = 1.0 and logs a "Wrong label" outside [0, 1], so we refuse
those with an error instead of mirroring memory corruption.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .config import FLAVORS, PJREDDIE_TRUTH_BOXES as PJREDDIE_MAX_BOXES, YoloConfig
from .errors import InputError



@dataclass(frozen=True)
class LayerShape:
    """Sizes of one layer call, derived from the input tensor and config."""

    batch: int
    n: int
    classes: int
    h: int
    w: int


def check_flavor(flavor: str) -> str:
    if flavor not in FLAVORS:
        raise InputError(f"unknown flavor {flavor!r}: expected one of {', '.join(FLAVORS)}")
    return flavor


def check_config(config: YoloConfig, flavor: str) -> None:
    """Refuse a config the requested flavor cannot run.

    ``YoloConfig`` validates itself on construction; what is left is the
    flavor chosen at call time, which may differ from the config's own.
    """
    if not isinstance(config, YoloConfig):
        raise InputError(f"config must be a parity.config.YoloConfig, got {type(config).__name__}")
    check_flavor(flavor)
    if flavor == "pjreddie" and config.max_boxes > PJREDDIE_MAX_BOXES:
        raise InputError(
            f"config: max={config.max_boxes} > {PJREDDIE_MAX_BOXES} with the pjreddie flavor: its truth buffer "
            f"holds {PJREDDIE_MAX_BOXES} boxes per image, so darknet would read the next image's truths")


def _as_float32(name: str, array: object, ndim: int) -> np.ndarray:
    arr = np.asarray(array)
    if arr.dtype.kind != "f":
        raise InputError(f"{name}: dtype {arr.dtype} is not floating point (darknet works in float32)")
    if arr.ndim != ndim:
        raise InputError(f"{name}: expected {ndim} dimensions, got shape {tuple(arr.shape)}")
    return np.ascontiguousarray(arr, dtype=np.float32)


def active_rows(truth: np.ndarray, max_boxes: int) -> np.ndarray:
    """Boolean [batch, rows]: the rows darknet reads (before the first x == 0, within max)."""
    rows = truth.shape[1]
    limit = min(max_boxes, rows)
    x = truth[:, :limit, 0]
    zero_seen = np.cumsum(x == 0, axis=1) > 0
    active = np.zeros(truth.shape[:2], dtype=bool)
    active[:, :limit] = ~zero_seen
    return active


def check_layer_input(config: YoloConfig, input: object, truth: object,
                      flavor: str) -> tuple[np.ndarray, np.ndarray, LayerShape]:
    """Validated float32 copies of ``input`` [b, n*(5+c), h, w] and ``truth`` [b, rows, 5|6]."""
    check_config(config, flavor)
    x = _as_float32("input", input, 4)
    t = _as_float32("truth", truth, 3)
    b, ch, h, w = x.shape
    if b < 1 or h < 1 or w < 1:
        raise InputError(f"input: shape {tuple(x.shape)} has an empty batch or grid")
    if ch != config.channels:
        raise InputError(
            f"input: {ch} channels, but the [yolo] config needs n*(5+classes) = "
            f"{config.n}*(5+{config.classes}) = {config.channels} (darknet layout [batch, n*(5+classes), h, w])")
    if t.shape[0] != b:
        raise InputError(f"truth: batch {t.shape[0]} does not match the input's batch {b}")
    if t.shape[2] not in (5, 6):
        raise InputError(f"truth: {t.shape[2]} columns per box; expected 6 (x, y, w, h, class, track) or 5")
    _check_truth_rows(config, t, h, w, flavor)
    return x, t, LayerShape(batch=b, n=config.n, classes=config.classes, h=h, w=w)


def _check_truth_rows(config: YoloConfig, t: np.ndarray, h: int, w: int, flavor: str) -> None:
    active = active_rows(t, config.max_boxes)
    cls = t[..., 4]
    with np.errstate(invalid="ignore"):
        class_ok = np.isfinite(cls) & (cls > -2147483649.0) & (cls < 2147483648.0)
        class_ok &= (np.trunc(np.where(class_ok, cls, 0)) >= 0) & (np.trunc(np.where(class_ok, cls, 0)) < config.classes)
    if flavor == "pjreddie":
        bad = active & ~class_ok
        if bad.any():
            b, r = map(int, np.argwhere(bad)[0])
            raise InputError(
                f"truth[{b}, {r}]: class id {float(cls[b, r])!r} is outside [0, {config.classes}); pjreddie's darknet has "
                "no range check and would write outside the class block")
    used = active & class_ok
    xy = t[..., :2]
    with np.errstate(invalid="ignore", over="ignore"):
        inside = np.isfinite(xy).all(axis=-1) & (xy >= 0).all(axis=-1) & (xy < 1).all(axis=-1)
        # The cell is the float32 product truncated: x just below 1 can still round up to w.
        cell_x = np.where(inside, xy[..., 0], 0).astype(np.float32) * np.float32(w)
        cell_y = np.where(inside, xy[..., 1], 0).astype(np.float32) * np.float32(h)
        inside &= (np.trunc(cell_x) < w) & (np.trunc(cell_y) < h)
    bad = used & ~inside
    if bad.any():
        b, r = map(int, np.argwhere(bad)[0])
        raise InputError(
            f"truth[{b}, {r}]: centre (x={float(t[b, r, 0])!r}, y={float(t[b, r, 1])!r}) is outside [0, 1); darknet computes the "
            f"cell as (int)(x*{w}), (int)(y*{h}) and would index outside the grid (x = 1.0 corrupts memory in darknet)")
