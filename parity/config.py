"""Darknet cfg parsing: the [net] and [yolo] options that shape a training forward pass.

``YoloConfig`` is the one description of a [yolo] layer that every part of the
project (C reference, libdarknet shim, PyTorch port) consumes. Values are held
exactly as darknet holds them after parsing: floats are rounded to float32 by
the consumers, defaults are darknet's own (they differ between flavors).

Reading follows darknet's ``read_cfg``/``read_option``/``option_find``: lines
are split on LF only, every space, tab, CR and LF is removed from a line, blank
lines and lines starting with ``#`` or ``;`` are skipped, ``[`` opens a
section, anything else is ``key=value`` split at the first ``=``, and the
*first* of repeated keys is the one darknet reads. Numbers follow C's
``atoi``/``atof`` (a leading numeric prefix: ``80#coco`` reads as 80).

Departures from darknet, all refusing input that darknet would silently
misread (each raises ``ConfigError`` naming file, line and option):

* a numeric option with no leading number at all (``classes=abc``; darknet
  reads 0), an integer outside int32, or NaN (and infinity except for
  ``max_delta``);
* a line with no ``=`` (darknet stores the key with no value, which then
  hides any later line setting the same key) or with nothing after ``=``
  (darknet prints "Config file error" and drops the line), or no key;
* unknown ``iou_loss``/``iou_thresh_kind`` (darknet falls back to IOU),
  ``map=`` (class remapping, which this project does not model), a mask
  index outside ``0..num-1``, fewer anchors than ``2*num`` (more: AlexeyAB
  reads the first ``2*num``, pjreddie overflows), ``truth_thresh < 0``, and
  the other invariants ``YoloConfig`` checks on construction.

Like darknet, a [yolo] whose input channels are not ``n*(5+classes)`` is an
error; so is one whose grid depends on a layer that cannot be sized (see
``parity.cfg_walk``).

Unknown options and section types only warn (``ConfigWarning``), as darknet
only prints "Unused field" / "Type not recognized".
"""
from __future__ import annotations

import dataclasses
import math
import os
import re
import sys
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

import numpy as np

from .errors import ConfigError

FLT_MAX = float(np.finfo(np.float32).max)

FLAVORS = ("alexeyab", "pjreddie")
IOU_KINDS = ("mse", "iou", "giou", "diou", "ciou")
THRESH_KINDS = ("iou", "giou", "diou", "ciou")

# pjreddie's yolo layer sizes its truth buffer for 90 boxes per image
# (``l.truths = 90*(4 + 1)``) whatever ``max`` says.
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
    show_details: int = 1
    net_w: int = 416
    net_h: int = 416
    batch: int = 1
    flavor: str = "alexeyab"
    # Options darknet reads that do not change the training forward pass
    # (jitter, random, nms_kind, ...), kept verbatim for round-tripping.
    extra: Mapping[str, str] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        for name in ("mask", "anchors", "counters_per_class"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, tuple):
                object.__setattr__(self, name, tuple(value))
        object.__setattr__(self, "extra", dict(self.extra))
        if self.max_boxes is None:
            default = PJREDDIE_TRUTH_BOXES if self.flavor == "pjreddie" else ALEXEYAB_MAX_BOXES
            object.__setattr__(self, "max_boxes", default)
        problem = _yolo_problem(self)
        if problem is not None:
            raise _FieldError(*problem)

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


class _FieldError(ConfigError):
    """A ``YoloConfig`` invariant broken; ``option`` is the cfg option to blame."""

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
# C number parsing


_C_SPACE = " \t\n\v\f\r"
_INT_RE = re.compile(r"[+-]?[0-9]+")
_FLOAT_RE = re.compile(
    r"""[+-]?(?:
        0x(?P<hex>[0-9a-f]+\.?[0-9a-f]*|\.[0-9a-f]+)(?P<bexp>p[+-]?[0-9]+)?
      | (?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:e[+-]?[0-9]+)?
      | inf(?:inity)?
      | nan(?:\([0-9a-z_]*\))?
    )""", re.X | re.I)
