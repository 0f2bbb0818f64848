"""``YoloConfig``: the one description of a [yolo] layer, and its invariants.

Every part of the project (C reference, libdarknet shim, PyTorch port)
consumes a ``YoloConfig``. Values are held exactly as darknet holds them
after parsing: floats are rounded to float32 by the consumers, defaults are
darknet's own (they differ between flavors). Construction validates: a mask
index outside ``0..num-1``, anchors not ``2*num`` positive numbers, unknown
``iou_loss``/``iou_thresh_kind``, ``truth_thresh < 0``, a pjreddie config
setting an option pjreddie never reads, ... raise ``YoloFieldError`` (a
``ConfigError`` naming the cfg option to blame).

Reading cfg text is ``parity.cfg`` (``load_cfg``, ``parse_cfg``,
``dump_yolo_cfg``), which builds on this module; this module imports nothing
from it.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import ConfigError, InputError

FLT_MAX = float(np.finfo(np.float32).max)

FLAVORS = ("alexeyab", "pjreddie")
IOU_KINDS = ("mse", "iou", "giou", "diou", "ciou")
THRESH_KINDS = ("iou", "giou", "diou", "ciou")

# pjreddie's yolo layer sizes its truth buffer for 90 boxes per image
# (``l.truths = 90*(4 + 1)``) whatever ``max`` says.
BACKWARDS = ("cpu", "gpu")   # which darknet backward a delta stands for (backward_scale)
PJREDDIE_TRUTH_BOXES = 90
ALEXEYAB_MAX_BOXES = 200


class ConfigWarning(UserWarning):
    """Something darknet accepts with only a message on stderr."""


@dataclass(frozen=True)
class YoloConfig:
    """One [yolo] section plus the [net] fields it reads (darknet's names).

    ``num`` is darknet's ``total`` (anchors listed); ``mask`` selects this
    layer's anchors, so the layer has ``n = len(mask)`` anchors per cell.
    Options a flavor does not read keep their neutral defaults there.

    For ``flavor="pjreddie"`` the fields pjreddie's ``parse_yolo`` never reads
    (``iou_loss``, the normalizers, ``scale_x_y``, ``max_delta``, ...) must
    stay at the defaults below; the pjreddie reference ignores them, so their
    values are meaningless there and are pinned only so that equal pjreddie
    layers compare equal. ``max_boxes`` left unset takes the flavor's own
    default: 200 (AlexeyAB) or 90 (pjreddie).
    Construction validates (``ConfigError``), so ``replace`` re-validates.
    """

    classes: int = 20
    num: int = 1
    mask: tuple[int, ...] = (0,)
    anchors: tuple[float, ...] = (0.5, 0.5)
    max_boxes: int = None  # type: ignore[assignment]  # None: the flavor's default (200 or 90)
    ignore_thresh: float = 0.5
    truth_thresh: float = 1.0
    iou_thresh: float = 1.0
    iou_thresh_kind: str = "iou"
    iou_loss: str = "mse"
    iou_normalizer: float = 0.75
    obj_normalizer: float = 1.0
    cls_normalizer: float = 1.0
    delta_normalizer: float = 1.0
    scale_x_y: float = 1.0
    new_coords: int = 0
    objectness_smooth: int = 0
    label_smooth_eps: float = 0.0
    focal_loss: int = 0
    max_delta: float = FLT_MAX
    counters_per_class: tuple[int, ...] | None = None
    # map=: darknet's read_map, one class id per line; truth class c is written as class_map[c]
    class_map: tuple[int, ...] | None = None
    show_details: int = 1
    net_w: int = 416
    net_h: int = 416
    batch: int = 1
    flavor: str = "alexeyab"
    # Options darknet reads that do not change the training forward pass
    # (jitter, random, nms_kind, ...), kept verbatim for round-tripping.
    extra: Mapping[str, str] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        for name in ("mask", "anchors", "counters_per_class", "class_map"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, tuple):
                object.__setattr__(self, name, tuple(value))
        object.__setattr__(self, "extra", dict(self.extra))
        if self.max_boxes is None:
            default = PJREDDIE_TRUTH_BOXES if self.flavor == "pjreddie" else ALEXEYAB_MAX_BOXES
            object.__setattr__(self, "max_boxes", default)
        problem = _yolo_problem(self)
        if problem is not None:
            raise YoloFieldError(*problem)

    @classmethod
    def for_flavor(cls, flavor: str, **changes: Any) -> YoloConfig:
        """The defaults darknet of ``flavor`` gives an empty [yolo], with ``changes``."""
        return cls(flavor=flavor, **changes)

    @property
    def n(self) -> int:
        """Anchors per cell in this layer (darknet's ``l.n``)."""
        return len(self.mask)

    @property
    def channels(self) -> int:
        """Channels of the tensor entering the layer: ``n * (5 + classes)``."""
        return self.n * (5 + self.classes)

    def classes_multipliers(self) -> np.ndarray | None:
        """Per-class multipliers from ``counters_per_class``, as darknet computes them.

        ``max(counter) / counter`` in float32 (counters below 1 count as 1),
        clipped at ``max_delta``; ``None`` when the option is absent.
        """
        if self.counters_per_class is None:
            return None
        counters = np.maximum(np.asarray(self.counters_per_class, dtype=np.int64), 1)
        top = np.float32(counters.max())
        mult = (top / counters.astype(np.float32)).astype(np.float32)
        return np.minimum(mult, np.float32(self.max_delta)).astype(np.float32)

    def replace(self, **changes: Any) -> YoloConfig:
        """A copy with some fields changed (dataclasses.replace, re-validated)."""
        return dataclasses.replace(self, **changes)


class YoloFieldError(ConfigError):
    """A ``YoloConfig`` invariant broken; ``option`` is the cfg option to blame, ``bare`` the message alone."""

    def __init__(self, option: str, message: str) -> None:
        super().__init__(message, option=option)
        self.bare = message


# cfg option name of each YoloConfig field whose name differs.
_FIELD_OPTION = {"max_boxes": "max", "net_w": "width", "net_h": "height"}
_DEFAULTS = YoloConfig.__dataclass_fields__
# Fields pjreddie's parse_yolo never reads: pinned to the class defaults.
_AB_ONLY_FIELDS = (
    "iou_thresh", "iou_thresh_kind", "iou_loss", "iou_normalizer", "obj_normalizer",
    "cls_normalizer", "delta_normalizer", "scale_x_y", "new_coords", "objectness_smooth",
    "label_smooth_eps", "focal_loss", "max_delta", "counters_per_class", "show_details",
)
_FINITE_FIELDS = (
    "ignore_thresh", "truth_thresh", "iou_thresh", "iou_normalizer", "obj_normalizer",
    "cls_normalizer", "delta_normalizer", "scale_x_y", "label_smooth_eps",
)


def _yolo_problem(c: YoloConfig) -> tuple[str, str] | None:
    """The first broken invariant as ``(cfg option, message)``, or None."""
    return next(_yolo_problems(c), None)


def _yolo_problems(c: YoloConfig) -> Iterator[tuple[str, str]]:
    if c.flavor not in FLAVORS:
        yield "flavor", f"unknown flavor {c.flavor!r}; expected one of {', '.join(FLAVORS)}"
        return
    if c.classes < 1:
        yield "classes", f"classes={c.classes}: a [yolo] layer needs at least one class"
    if c.num < 1:
        yield "num", f"num={c.num}: a [yolo] layer needs at least one anchor"
        return
    if not c.mask:
        yield "mask", "mask is empty"
    for m in c.mask:
        if not 0 <= m < c.num:
            yield "mask", (f"mask index {m} is outside 0..{c.num - 1} (num={c.num}); "
                           "darknet would read anchors past the end of its list")
    if len(c.anchors) != 2 * c.num:
        yield "anchors", (f"{len(c.anchors)} anchor values for num={c.num}; "
                          f"expected {2 * c.num} (w,h per anchor)")
    for a in c.anchors:
        if not (math.isfinite(a) and a > 0):
            yield "anchors", f"anchor value {a!r} must be a positive finite number"
    yield from _limit_problems(c)
    yield from _float_problems(c)
    if c.counters_per_class is not None and len(c.counters_per_class) != c.classes:
        yield "counters_per_class", (f"{len(c.counters_per_class)} values in "
                                     f"counters_per_class but classes={c.classes}")
    for name in ("net_w", "net_h", "batch"):
        if getattr(c, name) < 1:
            yield _FIELD_OPTION.get(name, name), f"{name}={getattr(c, name)} must be >= 1"
    if c.flavor == "pjreddie":
        yield from _pjreddie_problems(c)


def _limit_problems(c: YoloConfig) -> Iterator[tuple[str, str]]:
    if c.class_map is not None:
        if len(c.class_map) < c.classes:
            yield "map", (f"{len(c.class_map)} map entries for classes={c.classes}: darknet reads "
                          f"map[class_id] past its array")
        for k, v in enumerate(c.class_map[: c.classes]):
            if not 0 <= v < c.classes:
                yield "map", (f"map entry {k} is {v}, outside [0, {c.classes}): darknet writes the "
                              f"class delta out of bounds")
                break
    if c.max_boxes < 1:
        yield "max", f"max={c.max_boxes}: darknet would read no truth boxes at all"
    if c.iou_loss not in IOU_KINDS:
        yield "iou_loss", (f"unknown iou_loss {c.iou_loss!r} (darknet would silently use "
                           f"iou); expected one of {', '.join(IOU_KINDS)}")
    if c.iou_thresh_kind not in THRESH_KINDS:
        yield "iou_thresh_kind", (f"unknown iou_thresh_kind {c.iou_thresh_kind!r} (darknet "
                                  f"would silently use iou); expected one of "
                                  f"{', '.join(THRESH_KINDS)}")


def _float_problems(c: YoloConfig) -> Iterator[tuple[str, str]]:
    for name in _FINITE_FIELDS:
        if not math.isfinite(getattr(c, name)):
            yield name, f"{name}={getattr(c, name)!r} must be finite"
    if math.isnan(c.max_delta) or c.max_delta < 0:
        yield "max_delta", (f"max_delta={c.max_delta!r} must be >= 0 "
                            "(deltas are clipped to ±max_delta)")
    if c.truth_thresh < 0:
        # best_iou starts at 0, so every cell would pass the test and be
        # trained towards truth 0 -- an all-zero box when the image has none.
        yield "truth_thresh", f"truth_thresh={c.truth_thresh!r} must be >= 0"


def _pjreddie_problems(c: YoloConfig) -> Iterator[tuple[str, str]]:
    if c.max_boxes > PJREDDIE_TRUTH_BOXES:
        yield "max", (f"max={c.max_boxes} exceeds {PJREDDIE_TRUTH_BOXES}: pjreddie darknet "
                      f"keeps {PJREDDIE_TRUTH_BOXES} truth boxes per image, so it would read "
                      "the next image's truths")
    for name in _AB_ONLY_FIELDS:
        if getattr(c, name) != _DEFAULTS[name].default:
            yield name, (f"{name}={getattr(c, name)!r}: pjreddie darknet does not read this "
                         f"option; it must keep its default {_DEFAULTS[name].default!r}")


# --------------------------------------------------------------------------


def backward_scale(config: YoloConfig, flavor: str, backward: str = "cpu", loss_scale: float = 1.0) -> float | None:
    """The factor darknet's backward applies to the layer's delta before adding it to the previous layer's.

    "cpu" (the default: darknet's CPU semantics, ``backward_yolo_layer``):
    none, the delta is added as is (returns None). "gpu"
    (``backward_yolo_layer_gpu``): AlexeyAB adds ``delta * (loss_scale *
    delta_normalizer)``, the factor a float32 product of the [net] option
    ``loss_scale`` (default 1) and the layer's ``delta_normalizer``; pjreddie's
    GPU backward adds the delta unscaled (it reads neither option).
    """
    if backward not in BACKWARDS:
        raise InputError(f"backward {backward!r}: expected one of {', '.join(BACKWARDS)}")
    if not math.isfinite(float(loss_scale)):
        raise InputError(f"loss_scale {loss_scale!r}: darknet's [net] loss_scale must be a finite number")
    if backward == "cpu":
        return None
    if flavor == "pjreddie":
        if float(loss_scale) != 1.0:
            raise InputError(f"loss_scale={loss_scale:g}: pjreddie darknet has no loss_scale (its GPU backward "
                             "adds the delta unscaled)")
        return None
    return float(np.float32(loss_scale) * np.float32(config.delta_normalizer))
