"""A real, installed darknet library as the reference (``backend="libdarknet"``).

A small C shim (``darknet_ref/shim/``) is compiled with cffi against the
library's OWN ``darknet.h`` and linked to its ``libdarknet.so``. It builds
one [yolo] layer with the library's ``make_yolo_layer``, sets the options as
darknet's ``parse_yolo`` does, runs the library's ``forward_yolo_layer`` in
training mode and copies out output, delta and cost (and AlexeyAB's counters).

Which darknet: the header decides at compile time. AlexeyAB's ``darknet.h``
declares ``network_state`` (its forward takes one); pjreddie's does not. The
requested flavor must agree with the header, otherwise ``BuildError``.

Defaults are Debian's ``darknet`` package (pjreddie, 2018):
``/usr/lib/darknet/libdarknet.so`` and ``/usr/lib/darknet/include``.

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
* darknet's own allocations are unchecked (pjreddie) or exit on failure
  (AlexeyAB's xcalloc); everything the shim checks comes back as a status.
* A library built with -Ofast (Debian's is) switches the whole process to
  flush-to-zero / denormals-are-zero when loaded (a constructor from
  crtfastmath). The backend restores the process's mode right after loading
  and runs each library call in the library's own mode.
"""
from __future__ import annotations

import hashlib
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Sequence

import cffi
import numpy as np

from .config import YoloConfig
from .errors import BuildError, InputError, ParityError
from .layer_input import check_flavor, check_layer_input
from .native import load_cached, sanitize_flags
from ._build_ref import CONFIG_CDEF, REF_DIR
from .reference import FLAVOR_CODES, fill_layer_struct
from .result import LayerRun, LayerStats

DEFAULT_LIB = Path("/usr/lib/darknet/libdarknet.so")
DEFAULT_INCLUDE = Path("/usr/lib/darknet/include")
HEADER_NAME = "darknet.h"
SHIM_SOURCE = "libdarknet_shim.c"
SHIM_HEADER = "libdarknet_shim.h"
MODULE_NAME = "_darknet_shim"
# The shim does no arithmetic of its own; gnu99 for dladdr and darknet.h.
CFLAGS = ["-std=gnu99", "-O2", "-fno-strict-aliasing", "-Wno-unused-function"]

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

_FLAVOR_BUILD = {"alexeyab": "an AlexeyAB/darknet", "pjreddie": "a pjreddie/darknet"}
_FLAVOR_LOOKS = {
    "alexeyab": "AlexeyAB/darknet's darknet.h (it declares network_state)",
    "pjreddie": "pjreddie/darknet's darknet.h (it declares no network_state)",
}

# Identifiers the shim uses from darknet.h, per flavor.
_NEEDS_COMMON = (
    "layer", "network", "free_layer", "YOLO", "batch", "total", "classes", "outputs", "mask", "cost",
    "biases", "output", "delta", "max_boxes", "ignore_thresh", "truth_thresh", "truths", "input",
    "truth", "train", "index",
)
_NEEDS_ALEXEYAB = (
    "network_state", "IOU_LOSS", "MSE", "IOU", "GIOU", "DIOU", "CIOU", "show_details", "max_delta",
    "classes_multipliers", "label_smooth_eps", "scale_x_y", "objectness_smooth", "new_coords",
    "iou_normalizer", "obj_normalizer", "cls_normalizer", "delta_normalizer", "iou_loss",
    "iou_thresh_kind", "focal_loss", "iou_thresh", "truth_size", "total_bbox", "rewritten_bbox",
    "cur_iteration", "badlabels_reject_threshold", "delta_rolling_max", "delta_rolling_avg",
    "delta_rolling_std", "adversarial",
)

_LOADED: dict[str, ModuleType] = {}
# The floating-point mode each loaded library set for itself (see _load_keeping_fp_mode).
_LIBRARY_FP_MODE: dict[str, int] = {}
_LOAD_LOCK = threading.Lock()
_CALL_LOCK = threading.Lock()  # the fd redirect is process-wide


@dataclass(frozen=True)
class DarknetLibrary:
    """A located darknet build: its library, header, and the flavor the header shows."""

    lib_path: Path
    include_dir: Path
    header: Path
    flavor: str


def shim_dir() -> Path:
    """The shim's C sources: in the source tree, else installed as package data."""
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "darknet_ref" / "shim", here / "_csrc" / "shim"):
        if (candidate / SHIM_SOURCE).is_file():
            return candidate
    raise BuildError(f"the libdarknet shim sources ({SHIM_SOURCE}) are not beside the package: "
                     "reinstall darknet-parity from its source tree")


def _strip_c_comments(text: str) -> str:
    return re.sub(r"/\*.*?\*/|//[^\n]*", " ", text, flags=re.S)