INT32_MIN, INT32_MAX = -(2 ** 31), 2 ** 31 - 1


def c_atoi(text: str) -> int | None:
    """C ``atoi``: the integer prefix of ``text``; None where there is none (atoi gives 0)."""
    m = _INT_RE.match(text.lstrip(_C_SPACE))
    return int(m.group()) if m else None


def c_atof(text: str) -> float | None:
    """C ``atof`` (strtod): the float prefix (decimal, hex, inf, nan); None where none."""
    m = _FLOAT_RE.match(text.lstrip(_C_SPACE))
    if not m:
        return None
    token = m.group()
    if m.group("hex") is not None:
        sign = -1.0 if token.startswith("-") else 1.0
        return sign * float.fromhex(token.lstrip("+-"))
    if "(" in token:  # nan(chars)
        token = token[:token.index("(")]
    return float(token)


def split_darknet_list(value: str, *, stop_at_hash: bool) -> list[str]:
    """The pieces darknet's list readers hand to atoi/atof.

    Darknet counts ``1 + commas`` (AlexeyAB stops counting at the first
    ``#`` in mask/anchors/counters_per_class; pjreddie and the route readers
    do not) and then reads that many comma-separated pieces, so a trailing
    comma yields one more piece, read as 0.
    """
    counted = value.split("#", 1)[0] if stop_at_hash else value
    return value.split(",")[: counted.count(",") + 1]


# --------------------------------------------------------------------------
# Sections


@dataclass(frozen=True)
class Option:
    """One ``key=value`` line, after darknet's whitespace stripping."""

    key: str
    value: str
    line: int


# Darknet's section headers (AlexeyAB's string_to_layer_type) -> canonical type.
SECTION_TYPES = {
    "[net]": "net", "[network]": "net",
    "[conv]": "convolutional", "[convolutional]": "convolutional",
    "[max]": "maxpool", "[maxpool]": "maxpool",
    "[avg]": "avgpool", "[avgpool]": "avgpool",
    "[local_avg]": "local_avgpool", "[local_avgpool]": "local_avgpool",
    "[conn]": "connected", "[connected]": "connected",
    "[soft]": "softmax", "[softmax]": "softmax",
    "[lrn]": "normalization", "[normalization]": "normalization",
    "[empty]": "empty", "[silence]": "empty",
    "[reorg3d]": "reorg3d", "[reorg]": "reorg",
    "[Gaussian_yolo]": "Gaussian_yolo",
}
for _name in ("shortcut", "scale_channels", "sam", "crop", "cost", "detection", "region",
              "yolo", "local", "activation", "crnn", "gru", "lstm", "conv_lstm", "history",
              "rnn", "dropout", "batchnorm", "contrastive", "route", "upsample", "implicit"):
    SECTION_TYPES[f"[{_name}]"] = _name


