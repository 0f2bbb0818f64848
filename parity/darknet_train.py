"""Recordings of a real darknet training run: what every [yolo] layer saw after each forward pass.

A pjreddie darknet library (Debian's ``darknet`` package by default) builds a
whole network from a cfg it ships (``yolov3-tiny.cfg``), with the input size
and batch reduced so it runs in seconds and random initial weights (C's
``rand()`` seeded, no weights file). It is fed photographs (the ones the
package ships, by default), resized by darknet's own ``load_image_color``,
with boxes from a labels file, and trains for a few iterations: its own
``forward_network``, ``backward_network`` and ``update_network`` on the
network as ``parse_network_cfg`` built it.

After each forward pass, before the backward pass, every [yolo] layer gives
one format-v1 case: its input (the previous layer's output, which
``forward_network`` passes on as ``net.input``), the network's truth buffer
(90 boxes of x, y, w, h, class per image in pjreddie, stored as
``[batch, 90, 6]`` with track 0), its output, its delta and ``*l.cost``.
The case's cfg is ``[net]`` + that layer's [yolo] section (``dump_yolo_cfg``
of the layer as our parser reads the training cfg), so ``load_case`` gives
the layer's config.

The cfg copy darknet trains (written to a temporary folder) changes only
``[net]``: ``width``/``height`` (``size``), ``batch`` with ``subdivisions=1``
(one update per iteration), ``burn_in=0`` and ``policy=constant`` (with the
cfg's ``burn_in=1000`` the first iterations' rate is ``learning_rate *
(k/1000)^4``, so the weights would not move), and ``learning_rate`` when one
is given. Iteration ``k`` feeds images ``k*batch .. k*batch+batch-1``
(cycling through the list).

Safety: darknet ends the process on what it cannot read (its parser calls
``error()``/``exit()``; Debian's OpenCV image loader runs ``system("echo PATH
>> bad.list")`` for a file it cannot decode and goes on with a blank image).
So everything is checked here first: the cfg by our own parser and layer
walk (layer types limited to those a YOLOv3 cfg uses), the images (JPEG, PNG
or BMP by their first bytes, copied to short temporary names, decoded by the
library's stb_image before darknet's loader sees them) and the labels. The C
glue (``darknet_ref/shim/darknet_train.c``) is compiled with cffi against the
library's own ``darknet.h``, silences darknet's prints and runs every call in
the floating-point mode the library set for itself (see ``parity.backends.darknet_library``).

Seeding: ``seed`` seeds ``rand()`` before ``parse_network_cfg``. pjreddie's
``make_yolo_layer`` calls ``srand(0)``, so the layers after the first [yolo]
get the same initial weights whatever the seed.
"""
from __future__ import annotations

import hashlib
import math
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Iterator, Sequence

import cffi
import numpy as np
import yaml

from . import __version__
from .backends.darknet_library import (CALL_LOCK, LOAD_LOCK, DarknetLibrary, LibraryFpMode, check_binding,
                                       check_library_flavor, find_library, library_fp_mode,
                                       load_keeping_fp_mode, make_shim_builder, missing_identifiers, shim_key)
from .backends.libdarknet import SHIM_HEADERS, load_shim, one_layer_key
from .case import Case, save_case
from .cfg import LayerWalk, Unsized, dump_yolo_cfg, parse_cfg
from .config import PJREDDIE_TRUTH_BOXES, YoloConfig
from .errors import BuildError, ConfigError, InputError, ParityError
from .layer_input import check_layer_input

DEBIAN_SHARE = Path("/usr/share/darknet")
DEFAULT_CFG = DEBIAN_SHARE / "cfg" / "yolov3-tiny.cfg"
DEFAULT_IMAGE_DIR = DEBIAN_SHARE / "data"
DEFAULT_LABELS = Path(__file__).resolve().parent.parent / "fixtures" / "darknet-train" / "labels.yaml"
DEFAULT_ITERATIONS = 3
DEFAULT_SIZE = 128
DEFAULT_BATCH = 4
IMPLEMENTATION = "pjreddie/darknet"
FLAVOR = "pjreddie"

TRAIN_SOURCE = "darknet_train.c"
TRAIN_HEADER = "darknet_train.h"
MODULE_NAME = "_darknet_train"

# Layer types the recorder lets darknet build: those of pjreddie's YOLOv3 cfgs, which
# our layer walk sizes as pjreddie does and whose CPU backward and update darknet has.
TRAIN_LAYER_TYPES = ("convolutional", "maxpool", "route", "upsample", "shortcut", "yolo")
# pjreddie's truth stride: x, y, w, h, class.
TRUTH_STRIDE = 5
IMAGE_MAGIC = ((b"\xff\xd8\xff", ".jpg", "JPEG"), (b"\x89PNG\r\n\x1a\n", ".png", "PNG"), (b"BM", ".bmp", "BMP"))
# x86 MXCSR flush-to-zero and denormals-are-zero bits (what -Ofast's crtfastmath sets).
_FTZ_DAZ = 0x8040

