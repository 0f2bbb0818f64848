"""A real, installed darknet library: finding it, compiling C glue against it, calling it safely.

Used by the one-layer backend (``parity.backends.libdarknet``) and the training
recorder (``parity.darknet_train``); both compile C from ``darknet_ref/shim/``
against the library's OWN ``darknet.h`` and link it to its ``libdarknet.so``.

* ``find_library`` checks the library and header exist and the header has
  what the shim uses; ``header_flavor`` tells AlexeyAB's header (it declares
  ``network_state``) from pjreddie's.
* ``shim_key`` / ``make_shim_builder`` key and build a cffi module from
  shim sources (``parity.backends.native.load_cached`` caches it);
  ``check_binding`` checks a loaded module calls into that very library, a
  CPU build, with the header's flavor.
* Floating-point mode: a library built with -Ofast (Debian's is) switches the
  whole process to flush-to-zero / denormals-are-zero when loaded.
  ``load_keeping_fp_mode`` loads a module and puts the process's mode back,
  noting the library's; ``LibraryFpMode(key)`` runs a call in that mode.
* ``CALL_LOCK`` serialises calls into the library (the shims redirect fds 1
  and 2, process-wide); ``LOAD_LOCK`` serialises loading.

Defaults are Debian's ``darknet`` package (pjreddie, 2018):
``/usr/lib/darknet/libdarknet.so`` and ``/usr/lib/darknet/include``.
"""
from __future__ import annotations

import hashlib
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Callable, Sequence

import cffi

from ..errors import BuildError
from ..roles import ref_dir
from .c_reference import load_reference
from .native import load_cached, sanitize_flags

DEFAULT_LIB = Path("/usr/lib/darknet/libdarknet.so")
DEFAULT_INCLUDE = Path("/usr/lib/darknet/include")
HEADER_NAME = "darknet.h"
# The shims do no arithmetic of their own; gnu99 for dladdr and darknet.h.
CFLAGS = ["-std=gnu99", "-O2", "-fno-strict-aliasing", "-Wno-unused-function"]

_FLAVOR_BUILD = {"alexeyab": "an AlexeyAB/darknet", "pjreddie": "a pjreddie/darknet"}
_FLAVOR_LOOKS = {
    "alexeyab": "AlexeyAB/darknet's darknet.h (it declares network_state)",
    "pjreddie": "pjreddie/darknet's darknet.h (it declares no network_state)",
}

# Identifiers the one-layer shim uses from darknet.h, per flavor.
NEEDS_COMMON = (
    "layer", "network", "free_layer", "YOLO", "batch", "total", "classes", "outputs", "mask", "cost",
    "biases", "output", "delta", "max_boxes", "ignore_thresh", "truth_thresh", "truths", "input",
    "truth", "train", "index", "map",
)
NEEDS_ALEXEYAB = (
    "network_state", "IOU_LOSS", "MSE", "IOU", "GIOU", "DIOU", "CIOU", "show_details", "max_delta",
    "classes_multipliers", "label_smooth_eps", "scale_x_y", "objectness_smooth", "new_coords",
    "iou_normalizer", "obj_normalizer", "cls_normalizer", "delta_normalizer", "iou_loss",
    "iou_thresh_kind", "focal_loss", "iou_thresh", "truth_size", "total_bbox", "rewritten_bbox",
    "cur_iteration", "badlabels_reject_threshold", "delta_rolling_max", "delta_rolling_avg",
    "delta_rolling_std", "adversarial",
)

LOAD_LOCK = threading.Lock()
"""Held while a module compiled against a library is loaded (and the FP mode juggled)."""
CALL_LOCK = threading.Lock()
"""Held around every call into a darknet library: the shims' fd redirect is process-wide."""

# The floating-point mode each loaded library set for itself, by the key it was loaded under.
_LIBRARY_FP_MODE: dict[str, int] = {}


@dataclass(frozen=True)
class DarknetLibrary:
    """A located darknet build: its library, header, and the flavor the header shows."""

    lib_path: Path
    include_dir: Path
    header: Path
    flavor: str


def shim_dir() -> Path:
    """The shim's C sources: ``darknet_ref/shim`` of a checkout, else the installed package data."""
    folder = ref_dir() / "shim"
    if not folder.is_dir():
        raise BuildError(f"the libdarknet shim sources ({folder}) are not beside the package: "
                         "reinstall darknet-parity from its source tree")
    return folder