@dataclass(frozen=True)
class Section:
    """One ``[type]`` block: darknet's header text, its canonical type, its options.

    ``type`` is the canonical layer type (``[conv]`` -> ``convolutional``) or,
    for a header darknet does not recognise, the header itself. The typed
    getters mirror ``option_find_*``: the first occurrence of a key wins.
    """

    header: str
    line: int
    options: tuple[Option, ...]
    path: str | None = field(default=None, compare=False, repr=False)

    @property
    def type(self) -> str:
        return SECTION_TYPES.get(self.header, self.header)

    @property
    def recognized(self) -> bool:
        return self.header in SECTION_TYPES

    def find(self, key: str) -> Option | None:
        """The option darknet's ``option_find`` returns: the first with this key."""
        return next((o for o in self.options if o.key == key), None)

    def line_of(self, key: str) -> int:
        """Line of option ``key``, or of the section header where it is absent."""
        opt = self.find(key)
        return opt.line if opt else self.line

    def error(self, key: str | None, message: str) -> ConfigError:
        """A ConfigError at option ``key`` (or at the header) of this section."""
        line = self.line_of(key) if key else self.line
        return ConfigError(message, path=self.path, line=line, option=key)

    def get_str(self, key: str, default: str | None = None) -> str | None:
        opt = self.find(key)
        return opt.value if opt else default

    def get_int(self, key: str, default: int) -> int:
        opt = self.find(key)
        return default if opt is None else self.parse_int(opt)

    def get_float(self, key: str, default: float) -> float:
        opt = self.find(key)
        return default if opt is None else self.parse_float(opt)

    def parse_int(self, opt: Option, text: str | None = None) -> int:
        """atoi of ``text`` (default the option's value); no number at all is an error."""
        text = opt.value if text is None else text
        value = c_atoi(text)
        if value is None:
            raise self.error(opt.key, f"expected an integer, got {text!r} (darknet's atoi reads 0)")
        if not INT32_MIN <= value <= INT32_MAX:
            raise self.error(opt.key, f"{value} does not fit darknet's 32-bit int")
        return value

    def parse_float(self, opt: Option, text: str | None = None) -> float:
        """atof of ``text`` (default the option's value); no number or NaN is an error."""
        text = opt.value if text is None else text
        value = c_atof(text)
        if value is None:
            raise self.error(opt.key, f"expected a number, got {text!r} (darknet's atof reads 0)")
        if math.isnan(value):
            raise self.error(opt.key, f"{text!r} is NaN")
        return value


def _dir_of(filename: str) -> str:
    return os.path.dirname(os.path.abspath(filename))


def _warn(path: str | None, line: int, message: str) -> None:
    """Warn at ``path:line``, attributed to the first caller outside this package."""
    where = f"{path}:line {line}" if path is not None else f"line {line}"
    package = _dir_of(__file__)
    frame: FrameType | None = sys._getframe(1)
    level = 2
    while frame is not None and _dir_of(frame.f_code.co_filename) == package:
        frame, level = frame.f_back, level + 1
    warnings.warn(f"{where}: {message}", ConfigWarning, stacklevel=level)


def read_sections(text: str, path: str | None = None) -> list[Section]:
    """Split cfg text into sections the way darknet's ``read_cfg`` does (see module doc)."""
    if text.startswith("\ufeff"):
        raise ConfigError("file starts with a UTF-8 byte-order mark; darknet would read it "
                          "as part of the first line and crash", path=path, line=1)
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # fgets sees no line after the final newline
    sections: list[tuple[str, int, list[Option]]] = []
    for number, raw in enumerate(lines, start=1):
        if "\0" in raw:
            raise ConfigError("NUL byte in line", path=path, line=number)
        stripped = "".join(ch for ch in raw if ch not in " \t\r\n")
        if not stripped or stripped[0] in "#;":
            continue
        if stripped[0] == "[":
            sections.append((stripped, number, []))
            continue
        if not sections:
            raise ConfigError(f"option line {stripped!r} before any [section] (darknet "
                              "would crash)", path=path, line=number)
        sections[-1][2].append(_read_option(stripped, number, path))
    result = [Section(h, n, tuple(opts), path) for h, n, opts in sections]
    for section in result:
        _warn_duplicates(section)
    return result


def _read_option(stripped: str, number: int, path: str | None) -> Option:
    key, sep, value = stripped.partition("=")
    if not sep:
        raise ConfigError(f"malformed line {stripped!r}: no '=' (darknet keeps the key with no "
                          "value, which also hides any later line setting it)",
                          path=path, line=number, option=key)
    if not value:
        raise ConfigError(f"malformed line {stripped!r}: nothing after '=' (darknet prints "
                          f"'Config file error line {number}' and drops it)",
                          path=path, line=number, option=key)
    if not key:
        raise ConfigError(f"malformed line {stripped!r}: no option name before '='",
                          path=path, line=number)
    return Option(key, value, number)