CDEF = """
typedef struct dpt_net dpt_net;
typedef struct dpt_net_info {
    int layers;
    int batch, subdivisions;
    int w, h, c, inputs;
    int truths;
    float learning_rate, momentum, decay;
    int burn_in, policy;
} dpt_net_info;
typedef struct dpt_layer {
    int yolo;
    int batch, w, h, c, out_w, out_h, out_c, inputs, outputs;
    int n, total, classes, max_boxes, truths;
} dpt_layer;
typedef struct dpt_step {
    float net_cost;
    float rate;
    int updated;
    long long seen;
    int bad_layer;
} dpt_step;

int dps_alexeyab(void);
int dps_library_path(char *buf, int cap);
int dps_library_has_gpu(void);

int dpt_open(const char *cfg_path, unsigned seed, int quiet, dpt_net **out);
void dpt_close(dpt_net *net);
int dpt_net_info_of(const dpt_net *net, dpt_net_info *info);
int dpt_layer_info(const dpt_net *net, int index, dpt_layer *info);
int dpt_load_image(const dpt_net *net, const char *path, float *dst, int cap,
                   char *reason, int reason_cap, int quiet);
int dpt_train_step(dpt_net *net, const float *input, int input_len, const float *truth, int truth_len,
                   int count, const int *layers, const int *caps,
                   float *const *ins, float *const *outs, float *const *deltas, float *costs,
                   dpt_step *step, int quiet);
"""

# Identifiers darknet_train.c uses from darknet.h (beyond what libdarknet_shim.c needs).
_NEEDS_TRAIN = (
    "parse_network_cfg", "forward_network", "backward_network", "update_network", "free_network",
    "load_image_color", "free_image", "get_current_rate", "rand_normal", "seen", "subdivisions",
    "truths", "inputs", "learning_rate", "burn_in", "policy", "out_w",
)

# DPT_* status codes of darknet_train.h.
_STATUS = {
    1: "out of memory",
    5: "out of memory",
    21: "a required array is missing",
    22: "could not redirect stdout/stderr to /dev/null around the darknet call",
    23: "parse_network_cfg returned no usable network",
    24: "a layer index is outside the network",
    25: "a recorded layer is not a [yolo] layer after another layer",
    26: "a buffer's size disagrees with the network darknet built",
    27: "the image cannot be decoded",
    28: "darknet's image loader gave a blank image (its OpenCV path could not read the file)",
    29: "a layer's output is not finite",
}

_LOADED: dict[str, ModuleType] = {}


# --------------------------------------------------------------------------
# Settings


@dataclass(frozen=True)
class TrainSettings:
    """One recording: which network, data and schedule (defaults: Debian's package)."""

    cfg: Path = DEFAULT_CFG
    images: tuple[Path, ...] | None = None      # None: every *.jpg in /usr/share/darknet/data, sorted
    labels: Path = DEFAULT_LABELS
    iterations: int = DEFAULT_ITERATIONS
    size: int = DEFAULT_SIZE
    batch: int = DEFAULT_BATCH
    seed: int = 0
    learning_rate: float | None = None          # None: the cfg's
    darknet_lib: Path | None = None
    darknet_include: Path | None = None

    def image_paths(self) -> tuple[Path, ...]:
        if self.images is not None:
            return tuple(Path(p) for p in self.images)
        found = tuple(sorted(DEFAULT_IMAGE_DIR.glob("*.jpg")))
        if not found:
            raise ParityError(f"no images given and none in {DEFAULT_IMAGE_DIR} (Debian's darknet package "
                              "ships its photographs there: apt-get install darknet), or pass --images")
        return found


def check_settings(settings: TrainSettings) -> None:
    """ParityError naming the first option out of range."""
    for name, value, low in (("iterations", settings.iterations, 1), ("size", settings.size, 1),
                             ("batch", settings.batch, 1)):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ParityError(f"--{name} {value!r}: must be an integer of at least {low}")
    if settings.size > 4096 or settings.batch > 64 or settings.iterations > 1000:
        raise ParityError(f"--size {settings.size}, --batch {settings.batch}, --iterations {settings.iterations}: "
                          "at most 4096, 64 and 1000 (a recording is meant to run in seconds)")
    if not isinstance(settings.seed, int) or not 0 <= settings.seed <= 0xFFFFFFFF:
        raise ParityError(f"--seed {settings.seed!r}: darknet seeds C's rand() with an unsigned int "
                          "(0 .. 4294967295)")
    lr = settings.learning_rate
    if lr is not None and not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr >= 0):
        raise ParityError(f"--learning-rate {lr!r}: must be a finite number >= 0")


# --------------------------------------------------------------------------
# Labels


@dataclass(frozen=True)
class LabelBox:
    """One box: darknet's class id and x, y, w, h relative to the image (centre and size)."""

    cls: int
    x: float
    y: float
    w: float
    h: float
    name: str | None = None


