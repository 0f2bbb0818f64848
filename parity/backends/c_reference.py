"""The C reference backend: our C port of darknet's [yolo] forward (``darknet_ref/``), run through cffi.

``load_reference()`` compiles the reference on first use (``parity.backends.native``
caches it by source hash); ``run_c_reference`` runs ``yref_forward`` on checked
input and returns a ``LayerRun`` with output, delta, stats, per-slot role bits
and branch counters. ``python -m parity.backends.c_reference`` compiles it now.
"""
from __future__ import annotations

from functools import lru_cache
from types import ModuleType
from typing import Any

import numpy as np

from ..config import YoloConfig
from ..errors import InputError
from ..result import LayerRun, LayerStats
from . import ref_build
from .ground import new_layer_struct
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


def run_c_reference(config: YoloConfig, x: np.ndarray, t: np.ndarray, flavor: str, shape: Any) -> LayerRun:
    """Run ``yref_forward`` on input already checked by ``check_layer_input`` (``shape`` is its result)."""
    mod = load_reference()
    ffi, lib = mod.ffi, mod.lib
    keep: list[Any] = []
    cfg = new_layer_struct(ffi, config, flavor, shape, t, keep)
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
    return LayerRun(output, delta, layer_stats(stats, flavor), roles, branches=branches, backend="c")


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