def _warn_duplicates(section: Section) -> None:
    seen: dict[str, int] = {}
    for opt in section.options:
        if opt.key in seen:
            _warn(section.path, opt.line,
                  f"option '{opt.key}' repeated in {section.header}; darknet reads only the "
                  f"first (line {seen[opt.key]}) and reports this one as an unused field")
        else:
            seen[opt.key] = opt.line


# --------------------------------------------------------------------------
# [net]


@dataclass(frozen=True)
class NetOptions:
    """The [net] options a [yolo] layer's forward pass depends on."""

    width: int
    height: int
    channels: int
    batch: int  # darknet's layer batch: batch / subdivisions * time_steps, clamped
    cfg_batch: int
    subdivisions: int


def parse_net(section: Section, flavor: str) -> NetOptions:
    """Read [net] like ``parse_net_options`` (defaults: width/height/channels 0, batch 1)."""
    width = section.get_int("width", 0)
    height = section.get_int("height", 0)
    channels = section.get_int("channels", 0)
    batch = section.get_int("batch", 1)
    subdivisions = section.get_int("subdivisions", 1)
    time_steps = section.get_int("time_steps", 1)
    for key, value, low in (("width", width, 1), ("height", height, 1), ("channels", channels, 0),
                            ("batch", batch, 1), ("subdivisions", subdivisions, 1),
                            ("time_steps", time_steps, 1)):
        if value < low:
            raise section.error(key, f"{key}={value} in [net] must be >= {low}")
    mini = batch // subdivisions * time_steps
    if mini < 1 and flavor == "pjreddie":
        raise section.error("subdivisions", f"batch={batch} / subdivisions={subdivisions} is 0: "
                            "pjreddie darknet would train on empty mini-batches")
    if mini < max(1, time_steps):
        _warn(section.path, section.line_of("subdivisions"),
              f"batch={batch} / subdivisions={subdivisions} is {mini}; darknet raises the "
              f"mini-batch to {max(1, time_steps)}")
        mini = max(1, time_steps)
    return NetOptions(width, height, channels, mini, batch, subdivisions)


# --------------------------------------------------------------------------
# [yolo]

# (option, kind, YoloConfig field or None for `extra`); kinds: int, float,
# str, ints, floats. Order is the order darknet reads them (and dump writes).
_AB_YOLO = (
    ("classes", "int", "classes"), ("num", "int", "num"), ("mask", "ints", "mask"),
    ("max", "int", "max_boxes"), ("show_details", "int", "show_details"),
    ("max_delta", "float", "max_delta"), ("counters_per_class", "ints", "counters_per_class"),
    ("label_smooth_eps", "float", "label_smooth_eps"), ("scale_x_y", "float", "scale_x_y"),
    ("objectness_smooth", "int", "objectness_smooth"), ("new_coords", "int", "new_coords"),
    ("iou_normalizer", "float", "iou_normalizer"), ("obj_normalizer", "float", "obj_normalizer"),
    ("cls_normalizer", "float", "cls_normalizer"),
    ("delta_normalizer", "float", "delta_normalizer"), ("iou_loss", "str", "iou_loss"),
    ("iou_thresh_kind", "str", "iou_thresh_kind"), ("beta_nms", "float", None),
    ("nms_kind", "str", None), ("jitter", "float", None), ("resize", "float", None),
    ("focal_loss", "int", "focal_loss"), ("ignore_thresh", "float", "ignore_thresh"),
    ("truth_thresh", "float", "truth_thresh"), ("iou_thresh", "float", "iou_thresh"),
    ("random", "float", None), ("track_history_size", "int", None),
    ("sim_thresh", "float", None), ("dets_for_track", "int", None),
    ("dets_for_show", "int", None), ("track_ciou_norm", "float", None),
    ("embedding_layer", "int", None), ("anchors", "floats", "anchors"),
    # read for every layer by parse_network_cfg_custom
    ("clip", "float", None), ("onlyforward", "int", None), ("dont_update", "int", None),
    ("burnin_update", "int", None), ("stopbackward", "int", None),
    ("train_only_bn", "int", None), ("dontload", "int", None),
    ("dontloadscales", "int", None), ("learning_rate", "float", None),
)
_PJ_YOLO = (
    ("classes", "int", "classes"), ("num", "int", "num"), ("mask", "ints", "mask"),
    ("max", "int", "max_boxes"), ("jitter", "float", None),
    ("ignore_thresh", "float", "ignore_thresh"), ("truth_thresh", "float", "truth_thresh"),
    ("random", "int", None), ("anchors", "floats", "anchors"),
    # read for every layer by pjreddie's parse_network_cfg
    ("truth", "int", None), ("onlyforward", "int", None), ("stopbackward", "int", None),
    ("dontsave", "int", None), ("dontload", "int", None), ("numload", "int", None),
    ("dontloadscales", "int", None), ("learning_rate", "float", None), ("smooth", "float", None),
)
YOLO_OPTIONS = {"alexeyab": _AB_YOLO, "pjreddie": _PJ_YOLO}


