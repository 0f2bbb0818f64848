"""The [net] and [yolo] option tables, read the way each flavor's ``parse_net_options``/``parse_yolo`` does.

Refused (``ConfigError`` at the option's line), where darknet would silently
misread or crash: infinity except for ``max_delta``, more anchors than
``2*num`` in pjreddie (a heap overflow), a [net] size below 1, and
whatever ``YoloConfig`` refuses on construction (its invariants live with it,
in ``parity.config``). Unknown [yolo] options only warn (``ConfigWarning``).
Values darknet accepts but reads otherwise are read as darknet reads them,
with a ``DarknetInputWarning`` at the line (docs/options.md has the table):
an unknown or wrong-case ``iou_loss``/``iou_thresh_kind`` is plain IoU, fewer
than ``2*num`` anchors leave the rest at 0.5.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import FLAVORS, IOU_KINDS, PJREDDIE_TRUTH_BOXES, THRESH_KINDS, YoloConfig, YoloFieldError
from ..errors import ConfigError
from .lexer import Option, Section, c_atof, c_atoi, darknet_reads_at, split_darknet_list, warn_at

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
        warn_at(section.path, section.line_of("subdivisions"),
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
    ("map", "str", None),
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
    ("random", "int", None), ("anchors", "floats", "anchors"), ("map", "str", None),
    # read for every layer by pjreddie's parse_network_cfg
    ("truth", "int", None), ("onlyforward", "int", None), ("stopbackward", "int", None),
    ("dontsave", "int", None), ("dontload", "int", None), ("numload", "int", None),
    ("dontloadscales", "int", None), ("learning_rate", "float", None), ("smooth", "float", None),
)
YOLO_OPTIONS = {"alexeyab": _AB_YOLO, "pjreddie": _PJ_YOLO}


def check_flavor(flavor: str) -> None:
    if flavor not in FLAVORS:
        raise ConfigError(f"unknown flavor {flavor!r}; expected one of {', '.join(FLAVORS)}",
                          option="flavor")


def parse_yolo(section: Section, net: NetOptions, flavor: str) -> YoloConfig:
    """Read one [yolo] section the way ``flavor``'s ``parse_yolo`` does, then validate."""
    check_flavor(flavor)
    table = YOLO_OPTIONS[flavor]
    known = {name for name, _, _ in table}
    values: dict[str, Any] = {}
    extra: dict[str, str] = {}
    for name, kind, target in table:
        opt = section.find(name)
        if opt is None or kind in ("ints", "floats"):
            continue
        parsed = _parse_scalar(section, opt, kind)
        if target in _STRING_CHOICES:
            parsed = _darknet_choice(section, opt, target)
        if name == "map":
            continue                    # class_map, read below (its file name means nothing elsewhere)
        if target is None:
            extra[name] = opt.value
        else:
            values[target] = parsed
    values.update(_yolo_lists(section, flavor, values.get("num", 1)))
    map_opt = section.find("map")
    if map_opt is not None:
        values["class_map"] = read_class_map(section, map_opt, values.get("classes", 20))
    for opt in section.options:
        if opt.key not in known and opt.key not in extra:
            warn_at(section.path, opt.line, f"option '{opt.key}' in [yolo] is not read by "
                  f"{flavor} darknet (it reports an unused field); kept in extra, ignored")
            extra[opt.key] = opt.value
    if flavor == "pjreddie":
        values.setdefault("max_boxes", PJREDDIE_TRUTH_BOXES)
    try:
        return YoloConfig(**values, net_w=net.width, net_h=net.height, batch=net.batch,
                          flavor=flavor, extra=extra)
    except YoloFieldError as err:
        raise section.error(err.option, err.bare) from None


# AlexeyAB's parse_yolo compares these with strcmp (case-sensitive); anything else reads as IoU.
_STRING_CHOICES = {"iou_loss": IOU_KINDS, "iou_thresh_kind": THRESH_KINDS}


def _darknet_choice(section: Section, opt: Option, target: str) -> str:
    """The value darknet uses: an unknown one is plain IoU (iou_thresh_kind with darknet's own warning)."""
    value = opt.value
    if value in _STRING_CHOICES[target]:
        return value
    what = "IoU loss" if target == "iou_loss" else "IoU for iou_thresh"
    hint = f": write {value.lower()!r}" if value.lower() in _STRING_CHOICES[target] else (
        f" (expected one of {', '.join(_STRING_CHOICES[target])})")
    darknet_reads_at(section.path, opt.line, f"option '{opt.key}': darknet reads {value!r} as plain {what}{hint}")
    return "iou"


def map_file_path(section: Section, value: str) -> Path:
    """map=NAME relative to the cfg's folder (a recorded case's ``FILE.npz:cfg``: the case's folder)."""
    name = Path(value)
    if name.is_absolute() or section.path is None:
        return name
    cfg_file = str(section.path)
    if cfg_file.endswith(":cfg"):
        cfg_file = cfg_file[: -len(":cfg")]
    return Path(cfg_file).parent / name


def read_class_map(section: Section, opt: Option, classes: int) -> tuple[int, ...]:
    """darknet's read_map: one atoi per line; an entry >= classes (or < 0) is refused at its line,
    since darknet writes the class delta out of bounds there."""
    path = map_file_path(section, opt.value)
    try:
        lines = path.read_text(encoding="utf-8", errors="surrogateescape").split("\n")
    except OSError as err:
        raise section.error("map", f"cannot read map file {str(path)!r}: {err.strerror or err}") from None
    if lines and lines[-1] == "":
        lines.pop()                     # fgetl: a final newline ends the last line
    values = []
    for number, line in enumerate(lines, start=1):
        value = c_atoi(line.strip())
        value = 0 if value is None else value
        if len(values) < classes and not 0 <= value < classes:
            raise section.error("map", f"{path}:line {number}: map value {value} is outside [0, {classes}): "
                                "darknet writes the class delta out of bounds")
        values.append(value)
    if len(values) < classes:
        raise section.error("map", f"{path} has {len(values)} lines for classes={classes}: darknet reads "
                            "map[class_id] past its array")
    return tuple(values)


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
        darknet_reads_at(section.path, anchors_opt.line, f"option 'anchors': {len(anchors)} anchor values for "
                         f"num={num}; darknet reads them and leaves the other {2 * num - len(anchors)} at 0.5")
        anchors = anchors + [0.5] * (2 * num - len(anchors))
    if len(anchors) > 2 * num:
        if not ab:
            raise section.error("anchors", f"{len(anchors)} anchor values for num={num}: "
                                f"pjreddie darknet writes all of them into a buffer of "
                                f"{2 * num} (heap overflow)")
        warn_at(section.path, anchors_opt.line, f"{len(anchors)} anchor values for num={num}; "
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
            warn_at(section.path, opt.line, f"option '{opt.key}': list item {piece!r} has no "
                  "number; darknet reads it as 0")
            piece = "0"
        items.append(parse(opt, piece))
    return items