_BOX_KEYS = {"class", "x", "y", "w", "h", "name"}


def load_labels(path: str | os.PathLike[str]) -> dict[str, list[LabelBox]]:
    """Read a labels file: image file name -> its boxes (ParityError naming file, image and box).

    The file is YAML (JSON is YAML too)::

        images:
          dog.jpg:
            - {class: 16, name: dog, x: 0.285, y: 0.660, w: 0.224, h: 0.555}
          scream.jpg: []        # an image with no objects: every cell is background

    x, y is the box centre and w, h its size, relative to the image (darknet's
    label files); ``class`` indexes the class list the cfg was made for
    (coco.names for yolov3-tiny); ``name`` is for the reader only.
    """
    where = Path(path)
    if not where.is_file():
        raise ParityError(f"labels file {where}: no such file")
    try:
        data = yaml.safe_load(where.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ParityError(f"labels file {where}: not valid YAML: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), dict):
        raise ParityError(f"labels file {where}: expected a mapping with an 'images' mapping "
                          "(image file name -> list of boxes)")
    unknown = sorted(set(data) - {"images", "classes", "format", "note"})
    if unknown:
        raise ParityError(f"labels file {where}: unknown top-level key(s) {', '.join(map(str, unknown))} "
                          "(expected images, and optionally classes, format, note)")
    labels: dict[str, list[LabelBox]] = {}
    for image, boxes in data["images"].items():
        if not isinstance(image, str) or not image or "/" in image:
            raise ParityError(f"labels file {where}: image key {image!r} must be a file name (no folder)")
        if boxes is None:
            boxes = []
        if not isinstance(boxes, list):
            raise ParityError(f"labels file {where}: image {image!r}: expected a list of boxes, "
                              f"got {type(boxes).__name__}")
        if len(boxes) > PJREDDIE_TRUTH_BOXES:
            raise ParityError(f"labels file {where}: image {image!r} has {len(boxes)} boxes; pjreddie's darknet "
                              f"holds {PJREDDIE_TRUTH_BOXES} per image")
        labels[image] = [_label_box(where, image, k, box) for k, box in enumerate(boxes)]
    return labels


def _label_box(where: Path, image: str, k: int, box: Any) -> LabelBox:
    at = f"labels file {where}: image {image!r} box {k}"
    if not isinstance(box, dict):
        raise ParityError(f"{at}: expected a mapping with class, x, y, w, h, got {box!r}")
    missing = [key for key in ("class", "x", "y", "w", "h") if key not in box]
    if missing:
        raise ParityError(f"{at}: missing {', '.join(missing)}")
    extra = sorted(set(map(str, box)) - _BOX_KEYS)
    if extra:
        raise ParityError(f"{at}: unknown key(s) {', '.join(extra)} (expected class, x, y, w, h, name)")
    cls = box["class"]
    if not isinstance(cls, int) or isinstance(cls, bool) or cls < 0:
        raise ParityError(f"{at}: class {cls!r} must be a class id (an integer >= 0)")
    values = {}
    for key in ("x", "y", "w", "h"):
        v = box[key]
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
            raise ParityError(f"{at}: {key} {v!r} must be a finite number")
        values[key] = float(np.float32(v))     # what darknet's float truth buffer holds
    if not 0 < values["x"] < 1:
        raise ParityError(f"{at}: x {box['x']!r} must be in (0, 1): the centre is relative to the image, and "
                          "darknet ends an image's box list at the first x == 0")
    if not 0 <= values["y"] < 1:
        raise ParityError(f"{at}: y {box['y']!r} must be in [0, 1): the centre is relative to the image")
    for key in ("w", "h"):
        if not 0 < values[key] <= 1:
            raise ParityError(f"{at}: {key} {box[key]!r} must be in (0, 1]: the size is relative to the image")
    name = box.get("name")
    return LabelBox(cls, values["x"], values["y"], values["w"], values["h"],
                    None if name is None else str(name))


# --------------------------------------------------------------------------
# The cfg darknet trains


@dataclass(frozen=True)
class TrainingCfg:
    """The cfg text darknet parses, what was changed in [net], and our reading of it."""

    text: str
    overrides: dict[str, str]
    yolo_layers: list[Any]          # parity.cfg.YoloLayer, in order
    layer_count: int
    sections: list[Any]             # parity.cfg.Section: [net], then one per darknet layer


def training_cfg(text: str, settings: TrainSettings, path: str) -> TrainingCfg:
    """``text`` with [net] set for the recording, checked so darknet's parser cannot end the process."""
    overrides = {"width": str(settings.size), "height": str(settings.size), "batch": str(settings.batch),
                 "subdivisions": "1", "burn_in": "0", "policy": "constant"}
    if settings.learning_rate is not None:
        overrides["learning_rate"] = repr(float(settings.learning_rate))
    out, added = _override_net(text, overrides, path)
    where = f"{path} at --size {settings.size}"
    if added:
        where += f" (line numbers of the training copy: {added} line(s) added after [net])"
    try:
        parsed = parse_cfg(out, path=where, flavor=FLAVOR)
    except ConfigError as exc:
        raise ParityError(f"darknet cannot train {path} as asked: {exc}") from None
    _check_trainable(parsed, settings, path)
    return TrainingCfg(out, overrides, list(parsed.yolo_layers), len(parsed.sections) - 1, list(parsed.sections))


def _strip(line: str) -> str:
    return re.sub(r"[ \t\r\n]", "", line)


def _override_net(text: str, overrides: dict[str, str], path: str) -> tuple[str, int]:
    """``text`` with [net]'s lines for ``overrides`` set to the new values, in place; keys [net] lacks
    go right after its header. Returns the text and how many lines were added (0 keeps line numbers)."""
    lines = text.split("\n")
    net_at = None
    present: set[str] = set()
    for k, line in enumerate(lines):
        stripped = _strip(line)
        if stripped.startswith("["):
            if net_at is not None:
                break
            if stripped not in ("[net]", "[network]"):
                raise ParityError(f"{path}: line {k + 1}: the first section is {stripped}; darknet needs [net] first")
            net_at = k       # darknet reads only the first section as [net]
            continue
        if net_at is None or not stripped or stripped[0] in "#;":
            continue
        key = stripped.split("=", 1)[0]
        if key in overrides and key not in present:     # darknet reads the first of repeated keys
            lines[k] = f"{key}={overrides[key]}"
        present.add(key)
    if net_at is None:
        raise ParityError(f"{path}: no [net] section; darknet needs one first")
    added = [f"{key}={value}" for key, value in overrides.items() if key not in present]
    lines[net_at + 1:net_at + 1] = added
    return "\n".join(lines), len(added)


def _check_trainable(parsed: Any, settings: TrainSettings, path: str) -> None:
    sections = parsed.sections
    if parsed.channels != 3:
        raise ParityError(f"{path}: [net] channels={parsed.channels}; darknet's load_image_color gives 3")
    if parsed.batch != settings.batch:
        raise ParityError(f"{path}: darknet would train mini-batches of {parsed.batch} images, not "
                          f"--batch {settings.batch} (time_steps in [net]?)")
    if not parsed.yolo_layers:
        raise ParityError(f"{path}: no [yolo] layer to record")
    layers = sections[1:]
    if layers[-1].type != "yolo":
        raise ParityError(f"{path}: the last layer is {layers[-1].header} at line {layers[-1].line}; the recorder "
                          "needs a [yolo] last (darknet sizes the network's truth buffer from the last layer)")
    walk = LayerWalk(parsed.width, parsed.height, parsed.channels, sections[0])
    for index, section in enumerate(layers):
        if section.type not in TRAIN_LAYER_TYPES:
            raise ParityError(f"{path}: line {section.line}: {section.header} (layer {index}) is not one the "
                              f"recorder lets darknet train ({', '.join(TRAIN_LAYER_TYPES)})")
        walk.push(section)
        out = walk.next_input
        if isinstance(out, Unsized):
            raise ParityError(f"{path}: darknet cannot build {out.section.header} at line {out.section.line} "
                              f"(layer {index}) at --size {settings.size}: {out.reason}")
        if section.type == "convolutional" and section.get_int("batch_normalize", 0) and \
                settings.batch * out.w * out.h < 2:
            raise ParityError(
                f"{path}: --batch {settings.batch} at --size {settings.size}: {section.header} at line {section.line} "
                f"(layer {index}) outputs {out.w}x{out.h}, and darknet's batch normalization divides by "
                f"batch*w*h - 1 = 0 (NaN, then out-of-bounds writes in max-pool's backward pass): raise --batch "
                "or --size")
    for yolo in parsed.yolo_layers:
        if yolo.index == 0:
            raise ParityError(f"{path}: the [yolo] at line {yolo.line} is the first layer; its input would be "
                              "the image")


# --------------------------------------------------------------------------
# The compiled glue


def _check_train_header(library: DarknetLibrary) -> None:
    check_library_flavor(library, FLAVOR)
    missing = missing_identifiers(library.header.read_text(errors="replace"), _NEEDS_TRAIN)
    if missing:
        raise BuildError(f"{library.header} lacks what the darknet training recorder needs: {', '.join(missing)}. "
                         f"Use the darknet.h of the pjreddie/darknet (2018) build {library.lib_path} came from")


def train_key(library: DarknetLibrary) -> str:
    """Cache key: the one-layer shim's, plus the training glue's sources."""
    return shim_key(library, (TRAIN_SOURCE, TRAIN_HEADER, "shim_common.c") + SHIM_HEADERS, tag=MODULE_NAME)


def _builder(library: DarknetLibrary) -> Callable[[str], cffi.FFI]:
    # darknet_train.c shares shim_common.c (library checks, fd silencing) with the one-layer shim.
    return make_shim_builder(library, cdef=CDEF, sources=(TRAIN_SOURCE, "shim_common.c"),
                             headers=SHIM_HEADERS + (TRAIN_HEADER,))


def load_train_shim(library: DarknetLibrary) -> tuple[ModuleType, str]:
    """The compiled training glue for ``library`` and the key of the library's FP mode.

    The one-layer shim (``parity.backends.libdarknet.load_shim``) is loaded first: it
    loads the library, notes the floating-point mode the library sets for
    itself and checks the binding. This module then loads with the library
    already in the process, and its calls run in that same mode.
    """
    _check_train_header(library)
    load_shim(library)
    fp_key = one_layer_key(library)
    key = train_key(library)
    with LOAD_LOCK:
        mod = _LOADED.get(key)
        if mod is None:
            mod = load_keeping_fp_mode(MODULE_NAME, key, _builder(library))
            check_binding(mod, library)
            _LOADED[key] = mod
    return mod, fp_key


def _raise_status(status: int, what: str) -> None:
    raise ParityError(f"{what} failed: {_STATUS.get(status, f'status {status}')}")


# --------------------------------------------------------------------------
# Provenance


def library_provenance(lib_path: Path) -> dict[str, Any]:
    """commit/build of the library: the Debian package that owns it (dpkg-query), else its path."""
    digest = hashlib.sha256(lib_path.read_bytes()).hexdigest()
    info: dict[str, Any] = {"library": os.fspath(lib_path), "library_sha256": digest, "commit": None,
                            "package": None}
    package = _dpkg_owner(lib_path)
    if package is not None:
        name, version = package
        info["package"] = f"{name} {version}"
        match = re.search(r"git(\d{8})\.([0-9a-f]{7,40})", version)
        if match:
            info["commit"] = match.group(2)
    return info


def _dpkg_owner(path: Path) -> tuple[str, str] | None:
    if shutil.which("dpkg-query") is None:
        return None
    for candidate in dict.fromkeys((os.fspath(path), os.path.realpath(path))):
        try:
            owner = subprocess.run(["dpkg-query", "-S", candidate], capture_output=True, text=True, timeout=20)
        except (OSError, subprocess.SubprocessError):
            return None
        if owner.returncode != 0 or ":" not in owner.stdout:
            continue
        name = owner.stdout.split(":", 1)[0].strip().split(",")[0].strip()
        try:
            version = subprocess.run(["dpkg-query", "-W", "-f=${Version}", name], capture_output=True,
                                     text=True, timeout=20)
        except (OSError, subprocess.SubprocessError):
            return None
        if version.returncode == 0 and version.stdout.strip():
            return name, version.stdout.strip()
    return None


def _build_words(prov: dict[str, Any], fp_mode: int | None) -> str:
    words = [prov["library"], f"Debian package {prov['package']}" if prov["package"] else "not from a Debian package"]
    if fp_mode is not None and fp_mode & _FTZ_DAZ == _FTZ_DAZ:
        words.append("a fast-math (-Ofast) build: loading it turns on flush-to-zero and denormals-are-zero")
    return "; ".join(words)


# --------------------------------------------------------------------------
# Images


@dataclass(frozen=True)
class TrainImage:
    path: Path
    name: str
    kind: str          # JPEG, PNG or BMP
    suffix: str
    sha256: str


def check_images(paths: Sequence[Path], labels: dict[str, list[LabelBox]], labels_path: Path) -> list[TrainImage]:
    """Every image exists, is a JPEG/PNG/BMP by its first bytes, and has an entry in the labels."""
    if not paths:
        raise ParityError("no images to train on")
    images: list[TrainImage] = []
    seen: dict[str, Path] = {}
    for path in paths:
        if not path.is_file():
            raise ParityError(f"image {path}: no such file")
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ParityError(f"image {path}: cannot read it: {exc.strerror}") from None
        kind = next(((suffix, name) for magic, suffix, name in IMAGE_MAGIC if data.startswith(magic)), None)
        if kind is None:
            raise ParityError(f"image {path}: not a JPEG, PNG or BMP file (by its first bytes); darknet's "
                              "loader would end the process or log it to bad.list and train on a blank image")
        if path.name in seen:
            raise ParityError(f"image {path}: same file name as {seen[path.name]}; the labels file names images "
                              "by file name")
        seen[path.name] = path
        if path.name not in labels:
            raise ParityError(f"image {path}: labels file {labels_path} has no entry {path.name!r} (give it a "
                              "list of boxes; [] for an image with no objects)")
        images.append(TrainImage(path, path.name, kind[1], kind[0], hashlib.sha256(data).hexdigest()))
    return images


def _check_label_classes(images: list[TrainImage], labels: dict[str, list[LabelBox]], classes: int,
                         labels_path: Path) -> None:
    for image in images:
        for k, box in enumerate(labels[image.name]):
            if box.cls >= classes:
                raise ParityError(f"labels file {labels_path}: image {image.name!r} box {k}: class {box.cls} is "
                                  f"outside [0, {classes}) (the cfg's [yolo] classes={classes})")


def _check_label_cells(images: list[TrainImage], labels: dict[str, list[LabelBox]], yolo: Any,
                       labels_path: Path) -> None:
    """The rows darknet will read pass the [yolo] layer's own input check (cells inside its grid)."""
    truth = _truth(images, labels, PJREDDIE_TRUTH_BOXES)
    dummy = np.zeros((len(images), yolo.config.channels, yolo.grid_h, yolo.grid_w), dtype=np.float32)
    try:
        check_layer_input(yolo.config, dummy, truth, FLAVOR)
    except InputError as exc:
        found = re.match(r"truth\[(\d+), (\d+)\]: (.*)", str(exc), flags=re.S)
        if not found:
            raise
        image, box = images[int(found.group(1))].name, int(found.group(2))
        raise ParityError(f"labels file {labels_path}: image {image!r} box {box}: for the [yolo] layer "
                          f"{yolo.index} ({yolo.grid_w}x{yolo.grid_h}): {found.group(3)}") from None


# --------------------------------------------------------------------------
# Recording


@dataclass
class TrainingRecording:
    """The cases of a run (iteration-major, [yolo] layers in order) and what each iteration reported."""

    cases: list[Case]
    steps: list[dict[str, Any]] = field(default_factory=list)
    settings: TrainSettings | None = None


def record_training(settings: TrainSettings = TrainSettings(), *, quiet: bool = True) -> TrainingRecording:
    """Run darknet's training for ``settings.iterations`` iterations; one case per [yolo] layer per iteration.

    Raises:
        ParityError: a bad option, image, labels file or cfg (the message names it);
        BuildError: the library or its header cannot be used.
    """
    check_settings(settings)
    cfg_path = Path(settings.cfg)
    if not cfg_path.is_file():
        raise ParityError(f"--darknet-cfg {cfg_path}: no such cfg file")
    labels_path = Path(settings.labels)
    labels = load_labels(labels_path)
    images = check_images(settings.image_paths(), labels, labels_path)
    cfg_bytes = cfg_path.read_bytes()
    train = training_cfg(cfg_bytes.decode("utf-8", "surrogateescape"), settings, os.fspath(cfg_path))
    for yolo in train.yolo_layers:
        _check_label_classes(images, labels, yolo.config.classes, labels_path)
        _check_label_cells(images, labels, yolo, labels_path)
    library = find_library(settings.darknet_lib, settings.darknet_include)
    mod, fp_key = load_train_shim(library)
    prov = library_provenance(library.lib_path)
    prov["build"] = _build_words(prov, library_fp_mode(fp_key))
    with tempfile.TemporaryDirectory(prefix="dp-train-") as tmp:
        cfg_copy = Path(tmp) / "train.cfg"
        cfg_copy.write_text(train.text, encoding="utf-8", errors="surrogateescape")
        copies = []
        for k, image in enumerate(images):
            copy = Path(tmp) / f"image{k}{image.suffix}"   # short, safe names for darknet's loader
            shutil.copyfile(image.path, copy)
            copies.append(copy)
        run = _Run(mod, fp_key, settings, train, quiet)
        try:
            run.open(cfg_copy)
            used = {(it * settings.batch + j) % len(images) for it in range(settings.iterations)
                    for j in range(settings.batch)}
            pixels = {k: run.load_image(copies[k], images[k]) for k in sorted(used)}
            recording = TrainingRecording([], [], settings)
            base_meta = _base_meta(settings, cfg_path, cfg_bytes, train, labels_path, prov)
            base_meta["run_images"] = [_display_path(im.path) for im in images]
            for it in range(settings.iterations):
                chosen = [(it * settings.batch + j) % len(images) for j in range(settings.batch)]
                batch_images = [images[j] for j in chosen]
                truth = _truth(batch_images, labels, run.truth_rows)
                cases, step = run.step(np.stack([pixels[j] for j in chosen]), truth)
                step.update(iteration=it, images=[im.name for im in batch_images])
                recording.steps.append(step)
                for yolo, (inp, out, delta, cost) in zip(train.yolo_layers, cases):
                    recording.cases.append(_case(yolo, inp, out, delta, cost, truth, it, batch_images, step,
                                                 base_meta))
        finally:
            run.close()
    return recording


class _Run:
    """One open darknet network and the calls on it, each under the call lock and the library's FP mode."""

    def __init__(self, mod: ModuleType, fp_key: str, settings: TrainSettings, train: TrainingCfg,
                 quiet: bool) -> None:
        self.mod, self.ffi, self.lib = mod, mod.ffi, mod.lib
        self.fp_key, self.settings, self.train, self.quiet = fp_key, settings, train, int(quiet)
        self.handle = None

    def _call(self, fn: Callable[..., int], *args: Any) -> int:
        with CALL_LOCK, LibraryFpMode(self.fp_key):
            return int(fn(*args))

    def open(self, cfg_copy: Path) -> None:
        out = self.ffi.new("dpt_net **")
        status = self._call(self.lib.dpt_open, os.fsencode(cfg_copy), self.settings.seed, self.quiet, out)
        if status:
            _raise_status(status, f"darknet's parse_network_cfg of {self.settings.cfg}")
        self.handle = out[0]
        self._check_network()

    def close(self) -> None:
        if self.handle is not None:
            with CALL_LOCK:
                self.lib.dpt_close(self.handle)
            self.handle = None

    def _check_network(self) -> None:
        """The network darknet built must be the one our parser read (sizes, [yolo] layers)."""
        info = self.ffi.new("dpt_net_info *")
        self.lib.dpt_net_info_of(self.handle, info)
        s = self.settings
        expected = (self.train.layer_count, s.batch, s.size, s.size, 3)
        got = (info.layers, info.batch, info.w, info.h, info.c)
        if got != expected or info.subdivisions != 1 or info.truths % TRUTH_STRIDE:
            raise ParityError(f"darknet built {s.cfg} as (layers, batch, w, h, c) = {got}, subdivisions "
                              f"{info.subdivisions}, truths {info.truths}; expected {expected}, 1 and a multiple "
                              f"of {TRUTH_STRIDE}: the library reads this cfg differently from our parser")
        self.info = info
        self.truth_rows = info.truths // TRUTH_STRIDE
        self.layers = []
        for yolo in self.train.yolo_layers:
            layer = self.ffi.new("dpt_layer *")
            self.lib.dpt_layer_info(self.handle, yolo.index, layer)
            c = yolo.config
            want = (1, s.batch, yolo.grid_w, yolo.grid_h, c.n, c.num, c.classes, c.max_boxes)
            have = (layer.yolo, layer.batch, layer.w, layer.h, layer.n, layer.total, layer.classes,
                    layer.max_boxes)
            if have != want or layer.truths != self.truth_rows * TRUTH_STRIDE:
                raise ParityError(f"darknet built the [yolo] at line {yolo.line} (layer {yolo.index}) as (yolo, batch, "
                                  f"w, h, n, total, classes, max) = {have}, truths {layer.truths}; our parser read "
                                  f"{want}, truths {self.truth_rows * TRUTH_STRIDE}")
            self.layers.append(layer)

    def load_image(self, copy: Path, image: TrainImage) -> np.ndarray:
        count = 3 * self.settings.size * self.settings.size
        dst = np.empty(count, dtype=np.float32)
        reason = self.ffi.new("char[]", 512)
        status = self._call(self.lib.dpt_load_image, self.handle, os.fsencode(copy),
                            self.ffi.from_buffer("float[]", dst, require_writable=True), count, reason, 512,
                            self.quiet)
        if status == 27:
            why = self.ffi.string(reason).decode(errors="replace")
            raise ParityError(f"image {image.path}: darknet's image decoder cannot read this {image.kind} file "
                              f"({why})")
        if status:
            _raise_status(status, f"loading image {image.path} with darknet's load_image_color")
        return dst

    def step(self, pixels: np.ndarray, truth: np.ndarray) -> tuple[list[tuple[Any, ...]], dict[str, Any]]:
        ffi, s = self.ffi, self.settings
        flat_truth = np.ascontiguousarray(truth[..., :TRUTH_STRIDE], dtype=np.float32).reshape(-1)
        pixels = np.ascontiguousarray(pixels, dtype=np.float32).reshape(-1)
        shapes = [(s.batch, yolo.config.channels, yolo.grid_h, yolo.grid_w) for yolo in self.train.yolo_layers]
        ins = [np.empty(shape, dtype=np.float32) for shape in shapes]
        outs = [np.empty(shape, dtype=np.float32) for shape in shapes]
        deltas = [np.empty(shape, dtype=np.float32) for shape in shapes]
        count = len(shapes)
        keep = [ffi.from_buffer("float[]", a, require_writable=True) for a in ins + outs + deltas]
        costs = ffi.new("float[]", max(count, 1))
        step = ffi.new("dpt_step *")
        status = self._call(
            self.lib.dpt_train_step, self.handle, ffi.from_buffer("float[]", pixels), pixels.size,
            ffi.from_buffer("float[]", flat_truth), flat_truth.size, count,
            ffi.new("int[]", [y.index for y in self.train.yolo_layers]),
            ffi.new("int[]", [int(np.prod(shape)) for shape in shapes]),
            ffi.new("float *[]", keep[:count]), ffi.new("float *[]", keep[count:2 * count]),
            ffi.new("float *[]", keep[2 * count:]), costs, step, self.quiet)
        if status == 29:
            layer = int(step.bad_layer)
            raise ParityError(
                f"darknet's training diverged: after the forward pass of iteration {int(step.seen) // s.batch - 1}, "
                f"layer {layer} ({self.train.sections[layer + 1].header} at line "
                f"{self.train.sections[layer + 1].line} of {s.cfg}) outputs NaN or Inf; stopped before "
                "backward_network (a max-pool over NaNs would make darknet write outside its arrays). "
                "Lower --learning-rate")
        if status:
            _raise_status(status, "darknet's training iteration")
        results = [(ins[k], outs[k], deltas[k], float(costs[k])) for k in range(count)]
        return results, {"network_cost": float(step.net_cost), "learning_rate": float(str(np.float32(step.rate))),
                         "updated": bool(step.updated), "seen": int(step.seen)}


def _truth(images: list[TrainImage], labels: dict[str, list[LabelBox]], rows: int) -> np.ndarray:
    """darknet's truth buffer for the batch as format v1's [batch, rows, 6] (track 0)."""
    truth = np.zeros((len(images), rows, 6), dtype=np.float32)
    for b, image in enumerate(images):
        if len(labels[image.name]) > rows:
            raise ParityError(f"image {image.name}: {len(labels[image.name])} boxes, but the library's truth "
                              f"buffer holds {rows} per image")
        for r, box in enumerate(labels[image.name]):
            truth[b, r, :5] = (box.x, box.y, box.w, box.h, box.cls)
    return truth


def _base_meta(settings: TrainSettings, cfg_path: Path, cfg_bytes: bytes, train: TrainingCfg, labels_path: Path,
               prov: dict[str, Any]) -> dict[str, Any]:
    return {
        "implementation": IMPLEMENTATION,
        "flavor": FLAVOR,
        "commit": prov["commit"],
        "build": prov["build"],
        "library": prov["library"],
        "library_sha256": prov["library_sha256"],
        "reference": "darknet training run",
        "recorded_by": "darknet-parity record --darknet-train",
        "parity_version": __version__,
        "darknet_cfg": _display_path(cfg_path),
        "darknet_cfg_sha256": hashlib.sha256(cfg_bytes).hexdigest(),
        "net_overrides": dict(train.overrides),
        "labels": _display_path(labels_path),
        "labels_sha256": hashlib.sha256(labels_path.read_bytes()).hexdigest(),
        "size": settings.size,
        "batch": settings.batch,
        "iterations": settings.iterations,
        "seed": settings.seed,
        "profile": None,
    }


def _display_path(path: Path) -> str:
    """A path relative to the repository when inside it (stable across checkouts), else absolute."""
    root = Path(__file__).resolve().parent.parent
    resolved = path.resolve()
    try:
        return resolved.relative_to(root).as_posix()
    except ValueError:
        return os.fspath(resolved)


def _case(yolo: Any, inp: np.ndarray, out: np.ndarray, delta: np.ndarray, cost: float, truth: np.ndarray,
          iteration: int, images: list[TrainImage], step: dict[str, Any], base: dict[str, Any]) -> Case:
    config: YoloConfig = yolo.config
    cfg = dump_yolo_cfg(config)
    cfg_name = Path(base["darknet_cfg"]).name
    meta = dict(base)
    meta.update({
        "generator": (f"darknet training run: {cfg_name} at {base['size']}x{base['size']}, batch {base['batch']}, "
                      f"seed {base['seed']}; iteration {iteration} of {base['iterations']}, [yolo] layer "
                      f"{yolo.index} (its input is layer {yolo.index - 1}'s output) after forward_network, "
                      f"before backward_network; images {', '.join(im.name for im in images)}"),
        "iteration": iteration,
        "layer": yolo.index,
        "input_layer": yolo.index - 1,
        "images": [im.name for im in images],
        "images_sha256": [im.sha256 for im in images],
        "network_cost": step["network_cost"],
        "learning_rate": step["learning_rate"],
        "seen": step["seen"],
    })
    return Case(cfg, config, FLAVOR, inp, truth.copy(), out, delta, {"cost": cost}, meta)


def case_stem(case: Case) -> str:
    """File stem of a recorded case: cfg, size, batch, seed, iteration and layer."""
    m = case.meta
    cfg = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(m["darknet_cfg"]).stem)
    return f"{cfg}-{m['size']}-b{m['batch']}-seed{m['seed']}-it{m['iteration']}-layer{m['layer']}"


def write_recording(recording: TrainingRecording, out: str | os.PathLike[str], *,
                    overwrite: bool = False) -> list[Path]:
    """Save every case under ``out`` (format v1; a map= layer's map file under ``out/maps``, a different
    one there refused unless ``overwrite``); returns the paths in order."""
    folder = Path(out)
    if folder.exists() and not folder.is_dir():
        raise ParityError(f"--out {folder}: exists and is not a folder")
    paths = []
    for case in recording.cases:
        path = folder / f"{case_stem(case)}.npz"
        save_case(path, case, overwrite=overwrite)
        case.path = os.fspath(path)
        paths.append(path)
    return paths


def iter_summary(recording: TrainingRecording) -> Iterator[str]:
    """One line per iteration: images, network cost, rate."""
    for step in recording.steps:
        yield (f"iteration {step['iteration']}: images {', '.join(step['images'])}; network cost "
               f"{step['network_cost']:.6g}; learning rate {step['learning_rate']:.6g}"
               f"{'' if step['updated'] else ' (no update)'}")