def _check_flavor(flavor: str) -> None:
    if flavor not in FLAVORS:
        raise ConfigError(f"unknown flavor {flavor!r}; expected one of {', '.join(FLAVORS)}",
                          option="flavor")


def parse_yolo(section: Section, net: NetOptions, flavor: str) -> YoloConfig:
    """Read one [yolo] section the way ``flavor``'s ``parse_yolo`` does, then validate."""
    _check_flavor(flavor)
    if section.find("map"):
        raise section.error("map", "map= (class id remapping) is not supported by darknet-parity")
    table = YOLO_OPTIONS[flavor]
    known = {name for name, _, _ in table}
    values: dict[str, Any] = {}
    extra: dict[str, str] = {}
    for name, kind, target in table:
        opt = section.find(name)
        if opt is None or kind in ("ints", "floats"):
            continue
        parsed = _parse_scalar(section, opt, kind)
        if target is None:
            extra[name] = opt.value
        else:
            values[target] = parsed
    values.update(_yolo_lists(section, flavor, values.get("num", 1)))
    for opt in section.options:
        if opt.key not in known and opt.key not in extra:
            _warn(section.path, opt.line, f"option '{opt.key}' in [yolo] is not read by "
                  f"{flavor} darknet (it reports an unused field); kept in extra, ignored")
            extra[opt.key] = opt.value
    if flavor == "pjreddie":
        values.setdefault("max_boxes", PJREDDIE_TRUTH_BOXES)
    try:
        return YoloConfig(**values, net_w=net.width, net_h=net.height, batch=net.batch,
                          flavor=flavor, extra=extra)
    except _FieldError as err:
        raise section.error(err.option, err.bare) from None


def _parse_scalar(section: Section, opt: Option, kind: str) -> Any:
    if kind == "int":
        return section.parse_int(opt)
    if kind == "float":
        value = section.parse_float(opt)
        if math.isinf(value) and opt.key != "max_delta":
            raise section.error(opt.key, f"{opt.value!r} is infinite")
        return value
    return opt.value


def _yolo_lists(section: Section, flavor: str, num: int) -> dict[str, Any]:
    """mask, counters_per_class and anchors, with darknet's list quirks."""
    ab = flavor == "alexeyab"
    out: dict[str, Any] = {}
    if num < 1:
        return out  # YoloConfig reports num itself
    mask_opt = section.find("mask")
    if mask_opt:
        out["mask"] = tuple(_list_items(section, mask_opt, ab, "int"))
    else:
        out["mask"] = tuple(range(num))
    counters_opt = section.find("counters_per_class") if ab else None
    if counters_opt:
        out["counters_per_class"] = tuple(_list_items(section, counters_opt, ab, "int"))
    anchors_opt = section.find("anchors")
    if anchors_opt is None:
        out["anchors"] = (0.5,) * (2 * num)  # make_yolo_layer's initial biases
        return out
    anchors = _list_items(section, anchors_opt, ab, "float")
    if len(anchors) < 2 * num:
        raise section.error("anchors", f"{len(anchors)} anchor values for num={num}; "
                            f"darknet needs {2 * num} and would leave the rest at 0.5")
    if len(anchors) > 2 * num:
        if not ab:
            raise section.error("anchors", f"{len(anchors)} anchor values for num={num}: "
                                f"pjreddie darknet writes all of them into a buffer of "
                                f"{2 * num} (heap overflow)")
        _warn(section.path, anchors_opt.line, f"{len(anchors)} anchor values for num={num}; "
              f"darknet reads only the first {2 * num}")
        anchors = anchors[: 2 * num]
    out["anchors"] = tuple(anchors)
    return out


