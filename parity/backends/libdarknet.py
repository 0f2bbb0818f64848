"""A real, installed darknet library as the reference (``backend="libdarknet"``).

A small C shim (``darknet_ref/shim/``) is compiled with cffi against the
library's OWN ``darknet.h`` and linked to its ``libdarknet.so``. It builds
one [yolo] layer with the library's ``make_yolo_layer``, sets the options as
darknet's ``parse_yolo`` does, runs the library's ``forward_yolo_layer`` in
training mode and copies out output, delta and cost (and AlexeyAB's counters).

Which darknet: the header decides at compile time. AlexeyAB's ``darknet.h``
declares ``network_state`` (its forward takes one); pjreddie's does not. The
requested flavor must agree with the header, otherwise ``BuildError``.

Finding the library, compiling against it and the FP-mode handling are
``parity.backends.darknet_library``'s; defaults are Debian's ``darknet``
package (pjreddie, 2018): ``/usr/lib/darknet/libdarknet.so`` and
``/usr/lib/darknet/include``.

Caveats (darknet's, not ours):

* darknet prints from ``make_yolo_layer`` and the forward pass; fds 1 and 2
  point at /dev/null during the call (Python threads printing meanwhile are
  silenced too; calls are serialised by a lock).
* ``make_yolo_layer`` calls ``srand`` (the process's C ``rand()`` state).
* AlexeyAB's forward runs one pthread per image and increments
  ``total_bbox``/``rewritten_bbox`` without atomics: with batch > 1 on several
  cores the counters can be lower than a single-threaded run's (output, delta
  and cost are unaffected). pjreddie's forward is single-threaded.
* The library must be a CPU build (GPU=0): a GPU build's CPU forward skips the
  activation and its structs carry GPU fields; such a library is refused.
* ``map=`` (``class_map``) reaches the layer as darknet's ``parse_yolo``
  leaves it: a heap copy in ``l.map`` that the library's ``free_layer``
  frees after the call. Both flavors read it (pjreddie's ``parse_yolo`` calls
  ``read_map`` too); this project's cfg parser, C reference and port model
  it for AlexeyAB only, so a pjreddie config given a ``class_map`` by hand
  runs here as pjreddie darknet runs it, not as the C reference does.
* darknet's own allocations are unchecked (pjreddie) or exit on failure
  (AlexeyAB's xcalloc); everything the shim checks comes back as a status.
* A library built with -Ofast (Debian's is) switches the whole process to
  flush-to-zero / denormals-are-zero when loaded (a constructor from
  crtfastmath). The backend restores the process's mode right after loading
  and runs each library call in the library's own mode.
"""
from __future__ import annotations

import os
from types import ModuleType
from typing import Any

import numpy as np

from ..config import YoloConfig
from ..errors import InputError, ParityError
from ..layer_input import check_flavor, check_layer_input
from ..result import LayerRun, LayerStats
from .darknet_library import (CALL_LOCK, LOAD_LOCK, DarknetLibrary, LibraryFpMode, check_binding,
                              check_library_flavor, find_library, load_keeping_fp_mode, make_shim_builder,
                              shim_key)
from .ground import new_layer_struct
from .ref_build import CONFIG_CDEF

# The one-layer shim and the parts every shim shares (shim_common: library checks, fd silencing).
SHIM_SOURCES = ("libdarknet_shim.c", "shim_common.c")
SHIM_HEADERS = ("libdarknet_shim.h", "shim_common.h")
MODULE_NAME = "_darknet_shim"

CDEF = CONFIG_CDEF + """
typedef struct dps_result {
    float cost;
    int total_bbox, rewritten_bbox;
    int bad_image, bad_row;
} dps_result;

int dps_alexeyab(void);
int dps_library_path(char *buf, int cap);
int dps_library_has_gpu(void);
int dps_forward(const yref_config *cfg, const float *input, const float *truth,
                float *output, float *delta, dps_result *result, int quiet);
"""

# Status codes of darknet_ref/shim/libdarknet_shim.h (DPS_ERR_*).
_INPUT_STATUS = {
    1: "a required array is missing",
    2: "a size is zero, negative or too large for darknet's int indices",
    3: "a mask entry is outside [0, num)",
    4: "an option is out of range",
}
_TRUTH_STATUS = {
    8: ("AlexeyAB darknet would log a 'Wrong label' for it (x or y outside [0, 1], or a negative w or h) "
        "and run system() to append it to ./bad_label.list"),
    10: "its centre maps outside the grid, where darknet would index outside its arrays",
    11: "its class id is outside [0, classes); pjreddie's darknet would write outside the class block",
}
_LIBRARY_STATUS = {
    5: "out of memory",
    6: "could not redirect stdout/stderr to /dev/null around the darknet call",
    7: ("the layer make_yolo_layer returned does not match the header's struct layout: darknet.h and "
        "libdarknet.so come from different darknet versions or build options"),
    9: "the layer's truth buffer (l.truths) is smaller than max boxes times its truth stride",
}

