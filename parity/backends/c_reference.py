"""The C reference backend: our C port of darknet's [yolo] forward (``darknet_ref/``), run through cffi.

``load_reference()`` compiles the reference on first use (``parity.backends.native``
caches it by source hash); ``run_c_reference`` runs ``yref_forward_decisions`` on
checked input and returns a ``LayerRun`` with output, delta, stats, per-slot role
bits, branch counters and, when asked, the decisions the C passes exported. ``python -m parity.backends.c_reference`` compiles it now.
"""
from __future__ import annotations

from functools import lru_cache
from types import ModuleType
from typing import Any

import numpy as np

from ..config import YoloConfig
from ..errors import InputError
from ..result import Assignments, Decisions, LayerRun, LayerStats
from . import ref_build
from .ground import LOSS_CODES, new_layer_struct
from .native import load_cached

_STATUS = {
    1: "a required array is missing",
    2: "a size is zero, negative or too large",
    3: "a mask entry is outside [0, num)",
    4: "a truth centre maps outside the grid",
    5: "a class id is outside [0, classes) (pjreddie has no range check)",
    6: "an option is out of range",
}


@lru_cache(maxsize=None)
def load_reference() -> ModuleType:
    """The compiled C reference module (``.ffi``, ``.lib``), built on first use."""
    return load_cached("_darknet_ref", ref_build.source_hash(), ref_build.make_builder)


def run_c_reference(config: YoloConfig, x: np.ndarray, t: np.ndarray, flavor: str, shape: Any,
                    decisions: bool = False) -> LayerRun:
    """Run the reference on input already checked by ``check_layer_input`` (``shape`` is its result).

    ``decisions``: also fill ``LayerRun.decisions`` from the C passes' own export.
    """
    mod = load_reference()
    ffi, lib = mod.ffi, mod.lib
    keep: list[Any] = []
    cfg = new_layer_struct(ffi, config, flavor, shape, t, keep)
    output = np.empty_like(x)
    delta = np.empty_like(x)
    roles = np.empty((shape.batch, shape.n, shape.h, shape.w), dtype=np.int32)
    stats = ffi.new("yref_stats *")
    truth_ptr = ffi.from_buffer("float[]", t) if t.size else ffi.NULL
    dec, arrays = _decision_buffers(ffi, config, shape, t, keep) if decisions else (ffi.NULL, {})
    status = lib.yref_forward_decisions(cfg, ffi.from_buffer("float[]", x), truth_ptr,
                                        ffi.from_buffer("float[]", output, require_writable=True),
                                        ffi.from_buffer("float[]", delta, require_writable=True),
                                        ffi.from_buffer("int[]", roles, require_writable=True), stats, dec)
    if status != 0:
        raise InputError(f"C reference refused the input: {_STATUS.get(status, f'status {status}')}")
    branches = {ffi.string(lib.yref_branch_name(k)).decode(): int(stats.branches[k])
                for k in range(len(stats.branches))}
    exported = _decisions(dec, arrays) if decisions else None
    return LayerRun(output, delta, layer_stats(stats, flavor), roles, exported, branches, backend="c")


# Names of the yref_decisions arrays by shape and type (the struct's fields).
_SLOT_FLOATS = ("best_iou", "second_iou", "best_match_iou", "max_class_prob")
_SLOT_INTS = ("best_truth", "class_match", "divisor")
_ROW_INTS = ("truth_used", "truth_best_anchor", "truth_i", "truth_j")
_ANCHOR_FLOATS = ("anchor_iou", "anchor_thresh_iou")


def _decision_buffers(ffi: Any, config: YoloConfig, shape: Any, t: np.ndarray,
                      keep: list[Any]) -> tuple[Any, dict[str, np.ndarray]]:
    """A ``yref_decisions`` pointing into fresh numpy arrays (kept alive through ``keep``)."""
    rows = t.shape[1]
    slots = (shape.batch, shape.n, shape.h, shape.w)
    arrays: dict[str, np.ndarray] = {}
    arrays.update({name: np.zeros(slots, np.float32) for name in _SLOT_FLOATS})
    arrays.update({name: np.zeros(slots, np.int32) for name in _SLOT_INTS})
    arrays["pred_box"] = np.zeros(slots + (4,), np.float32)
    arrays.update({name: np.zeros((shape.batch, rows), np.int32) for name in _ROW_INTS})
    arrays.update({name: np.zeros((shape.batch, rows, config.num), np.float32) for name in _ANCHOR_FLOATS})
    capacity = max(1, shape.batch * rows * shape.n)     # each used truth writes at most n mask slots
    arrays["assign"] = np.zeros((capacity, 7), np.int32)
    arrays["assign_iou"] = np.zeros(capacity, np.float32)
    dec = ffi.new("yref_decisions *")
    for name, arr in arrays.items():
        kind = "float[]" if arr.dtype == np.float32 else "int[]"
        setattr(dec, name, ffi.from_buffer(kind, arr, require_writable=True))
    dec.assign_capacity = capacity
    keep.extend(arrays.values())
    keep.append(dec)
    return dec, arrays


def _decisions(dec: Any, arrays: dict[str, np.ndarray]) -> Decisions:
    count = int(dec.assign_count)
    if count > len(arrays["assign"]):
        raise InputError(f"C reference: {count} assignments exceed the {len(arrays['assign'])} rows reserved")
    rows = arrays["assign"][:count].astype(np.int64)
    asg = Assignments(*(rows[:, k] for k in range(6)), rows[:, 6].astype(bool), arrays["assign_iou"][:count].copy())
    return Decisions(**{k: v for k, v in arrays.items() if k not in ("assign", "assign_iou")}, assignments=asg)


def box_overlap(box: Any, others: np.ndarray, kind: str = "iou", pjreddie: bool = False) -> np.ndarray:
    """The reference's overlap of ``box`` (x, y, w, h) with each row of ``others`` ([N, 4]), in float32.

    ``kind`` "iou" is darknet's box_iou (pjreddie's or AlexeyAB's); "giou",
    "diou", "ciou" the iou_thresh_kind measures: the numbers darknet compares.
    """
    lib = load_reference().lib
    code = LOSS_CODES[kind]
    x, y, w, h = (float(v) for v in box)
    rows = np.asarray(others, np.float32).reshape(-1, 4)
    return np.array([lib.yref_box_iou(x, y, w, h, *(float(v) for v in row), code, int(pjreddie)) for row in rows],
                    np.float32)


def layer_stats(s: Any, flavor: str) -> LayerStats:
    """The figures darknet reports, from a ``yref_stats``; AlexeyAB-only ones None for pjreddie."""
    ab = flavor == "alexeyab"

    def ab_only(value: Any, kind: type) -> Any:
        return kind(value) if ab else None

    return LayerStats(
        cost=float(s.cost), count=int(s.count), count_raw=int(s.assigned),
        tot_iou=float(s.tot_iou), avg_iou=float(s.avg_iou),
        rewritten_bbox=ab_only(s.rewritten_bbox, int), total_bbox=ab_only(s.total_bbox, int),
        tot_iou_loss=ab_only(s.tot_iou_loss, float), tot_giou_loss=ab_only(s.tot_giou_loss, float),
        class_loss=ab_only(s.class_loss, float), iou_loss=ab_only(s.iou_loss, float),
        total_loss=ab_only(s.total_loss, float),
    )


if __name__ == "__main__":
    # `python -m parity.backends.c_reference`: compile the reference now (make build).
    print(f"C reference ready: {load_reference().__file__}")
