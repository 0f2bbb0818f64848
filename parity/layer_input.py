"""Validation of what enters a [yolo] layer: shapes, dtypes, truths.

Every backend (the C reference, the libdarknet shim, the PyTorch port) calls
``check_layer_input`` first, so they all refuse the same inputs with the same
message, and the native code only ever sees sizes that fit its arrays.

Truth rows follow darknet: an image's rows are read up to the first whose x
is exactly 0 and at most ``max_boxes`` of them. Rows darknet would index the
grid with must have a finite centre in [0, 1): darknet itself indexes past
its row for x = 1.0 and logs a "Wrong label" outside [0, 1], so we refuse
those with an error instead of mirroring memory corruption.

Input darknet accepts but reads its own way is mirrored, with one
``DarknetInputWarning`` per call naming what darknet will do: class ids
outside [0, classes) (AlexeyAB skips the row), non-integer class ids (the
cast truncates), an ``x == 0`` row with boxes after it (it ends the image's
list), more boxes than ``max`` (darknet reads the first ``max``), and negative
or non-finite box sizes (used as they are).
"""
from __future__ import annotations

import os
import sys
import threading
import warnings
import weakref
from dataclasses import dataclass

import numpy as np

from .config import FLAVORS, PJREDDIE_TRUTH_BOXES as PJREDDIE_MAX_BOXES, YoloConfig
from .errors import DarknetInputWarning, InputError

# The truth array check_layer_input last returned, per thread: a backend that
# re-validates what run_reference already validated (the libdarknet one) does
# not warn a second time for the same call.
_LAST = threading.local()


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
    x = _as_float32("input", input, 4)
    t = _as_float32("truth", truth, 3)
    shape = check_layer_shapes(config, tuple(x.shape), t, flavor)
    last = getattr(_LAST, "truth", None)
    if last is None or last() is not truth:
        notes = truth_notes(config, t, flavor)
        if notes:
            warn_darknet_input("; ".join(notes))
    if t is truth:
        t = t.copy()  # a fresh array: only a re-validation of our own result is recognised above
    _LAST.truth = weakref.ref(t)
    return x, t, shape


def check_layer_shapes(config: YoloConfig, input_shape: tuple[int, ...], t: np.ndarray,
                       flavor: str) -> LayerShape:
    """The checks that need only the input's shape and the (small) float32 truth array.

    Backends whose input lives elsewhere (a GPU tensor) validate through this
    without copying the input.
    """
    check_config(config, flavor)
    if len(input_shape) != 4:
        raise InputError(f"input: expected 4 dimensions, got shape {input_shape} "
                         "(darknet layout [batch, n*(5+classes), h, w])")
    if t.ndim != 3:
        raise InputError(f"truth: expected 3 dimensions, got shape {tuple(t.shape)} ([batch, rows, 6])")
    b, ch, h, w = input_shape
    if b < 1 or h < 1 or w < 1:
        raise InputError(f"input: shape {input_shape} has an empty batch or grid")
    if ch != config.channels:
        raise InputError(
            f"input: {ch} channels, but the [yolo] config needs n*(5+classes) = "
            f"{config.n}*(5+{config.classes}) = {config.channels} (darknet layout [batch, n*(5+classes), h, w])")
    if t.shape[0] != b:
        raise InputError(f"truth: batch {t.shape[0]} does not match the input's batch {b}")
    if t.shape[2] not in (5, 6):
        raise InputError(f"truth: {t.shape[2]} columns per box; expected 6 (x, y, w, h, class, track) or 5")
    _check_truth_rows(config, t, h, w, flavor)
    return LayerShape(batch=b, n=config.n, classes=config.classes, h=h, w=w)


def _fmt(value: float) -> str:
    """A float32 value as darknet holds it, shortest form: 85, 1.7, nan."""
    value = float(value)
    return str(int(value)) if value.is_integer() and abs(value) < 2 ** 53 else str(np.float32(value))


def _more(count: int, what: str) -> str:
    """" (N more such rows)"; ``what`` is the plural, made singular for one."""
    if count <= 0:
        return ""
    return f" ({count} more {what if count != 1 else what.replace('rows', 'row').replace('images', 'image')})"


