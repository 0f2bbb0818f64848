"""The reference: darknet's [yolo] training forward pass, from our C or a real libdarknet.

``run_reference(config, input, truth, flavor=...)`` returns darknet's
``output``, ``delta`` (darknet's sign: target minus prediction) and stats.
The C reference also reports per-cell decisions (``roles``) and how often
each darknet branch ran (``branches``); a real libdarknet reports only what
darknet itself exposes (output, delta, cost and, for AlexeyAB, counters).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .config import YoloConfig
from .errors import InputError, ParityError
from .layer_input import check_flavor, check_layer_input

FLAVOR_CODES = {"alexeyab": 0, "pjreddie": 1}
LOSS_CODES = {"mse": 0, "iou": 1, "giou": 2, "diou": 3, "ciou": 4}

# Bits of ``ReferenceResult.roles`` (darknet_ref/yolo_ref.h YREF_ROLE_*).
ROLE_IGNORED = 1 << 0
ROLE_CLASSMATCH_BLOCKED = 1 << 1
ROLE_TRUTH_THRESH = 1 << 2
ROLE_BEST_ANCHOR = 1 << 3
ROLE_EXTRA_ANCHOR = 1 << 4
ROLE_REWRITTEN = 1 << 5
ROLE_CLASS_SHORTCUT = 1 << 6
ROLE_AVERAGED = 1 << 7
ROLE_OBJ_NONFINITE = 1 << 8

_STATUS = {
    1: "a required array is missing",
    2: "a size is zero, negative or too large",
    3: "a mask entry is outside [0, num)",
    4: "a truth centre maps outside the grid",
    5: "a class id is outside [0, classes) (pjreddie has no range check)",
    6: "an option is out of range",
}


@dataclass
class ReferenceResult:
    """What one reference run produced, in darknet's layout.

    ``output`` and ``delta`` are float32 ``[batch, n*(5+classes), h, w]``;
    ``roles`` is int32 ``[batch, n, h, w]`` of ``ROLE_*`` bits (None from a
    real libdarknet); ``branches`` maps darknet branch names to counts.
    """

    output: np.ndarray
    delta: np.ndarray
    stats: dict[str, Any]
    roles: np.ndarray | None = None
    branches: dict[str, int] = field(default_factory=dict)
    backend: str = "c"


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


def _run_c(config: YoloConfig, x: np.ndarray, t: np.ndarray, flavor: str, shape: Any) -> ReferenceResult:
    from .native import load_reference

    mod = load_reference()
    ffi, lib = mod.ffi, mod.lib
    keep: list[Any] = []
    cfg = ffi.new("yref_config *")
    cfg.flavor = FLAVOR_CODES[flavor]
    fill_layer_struct(ffi, cfg, config, flavor, shape, t, keep)
    output = np.empty_like(x)
    delta = np.empty_like(x)
    roles = np.empty((shape.batch, shape.n, shape.h, shape.w), dtype=np.int32)
    stats = ffi.new("yref_stats *")
    truth_ptr = ffi.from_buffer("float[]", t) if t.size else ffi.NULL
    status = lib.yref_forward(cfg, ffi.from_buffer("float[]", x), truth_ptr,
                              ffi.from_buffer("float[]", output, require_writable=True),
                              ffi.from_buffer("float[]", delta, require_writable=True),
                              ffi.from_buffer("int[]", roles, require_writable=True), stats)
    if status != 0:
        raise InputError(f"C reference refused the input: {_STATUS.get(status, f'status {status}')}")
    branches = {ffi.string(lib.yref_branch_name(k)).decode(): int(stats.branches[k])
                for k in range(len(stats.branches))}
    return ReferenceResult(output, delta, _stats_dict(stats, flavor), roles, branches, backend="c")


def _stats_dict(s: Any, flavor: str) -> dict[str, Any]:
    """The figures darknet reports, under the names recordings use."""
    out: dict[str, Any] = {
        "cost": float(s.cost), "count": int(s.count), "assigned": int(s.assigned),
        "tot_iou": float(s.tot_iou), "avg_iou": float(s.avg_iou),
    }
    if flavor == "alexeyab":
        out.update({
            "rewritten_bbox": int(s.rewritten_bbox), "total_bbox": int(s.total_bbox),
            "tot_iou_loss": float(s.tot_iou_loss), "tot_giou_loss": float(s.tot_giou_loss),
            "class_loss": float(s.class_loss), "iou_loss": float(s.iou_loss), "total_loss": float(s.total_loss),
        })
    return out


def run_reference(config: YoloConfig, input: Any, truth: Any, flavor: str | None = None, *,
                  backend: str = "c", darknet_lib: str | None = None, darknet_include: str | None = None,
                  delta_normalizer: bool = False) -> ReferenceResult:
    """Run darknet's [yolo] training forward pass on one batch.

    Args:
        config: the layer's options (``load_case(...).config`` or the ``parity.cfg`` parsers).
        input (ndarray[batch, n*(5+classes), h, w]): the raw head tensor, before activation.
        truth (ndarray[batch, rows, 6 or 5]): x, y, w, h, class, track per box; darknet's
            terminator rules apply (reading stops at the first x == 0, and after ``max`` rows).
        flavor: ``"alexeyab"`` or ``"pjreddie"``; defaults to ``config.flavor``.
        backend: ``"c"`` (our reference) or ``"libdarknet"`` (a real darknet library:
            ``darknet_lib`` is its ``libdarknet.so``, ``darknet_include`` the folder holding
            its ``darknet.h``; both default to Debian's package paths).
        delta_normalizer: multiply the delta by ``config.delta_normalizer`` as darknet's GPU
            backward does (its CPU backward does not); off by default.

    Returns:
        ReferenceResult with float32 ``output`` and ``delta`` in darknet's layout and ``stats``.
    """
    if not isinstance(config, YoloConfig):
        raise InputError(f"config must be a parity.config.YoloConfig, got {type(config).__name__}")
    flavor = check_flavor(flavor or config.flavor)
    x, t, shape = check_layer_input(config, input, truth, flavor)
    if backend == "c":
        result = _run_c(config, x, t, flavor, shape)
    elif backend == "libdarknet":
        from .libdarknet import run_libdarknet

        result = run_libdarknet(config, x, t, flavor, lib_path=darknet_lib, include_dir=darknet_include)
    else:
        raise ParityError(f"unknown reference backend {backend!r}: expected 'c' or 'libdarknet'")
    if delta_normalizer:
        result.delta *= np.float32(config.delta_normalizer)
    return result