def strip_c_comments(text: str) -> str:
    """C source text with its comments replaced by spaces (enough for identifier searches)."""
    return re.sub(r"/\*.*?\*/|//[^\n]*", " ", text, flags=re.S)


def header_flavor(text: str) -> str:
    """``"alexeyab"`` if the header declares ``network_state``, else ``"pjreddie"``."""
    return "alexeyab" if re.search(r"\bnetwork_state\b", strip_c_comments(text)) else "pjreddie"


def missing_identifiers(text: str, needs: Sequence[str]) -> list[str]:
    """The names of ``needs`` that the C text ``text`` (comments aside) never mentions."""
    code = strip_c_comments(text)
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
    missing = missing_identifiers(text, NEEDS_COMMON + (NEEDS_ALEXEYAB if flavor == "alexeyab" else ()))
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


def shim_key(library: DarknetLibrary, files: Sequence[str], tag: str = "") -> str:
    """Cache key: the library (path, size, mtime), its header, the shim ``files`` and the flags.

    ``files`` are names in the shim folder (sources and headers); ``tag``
    tells apart modules built from the same files.
    """
    stat = library.lib_path.stat()
    h = hashlib.sha256()
    for part in (tag, os.fspath(library.lib_path), str(stat.st_size), str(stat.st_mtime_ns), library.flavor,
                 " ".join(CFLAGS), cffi.__version__):
        h.update(part.encode() + b"\0")
    h.update(library.header.read_bytes())
    src = shim_dir()
    for path in [src / name for name in files] + [ref_dir() / "yolo_ref.h"]:
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def make_shim_builder(library: DarknetLibrary, *, cdef: str, sources: Sequence[str],
                      headers: Sequence[str]) -> Callable[[str], cffi.FFI]:
    """An FFI factory for ``load_cached``: ``sources`` from the shim folder, compiled against ``library``.

    ``headers`` are included by cffi's glue code (after ``darknet.h`` where they include it).
    """
    src = shim_dir()

    def make(module_name: str) -> cffi.FFI:
        ffi = cffi.FFI()
        ffi.cdef(cdef)
        ffi.set_source(
            module_name,
            "".join(f'#include "{h}"\n' for h in headers),
            sources=[os.fspath(src / s) for s in sources],
            include_dirs=[os.fspath(src), os.fspath(ref_dir()), os.fspath(library.include_dir)],
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


def check_binding(mod: ModuleType, library: DarknetLibrary) -> None:
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


def load_keeping_fp_mode(module_name: str, key: str, make_ffi: Callable[[str], cffi.FFI], *,
                         note_mode_as: str | None = None) -> ModuleType:
    """``load_cached(module_name, key, make_ffi)`` without letting the library change the process's FP mode.

    A darknet built with -Ofast turns on flush-to-zero and denormals-are-zero
    for the whole process when it is loaded. The mode it sets is noted under
    ``note_mode_as`` (for ``LibraryFpMode``), and the process's mode put back.
    Call under ``LOAD_LOCK``.
    """
    fp = load_reference().lib
    before = fp.yref_fp_mode()
    mod = load_cached(module_name, key, make_ffi)
    if note_mode_as is not None:
        _LIBRARY_FP_MODE[note_mode_as] = fp.yref_fp_mode()
    fp.yref_set_fp_mode(before)
    return mod


def library_fp_mode(key: str) -> int | None:
    """The FP mode the library loaded under ``key`` set for itself (None: not noted)."""
    return _LIBRARY_FP_MODE.get(key)


class LibraryFpMode:
    """Context manager: run a library call in the FP mode the library set for itself when loaded.

    ``key`` is the ``note_mode_as`` it was loaded under; the process's own
    mode is restored on exit.
    """

    def __init__(self, key: str) -> None:
        self.fp = load_reference().lib
        self.mode = library_fp_mode(key)

    def __enter__(self) -> None:
        self.saved = self.fp.yref_fp_mode()
        if self.mode is not None:
            self.fp.yref_set_fp_mode(self.mode)

    def __exit__(self, *exc: object) -> None:
        self.fp.yref_set_fp_mode(self.saved)