def header_flavor(text: str) -> str:
    """``"alexeyab"`` if the header declares ``network_state``, else ``"pjreddie"``."""
    return "alexeyab" if re.search(r"\bnetwork_state\b", _strip_c_comments(text)) else "pjreddie"


def _missing_identifiers(text: str, flavor: str) -> list[str]:
    code = _strip_c_comments(text)
    needs = _NEEDS_COMMON + (_NEEDS_ALEXEYAB if flavor == "alexeyab" else ())
    return [name for name in needs if not re.search(rf"\b{name}\b", code)]


def find_library(lib_path: str | os.PathLike[str] | None = None,
                 include_dir: str | os.PathLike[str] | None = None) -> DarknetLibrary:
    """Check that the library and its ``darknet.h`` exist and the header has what the shim needs."""
    lib = Path(lib_path) if lib_path is not None else DEFAULT_LIB
    inc = Path(include_dir) if include_dir is not None else DEFAULT_INCLUDE
    if not lib.is_file():
        raise BuildError(
            f"darknet library not found: {lib} does not exist. Install Debian's package "
            "(apt-get install darknet) or pass darknet_lib=<path to a libdarknet.so>")
    header = inc / HEADER_NAME
    if not header.is_file():
        raise BuildError(
            f"darknet header not found: {header} does not exist. Pass darknet_include=<the folder holding "
            f"the darknet.h that {lib} was built from> (Debian's package puts it in {DEFAULT_INCLUDE})")
    text = header.read_text(errors="replace")
    flavor = header_flavor(text)
    missing = _missing_identifiers(text, flavor)
    if missing:
        raise BuildError(
            f"{header} looks like {_FLAVOR_LOOKS[flavor]} but lacks what the libdarknet shim needs: "
            f"{', '.join(missing)}. Use the darknet.h of pjreddie/darknet (2018) or AlexeyAB/darknet "
            f"that {lib} was built from")
    return DarknetLibrary(lib.resolve(), inc.resolve(), header.resolve(), flavor)


def check_library_flavor(library: DarknetLibrary, flavor: str) -> None:
    """BuildError unless the header's flavor is the requested one."""
    if library.flavor != flavor:
        raise BuildError(
            f"{library.header} looks like {_FLAVOR_LOOKS[library.flavor]}, but flavor {flavor!r} was "
            f"requested: point darknet_lib/darknet_include at {_FLAVOR_BUILD[flavor]} build, or use "
            f"flavor={library.flavor!r}")


def shim_key(library: DarknetLibrary, extra_files: Sequence[str] = (), tag: str = "") -> str:
    """Cache key: the library (path, size, mtime), its header, the shim sources and flags.

    ``extra_files`` (names in the shim folder) and ``tag`` let another module
    compiled against the same library (the training glue) key itself the same way.
    """
    stat = library.lib_path.stat()
    h = hashlib.sha256()
    for part in (tag, os.fspath(library.lib_path), str(stat.st_size), str(stat.st_mtime_ns), library.flavor,
                 " ".join(CFLAGS), cffi.__version__):
        h.update(part.encode() + b"\0")
    h.update(library.header.read_bytes())
    src = shim_dir()
    for path in [src / name for name in (*extra_files, SHIM_SOURCE, SHIM_HEADER)] + [REF_DIR / "yolo_ref.h"]:
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def make_shim_builder(library: DarknetLibrary, *, cdef: str = CDEF, source: str = SHIM_SOURCE,
                      headers: Sequence[str] = (SHIM_HEADER,)) -> Callable[[str], cffi.FFI]:
    """An FFI factory for ``load_cached``: C from the shim folder against ``library``'s own header.

    Defaults build the one-layer shim; the training glue passes its own
    cdef, source and headers.
    """
    src = shim_dir()

    def make(module_name: str) -> cffi.FFI:
        ffi = cffi.FFI()
        ffi.cdef(cdef)
        ffi.set_source(
            module_name,
            "".join(f'#include "{h}"\n' for h in headers),
            sources=[os.fspath(src / source)],
            include_dirs=[os.fspath(src), os.fspath(REF_DIR), os.fspath(library.include_dir)],
            define_macros=[("DPS_ALEXEYAB", "1" if library.flavor == "alexeyab" else "0")],
            extra_compile_args=CFLAGS + sanitize_flags(),
            extra_link_args=sanitize_flags(),
            # The full path (these libraries carry no SONAME) binds this shim to this very
            # file even when another libdarknet.so is loaded; the rpath covers one that has one.
            extra_objects=[os.fspath(library.lib_path)],
            runtime_library_dirs=[os.fspath(library.lib_path.parent)],
            libraries=["dl"],
        )
        return ffi

    return make