def _list_items(section: Section, opt: Option, stop_at_hash: bool, kind: str) -> list[Any]:
    """Parse a darknet list option; a piece with no number reads as 0, with a warning."""
    scan, parse = (c_atoi, section.parse_int) if kind == "int" else (c_atof, section.parse_float)
    items = []
    for piece in split_darknet_list(opt.value, stop_at_hash=stop_at_hash):
        if scan(piece) is None:
            _warn(section.path, opt.line, f"option '{opt.key}': list item {piece!r} has no "
                  "number; darknet reads it as 0")
            piece = "0"
        items.append(parse(opt, piece))
    return items


# --------------------------------------------------------------------------
# Whole cfg


@dataclass(frozen=True)
class YoloLayer:
    """A [yolo] layer of a network: darknet layer index ([net] excluded), line, grid.

    ``grid_w``/``grid_h`` are None only where no layer precedes the [yolo]
    (the recorded-case cfgs: [net] + one [yolo]).
    """

    index: int
    line: int
    config: YoloConfig
    grid_w: int | None
    grid_h: int | None


@dataclass(frozen=True)
class NetworkCfg:
    """A parsed cfg: [net] sizes, every section ([net] first), the [yolo] layers.

    ``batch`` is the batch darknet's layers see (batch / subdivisions).
    """

    width: int
    height: int
    channels: int
    batch: int
    sections: list[Section]
    yolo_layers: list[YoloLayer]
    subdivisions: int = 1
    flavor: str = "alexeyab"
    path: str | None = None


def parse_cfg(text: str, *, path: str | None = None, flavor: str = "alexeyab") -> NetworkCfg:
    """Parse cfg text as darknet of ``flavor`` would, validating every [yolo] layer."""
    _check_flavor(flavor)
    path = None if path is None else os.fspath(path)
    sections = read_sections(text, path)
    if flavor == "pjreddie" and "\r" in text:
        _warn(path, text.count("\n", 0, text.index("\r")) + 1,
              "carriage return: pjreddie darknet strips only spaces, tabs and LF, so it would "
              "not recognise '[net]\\r' and similar headers (AlexeyAB strips CR)")
    if not sections:
        raise ConfigError("no sections: a cfg starts with [net]", path=path)
    head = sections[0]
    if head.type != "net":
        raise ConfigError(f"first section is {head.header}; darknet requires [net] or "
                          "[network] first", path=path, line=head.line)
    net = parse_net(head, flavor)
    yolos = _yolo_layers(sections, net, flavor)
    return NetworkCfg(net.width, net.height, net.channels, net.batch, sections, yolos,
                      net.subdivisions, flavor, path)


def _yolo_layers(sections: list[Section], net: NetOptions, flavor: str) -> list[YoloLayer]:
    """Walk the layers after [net]; parse and size every [yolo] on the way."""
    from .cfg_walk import LayerWalk  # cfg_walk builds on Section, defined here

    walk = LayerWalk(net.width, net.height, net.channels, sections[0])
    yolos: list[YoloLayer] = []
    for index, section in enumerate(sections[1:]):
        if section.type == "yolo":
            config = parse_yolo(section, net, flavor)
            grid = walk.yolo_grid(section, config.n, config.classes) if index else None
            yolos.append(YoloLayer(index, section.line, config, *(grid or (None, None))))
        elif not section.recognized or section.type == "net":
            _warn(section.path, section.line, f"darknet does not recognise section "
                  f"{section.header} here ('Type not recognized'); it becomes an empty layer")
        walk.push(section)
    return yolos