def truth_notes(config: YoloConfig, truth: np.ndarray, flavor: str) -> list[str]:
    """What darknet does with truth rows it reads differently from how they look (one line each).

    ``truth`` is a validated float32 ``[batch, rows, 5|6]`` (see ``check_layer_input``);
    the rows that must be refused have been refused already.
    """
    notes: list[str] = []
    t = truth
    if t.size == 0:
        return notes
    rows, limit = t.shape[1], min(config.max_boxes, t.shape[1])
    active = active_rows(t, config.max_boxes)
    cls = t[..., 4]
    with np.errstate(invalid="ignore"):
        finite = np.isfinite(cls)
        whole = np.where(finite, np.trunc(np.where(finite, cls, 0)), np.nan)
        in_range = finite & (whole >= 0) & (whole < config.classes)
    if flavor == "alexeyab":
        bad = np.argwhere(active & ~in_range)
        if len(bad):
            b, r = map(int, bad[0])
            why = " (C's cast of NaN gives INT_MIN on x86)" if not finite[b, r] else ""
            notes.append(f"truth[{b}, {r}]: class id {_fmt(cls[b, r])} is outside [0, {config.classes}): "
                         f"darknet skips this row{why}{_more(len(bad) - 1, 'such rows')}")
    used = active & in_range
    fractional = np.argwhere(used & (cls != whole))
    if len(fractional):
        b, r = map(int, fractional[0])
        notes.append(f"truth[{b}, {r}]: class id {_fmt(cls[b, r])} is not an integer: darknet truncates it "
                     f"to class {int(whole[b, r])}{_more(len(fractional) - 1, 'such rows')}")
    with np.errstate(invalid="ignore"):
        size = t[..., 2:4]
        odd_size = used & ~(np.isfinite(size) & (size >= 0)).all(axis=-1)
    odd = np.argwhere(odd_size)
    if len(odd):
        b, r = map(int, odd[0])
        notes.append(f"truth[{b}, {r}]: box size w={_fmt(t[b, r, 2])}, h={_fmt(t[b, r, 3])} is negative or not "
                     f"finite: darknet uses it as it is (AlexeyAB also logs a 'Wrong label')"
                     f"{_more(len(odd) - 1, 'such rows')}")
    zero = t[:, :limit, 0] == 0
    nonempty = (t != 0).any(axis=-1)   # NaN counts as set
    ended: list[str] = []
    over: list[str] = []
    for b in range(t.shape[0]):
        stops = np.flatnonzero(zero[b])
        if len(stops):
            z = int(stops[0])
            after = int(nonempty[b, z + 1:].sum())
            itself = bool(nonempty[b, z])
            if after or itself:
                what = []
                if itself:
                    what.append("this row (x = 0 with other values set)")
                if after:
                    what.append(f"{after} row{'s' if after != 1 else ''} after it")
                verb = "is" if after + itself == 1 else "are"
                ended.append(f"truth[{b}, {z}]: x == 0 ends image {b}'s boxes: {' and '.join(what)} {verb} ignored")
        elif rows > limit:
            all_zero = np.flatnonzero(t[b, :, 0] == 0)
            boxes = int(all_zero[0]) if len(all_zero) else rows
            if boxes > limit:
                over.append(f"image {b} has {boxes} boxes; darknet reads the first max={config.max_boxes}")
    for found, what in ((ended, "images"), (over, "images")):
        if found:
            notes.append(found[0] + _more(len(found) - 1, what))
    return notes


def warn_darknet_input(message: str) -> None:
    """A ``DarknetInputWarning`` attributed to the first caller outside this package."""
    package = os.path.dirname(os.path.abspath(__file__))
    frame = sys._getframe(1)
    level = 2
    while frame is not None and os.path.dirname(os.path.abspath(frame.f_code.co_filename)) == package:
        frame, level = frame.f_back, level + 1
    warnings.warn(message, DarknetInputWarning, stacklevel=level)


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
            f"truth[{b}, {r}]: centre (x={_fmt(t[b, r, 0])}, y={_fmt(t[b, r, 1])}) is outside [0, 1); darknet computes the "
            f"cell as (int)(x*{w}), (int)(y*{h}) and would index outside the grid (x = 1.0 corrupts memory in darknet)")