def _check_binding(mod: ModuleType, library: DarknetLibrary) -> None:
    """The loaded shim must call into ``library`` (a CPU build) with the header's flavor."""
    ffi, lib = mod.ffi, mod.lib
    if bool(lib.dps_alexeyab()) != (library.flavor == "alexeyab"):
        raise BuildError(f"the compiled shim for {library.lib_path} disagrees with {library.header} on the flavor")
    buf = ffi.new("char[]", 4096)
    if lib.dps_library_path(buf, 4096) == 0:
        bound = Path(ffi.string(buf).decode(errors="replace"))
        if not (bound.exists() and os.path.samefile(bound, library.lib_path)):
            raise BuildError(
                f"the shim for {library.lib_path} is bound to {bound} instead (another library of the same "
                "name was loaded first in this process); run each library in its own process")
    if lib.dps_library_has_gpu():
        raise BuildError(
            f"{library.lib_path} was built with GPU support: its CPU forward_yolo_layer skips the activation "
            "and its structs carry GPU fields. Use a CPU build (GPU=0)")


def load_shim(library: DarknetLibrary) -> ModuleType:
    """The compiled shim for ``library`` (``ffi``, ``lib``), built once per cache key."""
    key = shim_key(library)
    with _LOAD_LOCK:
        mod = _LOADED.get(key)
        if mod is None:
            mod = _load_keeping_fp_mode(key, library)
            _check_binding(mod, library)
            _LOADED[key] = mod
    return mod


def _load_keeping_fp_mode(key: str, library: DarknetLibrary) -> ModuleType:
    """Load the shim (and with it the library) without letting the library change the process's FP mode.

    A darknet built with -Ofast (Debian's is) turns on flush-to-zero and
    denormals-are-zero for the whole process when it is loaded. We note the
    mode it sets, put ours back, and use its mode only around its own calls.
    """
    from .native import load_reference

    fp = load_reference().lib
    before = fp.yref_fp_mode()
    mod = load_cached(MODULE_NAME, key, make_shim_builder(library))
    _LIBRARY_FP_MODE[key] = fp.yref_fp_mode()
    fp.yref_set_fp_mode(before)
    return mod


class _LibraryFpMode:
    """Run a library call in the FP mode the library set for itself when loaded."""

    def __init__(self, key: str) -> None:
        from .native import load_reference

        self.fp = load_reference().lib
        self.mode = _LIBRARY_FP_MODE.get(key)

    def __enter__(self) -> None:
        self.saved = self.fp.yref_fp_mode()
        if self.mode is not None:
            self.fp.yref_set_fp_mode(self.mode)

    def __exit__(self, *exc: object) -> None:
        self.fp.yref_set_fp_mode(self.saved)


def _shim_config(ffi: Any, config: YoloConfig, flavor: str, shape: Any, truth: np.ndarray,
                 keep: list[Any]) -> Any:
    """The C reference's own config struct: the shim reads the same fields."""
    c = ffi.new("yref_config *")
    c.flavor = FLAVOR_CODES[flavor]
    fill_layer_struct(ffi, c, config, flavor, shape, truth, keep)
    return c


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
        ReferenceResult with ``stats["cost"]`` (``*l.cost``) and, for AlexeyAB,
        ``rewritten_bbox``/``total_bbox`` (see the module note on threads).
    """
    flavor = check_flavor(flavor)
    x, t, shape = check_layer_input(config, x, t, flavor)
    library = find_library(lib_path, include_dir)
    check_library_flavor(library, flavor)
    mod = load_shim(library)
    ffi, lib = mod.ffi, mod.lib
    keep: list[Any] = []
    cfg = _shim_config(ffi, config, flavor, shape, t, keep)
    output = np.empty_like(x)
    delta = np.empty_like(x)
    result = ffi.new("dps_result *")
    truth_ptr = ffi.from_buffer("float[]", t) if t.size else ffi.NULL
    with _CALL_LOCK, _LibraryFpMode(shim_key(library)):
        status = lib.dps_forward(cfg, ffi.from_buffer("float[]", x), truth_ptr,
                                 ffi.from_buffer("float[]", output, require_writable=True),
                                 ffi.from_buffer("float[]", delta, require_writable=True),
                                 result, int(quiet))
    if status != 0:
        _raise_status(status, result, library, t)
    stats: dict[str, Any] = {"cost": float(result.cost)}
    if flavor == "alexeyab":
        stats.update(rewritten_bbox=int(result.rewritten_bbox), total_bbox=int(result.total_bbox))
    # darknet exposes only these figures: the others are reported as not known (NaN / -1)
    return LayerRun(output, delta, LayerStats.from_mapping(stats), None, None, {}, backend="libdarknet")