def load_cfg(path: str | os.PathLike, *, flavor: str = "alexeyab") -> NetworkCfg:
    """Read and parse a cfg file (bytes decoded as UTF-8, undecodable bytes kept)."""
    name = os.fspath(path)
    try:
        with open(name, "rb") as handle:
            data = handle.read()
    except OSError as err:
        raise ConfigError(f"cannot read cfg: {err.strerror}", path=str(name)) from None
    return parse_cfg(data.decode("utf-8", "surrogateescape"), path=str(name), flavor=flavor)


def yolo_config_from_cfg(text: str, *, path: str | os.PathLike | None = None,
                         flavor: str = "alexeyab") -> YoloConfig:
    """The YoloConfig of a cfg holding exactly one [yolo] section."""
    name = None if path is None else os.fspath(path)
    cfg = parse_cfg(text, path=name, flavor=flavor)
    if len(cfg.yolo_layers) != 1:
        line = cfg.yolo_layers[1].line if len(cfg.yolo_layers) > 1 else None
        raise ConfigError(f"expected exactly one [yolo] section, found {len(cfg.yolo_layers)}",
                          path=name, line=line)
    return cfg.yolo_layers[0].config


# --------------------------------------------------------------------------
# Writing


def dump_yolo_cfg(config: YoloConfig) -> str:
    """A [net] + [yolo] cfg that parses back (same flavor) to an equal YoloConfig.

    [yolo] gets every option whose value differs from ``config.flavor``'s
    default, then ``extra`` verbatim. Floats are written as ``repr`` (or as
    an integer when integral), which atof reads back as the same double.
    """
    base = YoloConfig.for_flavor(config.flavor)
    # mask and anchors default to values that depend on num
    defaults = {"mask": tuple(range(config.num)), "anchors": (0.5,) * (2 * config.num)}
    lines = [f"# darknet-parity YoloConfig, flavor={config.flavor}", "[net]",
             f"width={config.net_w}", f"height={config.net_h}", f"batch={config.batch}",
             "", "[yolo]"]
    fields = {name: target for name, _, target in YOLO_OPTIONS[config.flavor] if target}
    for name, target in fields.items():
        value = getattr(config, target)
        if value != defaults.get(target, getattr(base, target)):
            lines.append(f"{name}={_format_value(value)}")
    kinds = {name: kind for name, kind, _ in YOLO_OPTIONS[config.flavor]}
    for key, value in config.extra.items():
        _check_extra(key, value, fields, kinds.get(key))
        lines.append(f"{key}={value}")
    return "\n".join(lines) + "\n"


def _format_value(value: object) -> str:
    if isinstance(value, tuple):
        return ",".join(_format_value(v) for v in value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        # integral values print as ints (anchors read better); atof gives the same double
        return str(int(value)) if value.is_integer() and abs(value) < 2 ** 53 else repr(value)
    return str(int(value)) if isinstance(value, np.integer) else str(value)


def _check_extra(key: str, value: str, fields: Mapping[str, str], kind: str | None) -> None:
    """Refuse an ``extra`` entry that would not read back as itself."""
    if key in fields or key == "map":
        raise ConfigError(f"extra option '{key}' would override a YoloConfig field",
                          option=key)
    if not key or key[0] in "#;[" or not key.isprintable() or any(c in key for c in " \t=#"):
        raise ConfigError(f"extra option name {key!r} cannot be written to a cfg", option=key)
    if not value or not value.isprintable() or any(c in value for c in " \t"):
        raise ConfigError(f"extra value {value!r} cannot be written to a cfg", option=key)
    scan = {"int": c_atoi, "float": c_atof}.get(kind or "")
    if scan is not None and scan(value) is None:
        raise ConfigError(f"extra value {value!r} is not a number", option=key)