_LOADED: dict[str, ModuleType] = {}


def one_layer_key(library: DarknetLibrary) -> str:
    """Cache key of the one-layer shim for ``library``; also the key its FP mode is noted under."""
    return shim_key(library, SHIM_SOURCES + SHIM_HEADERS)


def load_shim(library: DarknetLibrary) -> ModuleType:
    """The compiled shim for ``library`` (``ffi``, ``lib``), built once per cache key.

    Loading it loads the library; the FP mode the library sets is noted under
    ``one_layer_key(library)`` (see ``parity.backends.darknet_library``).
    """
    key = one_layer_key(library)
    with LOAD_LOCK:
        mod = _LOADED.get(key)
        if mod is None:
            builder = make_shim_builder(library, cdef=CDEF, sources=SHIM_SOURCES, headers=SHIM_HEADERS)
            mod = load_keeping_fp_mode(MODULE_NAME, key, builder, note_mode_as=key)
            check_binding(mod, library)
            _LOADED[key] = mod
    return mod


def _raise_status(status: int, result: Any, library: DarknetLibrary, truth: np.ndarray) -> None:
    if status in _TRUTH_STATUS:
        b, r = int(result.bad_image), int(result.bad_row)
        raise InputError(f"truth[{b}, {r}] = {truth[b, r].tolist()} refused for {library.lib_path}: "
                         f"{_TRUTH_STATUS[status]}")
    if status in _INPUT_STATUS:
        raise InputError(f"{library.lib_path} refused the input: {_INPUT_STATUS[status]}")
    raise ParityError(f"running {library.lib_path} failed: {_LIBRARY_STATUS.get(status, f'status {status}')}")


def run_libdarknet(config: YoloConfig, x: np.ndarray, t: np.ndarray, flavor: str, *,
                   lib_path: str | os.PathLike[str] | None = None,
                   include_dir: str | os.PathLike[str] | None = None,
                   quiet: bool = True) -> LayerRun:
    """Run the [yolo] training forward pass of a real darknet library.

    Args:
        config, x, t, flavor: as ``run_reference`` passes them (x [b, n*(5+c), h, w],
            t [b, rows, 5|6]); re-validated here so no call can make darknet index
            outside its arrays.
        lib_path, include_dir: the ``libdarknet.so`` and the folder of its ``darknet.h``
            (Debian's package paths by default).
        quiet: silence darknet's prints (fds 1 and 2 to /dev/null during the call).

    Returns:
        LayerRun (backend "libdarknet", no roles or branches) whose stats hold ``cost``
        (``*l.cost``) and, for AlexeyAB, ``rewritten_bbox``/``total_bbox`` (see the
        module note on threads); the figures darknet does not expose are None.
    """
    flavor = check_flavor(flavor)
    x, t, shape = check_layer_input(config, x, t, flavor)
    library = find_library(lib_path, include_dir)
    check_library_flavor(library, flavor)
    mod = load_shim(library)
    ffi, lib = mod.ffi, mod.lib
    keep: list[Any] = []
    cfg = new_layer_struct(ffi, config, flavor, shape, t, keep)
    if config.class_map is not None and cfg.class_map == ffi.NULL:
        # pjreddie's parse_yolo reads map= too and its forward applies it (the truth_thresh branch and
        # the best-anchor pass); the library gets it as darknet would give it (see the module note)
        class_map = np.ascontiguousarray(config.class_map[: config.classes], dtype=np.int32)
        keep.append(class_map)
        cfg.class_map = ffi.from_buffer("int[]", class_map)
    output = np.empty_like(x)
    delta = np.empty_like(x)
    result = ffi.new("dps_result *")
    truth_ptr = ffi.from_buffer("float[]", t) if t.size else ffi.NULL
    with CALL_LOCK, LibraryFpMode(one_layer_key(library)):
        status = lib.dps_forward(cfg, ffi.from_buffer("float[]", x), truth_ptr,
                                 ffi.from_buffer("float[]", output, require_writable=True),
                                 ffi.from_buffer("float[]", delta, require_writable=True),
                                 result, int(quiet))
    if status != 0:
        _raise_status(status, result, library, t)
    ab = flavor == "alexeyab"
    # darknet keeps no count or IoU sums where the shim can read them: those stay None.
    stats = LayerStats(cost=float(result.cost), count=None, count_raw=None, tot_iou=None, avg_iou=None,
                       rewritten_bbox=int(result.rewritten_bbox) if ab else None,
                       total_bbox=int(result.total_bbox) if ab else None)
    return LayerRun(output, delta, stats, roles=None, branches={}, backend="libdarknet")
