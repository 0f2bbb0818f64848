#!/usr/bin/env python3
"""Run the C reference and the libdarknet shim over every kind of input, for ``tools/sanitize.sh``.

Meant to run with ``DARKNET_PARITY_SANITIZE`` set and the sanitizer runtimes
preloaded (tools/sanitize.sh does both); it refuses to run on a normal build.
It needs no torch. Sections:

  replay      every recorded case (``$DARKNET_PARITY_RECORDED`` or ../shared/recorded)
              and fixtures/**.npz through the C reference, agreeing with the recording
  random      --random generated cases: both generators, both flavors, NaN/Inf, every option
  extremes    1x1 grids, 1 class, max=1, every anchor in the mask, many boxes, long thin
              grids, all-NaN/Inf/huge logits, truths at the last float below 1, 5-column
              truths, fewer truth rows than max, no truth rows at all
  profiles    the default parity suite's profile cases and each fixtures/cfg/*.cfg at its true grid
  libdarknet  pjreddie cases (recorded, random, yolov3-pjreddie.cfg) through Debian's
              libdarknet.so (the shim), checked against the C reference; skipped when the
              library is absent unless --require-libdarknet
  libdarknet-extremes  the extremes' pjreddie cases through the shim
  refusals    direct calls into yref_forward and dps_forward with NULL pointers, bad sizes,
              size overflows, bad masks and options, truths outside the grid, class ids out
              of range, and no free file descriptors: each must return its status code and
              leave the output buffers untouched
  overflow    sizes at the limits of int (grid INT_MAX x INT_MAX, classes INT_MAX - 4, ...): each
              must be refused as a size error; one child process per probe, so that a
              sanitizer abort is reported and the other probes still run

Exit status: 0 when every section passed, 1 on a wrong result (or an
overflow probe's sanitizer report). Elsewhere a sanitizer report aborts the
process on its own (halt_on_error), with the report in the sanitizer's log.
"""
from __future__ import annotations

import argparse
import ctypes
import os
import resource
import sys
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from parity.backends import native  # noqa: E402
from parity.backends.c_reference import load_reference  # noqa: E402
from parity.case import Case, load_case  # noqa: E402
from parity.config import YoloConfig  # noqa: E402
from parity.errors import InputError, ParityError  # noqa: E402
from parity.generate import (COCO_ANCHORS, CaseFeatures, CaseShape, random_case,  # noqa: E402
                             random_config)
from parity.backends.ground import FLAVOR_CODES, fill_layer_struct  # noqa: E402
from parity.reference import run_reference  # noqa: E402
from parity.replay import FIXTURES_DIR, case_paths, replay_case, shared_recorded_dir  # noqa: E402

# Status codes: darknet_ref/yolo_ref.h (YREF_ERR_*) and darknet_ref/shim/libdarknet_shim.h (DPS_ERR_*).
YREF = dict(NULL=1, SIZE=2, MASK=3, TRUTH_CELL=4, CLASS_ID=5, OPTION=6)
DPS = dict(NULL=1, SIZE=2, MASK=3, OPTION=4, QUIET=6, TRUTHS=9, TRUTH_CELL=10, CLASS_ID=11)
INT_MAX = 2 ** 31 - 1
SENTINEL = np.float32(-12345.0)
# Every feature of the feature-driven generator, made frequent.
EDGY = CaseFeatures(plant=0.8, plant_wild=0.3, shared_cell=0.4, border=0.4, tiny=0.2, huge=0.2,
                    class_oob=0.2, empty_image=0.2, mid_terminator=0.3, over_max=0.3, nonfinite=0.4)


class Failures:
    """Wrong results, collected (a sanitizer report aborts instead, except in the overflow probes' children)."""

    def __init__(self) -> None:
        self.items: list[str] = []
        self.refused = 0  # generated cases the Python checks refused (InputError), counted per section

    def add(self, section: str, message: str) -> None:
        self.items.append(f"[{section}] {message}")
        print(f"  FAIL {message}", flush=True)


FAIL = Failures()


# ---------------------------------------------------------------- helpers


def fresh(a: np.ndarray) -> np.ndarray:
    """An exactly sized, owned copy: an overread of a view's parent would go unseen."""
    return np.array(a, dtype=np.float32, order="C", copy=True)


def run_c(case: Case, flavor: str | None = None) -> Any:
    """The C reference with its decisions exported (so the sanitizers cover that path too)."""
    return run_reference(case.config, fresh(case.input), fresh(case.truth), flavor=flavor or case.flavor,
                         decisions=True)


def run_lib(case: Case) -> Any:
    return run_reference(case.config, fresh(case.input), fresh(case.truth), flavor="pjreddie",
                         backend="libdarknet")


def run_case(section: str, case: Case, name: str, backend: str = "c") -> Any:
    """Run one case; an InputError is a refusal the case was made to provoke, anything else fails."""
    try:
        return run_lib(case) if backend == "libdarknet" else run_c(case)
    except InputError:
        FAIL.refused += 1
        return None
    except Exception as exc:  # noqa: BLE001 - report every failure with its case
        FAIL.add(section, f"{name}: {type(exc).__name__}: {exc}")
        return None


def route_ubsan_reports() -> None:
    """Send UBSan's reports to its ``log_path``, as ASan's go to theirs.

    gcc's libubsan, loaded beside libasan, ignores ``UBSAN_OPTIONS=log_path``
    and writes to fd 2, which the shim points at /dev/null around darknet's
    calls: a report there would be lost (the abort would not). Its own
    ``__sanitizer_set_report_path`` does take effect.
    """
    path = next((opt[len("log_path="):] for opt in os.environ.get("UBSAN_OPTIONS", "").split(":")
                 if opt.startswith("log_path=")), None)
    lib = next((p for p in os.environ.get("LD_PRELOAD", "").replace(":", " ").split() if "libubsan" in p), None)
    if path and lib:
        ctypes.CDLL(lib).__sanitizer_set_report_path(path.encode())


def check_sanitized(path: str, what: str) -> None:
    """The loaded module must be the sanitized build (its own cache entry, instrumented)."""
    data = Path(path).read_bytes()
    if "-san" not in Path(path).name or b"__asan_report" not in data or b"__ubsan_handle" not in data:
        sys.exit(f"sanitize_driver: {what} at {path} is not a sanitized build; "
                 f"set {native.SANITIZE_ENV}=address,undefined (tools/sanitize.sh does)")
    print(f"{what}: {path}", flush=True)


@contextmanager
def section(name: str) -> Iterator[None]:
    start = time.perf_counter()
    before = len(FAIL.items)
    FAIL.refused = 0
    print(f"== {name}", flush=True)
    yield
    if FAIL.refused:
        print(f"   ({FAIL.refused} of them refused by the Python input checks, as their inputs ask)", flush=True)
    bad = len(FAIL.items) - before
    print(f"   {name}: {'ok' if not bad else f'{bad} failure(s)'} in {time.perf_counter() - start:.1f} s",
          flush=True)


def libdarknet_available() -> bool:
    from parity.backends.darknet_library import DEFAULT_INCLUDE, DEFAULT_LIB

    return DEFAULT_LIB.is_file() and (DEFAULT_INCLUDE / "darknet.h").is_file()


# ---------------------------------------------------------------- sections


def replay_section() -> None:
    recorded = shared_recorded_dir()
    if recorded is None:
        print("  note: no recorded dev set (../shared/recorded or $DARKNET_PARITY_RECORDED)", flush=True)
    paths = case_paths([p for p in (recorded, FIXTURES_DIR) if p is not None and p.is_dir()])
    done = 0
    for path in paths:
        try:
            case = load_case(path)
        except ParityError as exc:   # every recorded option is read now (issue 11): a refusal fails
            FAIL.add("replay", f"{path}: not replayed: {exc}")
            continue
        agreement = replay_case(case)
        if agreement.skipped is None and not agreement:
            FAIL.add("replay", f"{path}: the sanitized reference disagrees with the recording "
                     f"({agreement.decision_mismatches} decisions, {agreement.value_mismatches} values, "
                     f"stats {agreement.stats_mismatches})")
        done += 1
    print(f"   {done} recorded/fixture cases", flush=True)


def random_section(count: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for k in range(count):
        flavor = "pjreddie" if k % 3 == 2 else "alexeyab"
        config = random_config(rng, flavor)
        case_seed = int(rng.integers(0, 2 ** 31))
        if k % 2:
            shape = CaseShape(batch=int(rng.integers(1, 4)), h=int(rng.integers(1, 14)),
                              w=int(rng.integers(1, 14)), max_truths=int(rng.integers(0, 24)))
            case = random_case(case_seed, config, flavor=flavor, shape=shape, features=EDGY)
        else:
            case = random_case(case_seed, config, flavor=flavor, nonfinite=int(rng.integers(0, 4)))
        run_case("random", case, f"random #{k} ({flavor}, seed {case_seed})")
    print(f"   {count} cases", flush=True)


def _config(flavor: str, **changes: Any) -> YoloConfig:
    base: dict[str, Any] = dict(classes=3, num=9, mask=(0, 1, 2), anchors=tuple(float(a) for a in COCO_ANCHORS),
                                net_w=416, net_h=416)
    base.update(changes)
    return YoloConfig.for_flavor(flavor, **base)


def _extreme_configs(flavor: str) -> list[tuple[str, YoloConfig]]:
    ab = flavor == "alexeyab"
    out = [
        ("1 class, max=1", _config(flavor, classes=1, max_boxes=1)),
        ("every anchor in the mask", _config(flavor, mask=tuple(range(9)))),
        ("one anchor", _config(flavor, num=1, mask=(0,), anchors=(10.0, 13.0))),
        ("net 1x1", _config(flavor, net_w=1, net_h=1)),
        ("thresholds 0", _config(flavor, ignore_thresh=0.0, truth_thresh=0.0)),
        ("huge and tiny anchors", _config(flavor, num=2, mask=(0, 1), anchors=(1e-30, 1e-30, 1e30, 1e30))),
        ("80 classes", _config(flavor, classes=80)),
    ]
    if ab:
        out += [
            ("max=200, iou_thresh 0, ciou", _config(flavor, max_boxes=200, iou_thresh=0.0, iou_loss="ciou",
                                                     iou_thresh_kind="ciou")),
            ("max_delta 0, scale_x_y 0", _config(flavor, max_delta=0.0, scale_x_y=0.0, iou_loss="giou")),
            ("new_coords, objectness_smooth, focal, smooth 1",
             _config(flavor, new_coords=1, objectness_smooth=1, focal_loss=1, label_smooth_eps=1.0,
                     iou_loss="diou", iou_thresh=0.2)),
            ("counters_per_class", _config(flavor, counters_per_class=(0, 1, 100000), max_delta=1e30)),
            ("huge normalizers", _config(flavor, iou_normalizer=1e30, obj_normalizer=1e30, cls_normalizer=1e30,
                                         iou_loss="iou")),
            ("show_details 0", _config(flavor, show_details=0, iou_thresh=0.5)),
        ]
    else:
        out.append(("max=90", _config(flavor, max_boxes=90)))
    return out


def _extreme_inputs(rng: np.random.Generator, config: YoloConfig, batch: int, h: int, w: int) -> list[tuple[str, np.ndarray]]:
    shape = (batch, config.channels, h, w)
    normal = rng.normal(0, 2, size=shape).astype(np.float32)
    sprinkled = normal.copy()
    sprinkled.flat[rng.integers(0, normal.size, size=max(1, normal.size // 7))] = rng.choice(
        [np.nan, np.inf, -np.inf], size=max(1, normal.size // 7))
    return [
        ("normal", normal),
        ("zeros", np.zeros(shape, np.float32)),
        ("all NaN", np.full(shape, np.nan, np.float32)),
        ("all +Inf", np.full(shape, np.inf, np.float32)),
        ("all -Inf", np.full(shape, -np.inf, np.float32)),
        ("huge", rng.choice([-3e38, 3e38, -1e30, 1e30], size=shape).astype(np.float32)),
        ("denormal", np.full(shape, 1e-45, np.float32)),
        ("NaN/Inf sprinkled", sprinkled),
    ]


def _extreme_truths(rng: np.random.Generator, config: YoloConfig, batch: int, h: int, w: int,
                    flavor: str) -> list[tuple[str, np.ndarray]]:
    rows = config.max_boxes if flavor == "pjreddie" else config.max_boxes + 3
    below_one = np.nextafter(np.float32(1), np.float32(0))
    out = []

    def table(n_rows: int, cols: int = 6) -> np.ndarray:
        return np.zeros((batch, n_rows, cols), np.float32)

    t = table(rows)
    k = rows  # every row used, past max for AlexeyAB
    t[:, :k, 0:2] = rng.uniform(1e-3, 0.999, size=(batch, k, 2))
    t[:, :k, 2:4] = rng.uniform(0.01, 0.9, size=(batch, k, 2))
    t[:, :k, 4] = rng.integers(0, config.classes, size=(batch, k))
    out.append(("every row full", t))
    t = table(rows)
    t[:, :, 0] = below_one
    t[:, :, 1] = below_one
    t[:, :, 2:4] = 1.0
    out.append(("centres at the last float below 1", t))
    t = table(rows)
    t[:, :, 0:2] = 1e-45  # nonzero: read, cell 0
    t[:, :, 2:4] = 1e-45
    out.append(("denormal centres and sizes", t))
    t = table(rows)
    t[:, :, 0:2] = 0.5
    t[:, :, 2:4] = rng.choice([np.nan, np.inf, 0.0, 1e30, 1e-30], size=(batch, rows, 2))
    out.append(("NaN/Inf/zero/huge sizes in one cell", t))
    t = table(max(1, min(rows, 4)), cols=5)
    t[:, :, 0:2] = 0.25
    t[:, :, 2:4] = 0.3
    out.append(("5 columns", t))
    t = table(1)
    t[:, 0, :4] = (0.5, 0.5, 0.2, 0.2)
    out.append(("one row (fewer than max)", t))
    out.append(("no rows", table(0)))
    t = table(rows)
    t[:, :, 0:2] = 0.5
    t[:, :, 2:4] = 0.1
    t[:, :, 4] = 2.9 if config.classes > 2 else 0.5  # truncated to an id in range
    out.append(("fractional class ids", t))
    if flavor == "alexeyab":
        t = table(rows)
        t[:, :, 0:2] = rng.uniform(0, 1, size=(batch, rows, 2))
        t[:, :, 2:4] = 0.2
        t[:, :, 4] = rng.choice([-1.0, float(config.classes), np.nan, np.inf, -3e9, 3e9], size=(batch, rows))
        out.append(("class ids out of range (skipped)", t))
    return out


def extremes_section(seed: int, backend: str = "c") -> int:
    rng = np.random.default_rng(seed)
    flavors = ("pjreddie",) if backend == "libdarknet" else ("alexeyab", "pjreddie")
    grids = [(1, 1, 1), (2, 1, 1), (1, 1, 13), (1, 13, 1), (3, 5, 7), (1, 76, 76)]
    runs = 0
    for flavor in flavors:
        for cname, config in _extreme_configs(flavor):
            for batch, h, w in grids:
                inputs = _extreme_inputs(rng, config, batch, h, w)
                truths = _extreme_truths(rng, config, batch, h, w, flavor)
                # every input with the full truth table, every truth table with normal logits;
                # on the big grid only the first two inputs (it is there for its size)
                big = w * h > 100
                combos = [(i, truths[0]) for i in inputs[: 2 if big else None]]
                combos += [(inputs[0], t) for t in truths[1: 2 if big else None]]
                for (iname, x), (tname, t) in combos:
                    case = Case("", config, flavor, x, t, meta={})
                    name = f"{flavor} {cname}, grid {w}x{h} batch {batch}, {iname} logits, {tname}"
                    res = run_case(backend, case, name, backend)
                    runs += 1
                    if backend == "libdarknet" and res is not None:
                        compare_with_c(case, res, name)
    print(f"   {runs} cases", flush=True)
    return runs


def profiles_section(seed: int) -> None:
    from parity.profiles import cfg_cases, suite_cases

    done = 0
    for case in suite_cases(seed=seed):
        run_case("profiles", case, f"profile case {case.meta.get('case_id')}")
        done += 1
    for cfg in sorted((FIXTURES_DIR / "cfg").glob("*.cfg")):
        flavor = "pjreddie" if "pjreddie" in cfg.name else "alexeyab"
        try:
            cases = list(cfg_cases(cfg, 2, seed, flavor=flavor))
        except ParityError as exc:  # a cfg darknet itself would misread: refused in Python
            print(f"   {cfg.name}: refused by the cfg parser ({exc})", flush=True)
            continue
        for case in cases:
            run_case("profiles", case, f"{cfg.name} {case.meta.get('case_id')}")
            done += 1
    print(f"   {done} cases", flush=True)


def compare_with_c(case: Case, lib_res: Any, name: str) -> None:
    """The shim's result beside the C reference's: a wrong copy-out would show here."""
    from parity.compare import compare
    from parity.diff import Agreement

    c_res = run_c(case, "pjreddie")
    agreement = Agreement.of(compare(lib_res, c_res, case=case, decisions=c_res, name=name))
    tiny = np.abs(case.truth[np.isfinite(case.truth)])
    if ((0 < tiny) & (tiny < np.finfo(np.float32).tiny)).any():
        return  # Debian's -Ofast build reads subnormal truths as 0 (DAZ): its list ends there
    if agreement.decision_mismatches or (agreement.value_mismatches and np.isfinite(case.input).all()):
        FAIL.add("libdarknet", f"{name}: libdarknet and the C reference disagree "
                 f"({agreement.decision_mismatches} decisions, {agreement.value_mismatches} values)")


def libdarknet_section(count: int, seed: int) -> None:
    from parity.backends.darknet_library import find_library
    from parity.backends.libdarknet import load_shim

    check_sanitized(load_shim(find_library()).__file__, "libdarknet shim")
    rng = np.random.default_rng(seed)
    done = 0
    recorded = shared_recorded_dir()
    if recorded is not None and (recorded / "pjreddie").is_dir():
        for path in case_paths([recorded / "pjreddie"]):
            agreement = replay_case(load_case(path), reference="libdarknet")
            if agreement.skipped is None and agreement.decision_mismatches:
                FAIL.add("libdarknet", f"{path}: libdarknet disagrees with its own recording")
            done += 1
    for k in range(count):
        config = random_config(rng, "pjreddie")
        case_seed = int(rng.integers(0, 2 ** 31))
        if k % 2:
            shape = CaseShape(batch=int(rng.integers(1, 4)), h=int(rng.integers(1, 14)),
                              w=int(rng.integers(1, 14)), max_truths=int(rng.integers(0, 24)))
            case = random_case(case_seed, config, flavor="pjreddie", shape=shape,
                               features=EDGY)
        else:
            case = random_case(case_seed, config, flavor="pjreddie", nonfinite=int(rng.integers(0, 3)))
        name = f"libdarknet random #{k} (seed {case_seed})"
        res = run_case("libdarknet", case, name, "libdarknet")
        if res is not None:
            compare_with_c(case, res, name)
        done += 1
    from parity.profiles import cfg_cases

    for case in cfg_cases(FIXTURES_DIR / "cfg" / "yolov3-pjreddie.cfg", 3, seed, flavor="pjreddie"):
        run_case("libdarknet", case, f"yolov3-pjreddie.cfg {case.meta.get('case_id')}", "libdarknet")
        done += 1
    print(f"   {done} cases", flush=True)


# ---------------------------------------------------------------- refusals


class Call:
    """One direct call into yref_forward or dps_forward with exactly sized buffers."""

    def __init__(self, mod: Any, flavor: str, config: YoloConfig, batch: int, h: int, w: int,
                 truth: np.ndarray) -> None:
        from parity.layer_input import LayerShape

        self.mod, self.ffi = mod, mod.ffi
        self.keep: list[Any] = []
        self.c = self.ffi.new("yref_config *")
        self.c.flavor = FLAVOR_CODES[flavor]
        shape = LayerShape(batch=batch, n=config.n, classes=config.classes, h=h, w=w)
        self.truth = fresh(truth)
        fill_layer_struct(self.ffi, self.c, config, flavor, shape, self.truth, self.keep)
        size = batch * config.channels * h * w
        self.input = np.zeros(size, np.float32)
        self.output = np.full(size, SENTINEL, np.float32)
        self.delta = np.full(size, SENTINEL, np.float32)
        self.roles = np.full(batch * config.n * h * w, -7, np.int32)

    def buf(self, a: np.ndarray, kind: str = "float[]") -> Any:
        return self.ffi.from_buffer(kind, a, require_writable=not kind.startswith("const"))

    def untouched(self) -> bool:
        return bool((self.output == SENTINEL).all() and (self.delta == SENTINEL).all())


def _refusal_cases(flavor: str) -> list[tuple[str, Callable[[Call], dict[str, Any]], str]]:
    """(name, changes applied to a valid call, expected status name). Changes: struct fields or pointers."""
    def fields(**kw: Any) -> Callable[[Call], dict[str, Any]]:
        def apply(call: Call) -> dict[str, Any]:
            for key, value in kw.items():
                setattr(call.c, key, call.ffi.NULL if value is None else value)
            return {}
        return apply

    def pointer(name: str) -> Callable[[Call], dict[str, Any]]:
        return lambda call: {name: call.ffi.NULL}

    def truth(b: int, r: int, col: int, value: float) -> Callable[[Call], dict[str, Any]]:
        def apply(call: Call) -> dict[str, Any]:
            call.truth.reshape(call.c.batch, call.c.truth_rows, call.c.truth_cols)[b, r, col] = value
            return {}
        return apply

    def mask(value: int) -> Callable[[Call], dict[str, Any]]:
        def apply(call: Call) -> dict[str, Any]:
            m = np.array([0, 1, value], np.int32)
            call.keep.append(m)
            call.c.mask = call.ffi.from_buffer("int[]", m)
            return {}
        return apply

    out: list[tuple[str, Callable[[Call], dict[str, Any]], str]] = [
        ("NULL config", pointer("cfg"), "NULL"),
        ("NULL input", pointer("input"), "NULL"),
        ("NULL output", pointer("output"), "NULL"),
        ("NULL delta", pointer("delta"), "NULL"),
        ("NULL mask", fields(mask=None), "NULL"),
        ("NULL biases", fields(biases=None), "NULL"),
        ("NULL truth with rows", pointer("truth"), "NULL"),
        ("batch 0", fields(batch=0), "SIZE"),
        ("w -1", fields(w=-1), "SIZE"),
        ("h 0", fields(h=0), "SIZE"),
        ("n 0", fields(n=0), "SIZE"),
        ("total 0", fields(total=0), "SIZE"),
        ("classes 0", fields(classes=0), "SIZE"),
        ("classes -5", fields(classes=-5), "SIZE"),
        ("max_boxes -1", fields(max_boxes=-1), "SIZE"),
        ("truth_rows -1", fields(truth_rows=-1), "SIZE"),
        ("truth_cols 4", fields(truth_cols=4), "SIZE"),
        ("truth_cols 7", fields(truth_cols=7), "SIZE"),
        ("net_w 0", fields(net_w=0), "SIZE"),
        ("net_h -3", fields(net_h=-3), "SIZE"),
        ("mask entry = total", mask(9), "MASK"),
        ("mask entry -1", mask(-1), "MASK"),
        ("iou_loss 5", fields(iou_loss=5), "OPTION"),
        ("iou_loss -1", fields(iou_loss=-1), "OPTION"),
        ("iou_thresh_kind mse", fields(iou_thresh_kind=0), "OPTION"),
        ("iou_thresh_kind 9", fields(iou_thresh_kind=9), "OPTION"),
        ("truth x = 1.0", truth(0, 0, 0, 1.0), "TRUTH_CELL"),
        ("truth y = 1.0 in the second image", truth(1, 1, 1, 1.0), "TRUTH_CELL"),
        ("truth x = NaN", truth(0, 0, 0, np.nan), "TRUTH_CELL"),
        ("truth y = +Inf", truth(0, 2, 1, np.inf), "TRUTH_CELL"),
        ("truth x = -1.5", truth(1, 0, 0, -1.5), "TRUTH_CELL"),
        ("truth x = 3e38", truth(0, 0, 0, 3e38), "TRUTH_CELL"),
    ]
    if flavor == "pjreddie":
        out += [
            ("class id = classes", truth(0, 1, 4, 3.0), "CLASS_ID"),
            ("class id -1", truth(1, 0, 4, -1.0), "CLASS_ID"),
            ("class id NaN", truth(0, 0, 4, np.nan), "CLASS_ID"),
            ("class id 3e9", truth(0, 0, 4, 3e9), "CLASS_ID"),
            ("class id -Inf", truth(0, 0, 4, -np.inf), "CLASS_ID"),
        ]
    return out


def _valid_call(mod: Any, flavor: str) -> Call:
    config = _config(flavor, max_boxes=5)
    truth = np.zeros((2, 5, 6 if flavor == "alexeyab" else 5), np.float32)
    truth[:, :3, :4] = (0.3, 0.6, 0.2, 0.3)
    truth[:, :3, 4] = 1
    return Call(mod, flavor, config, 2, 4, 5, truth)


def _ref_forward(call: Call, ptrs: dict[str, Any]) -> int:
    stats = call.ffi.new("yref_stats *")
    return call.mod.lib.yref_forward(
        ptrs.get("cfg", call.c), ptrs.get("input", call.buf(call.input)),
        ptrs.get("truth", call.buf(call.truth)), ptrs.get("output", call.buf(call.output)),
        ptrs.get("delta", call.buf(call.delta)), call.buf(call.roles, "int[]"), ptrs.get("stats", stats))


def _shim_forward(call: Call, ptrs: dict[str, Any], quiet: int = 1) -> int:
    result = call.ffi.new("dps_result *")
    return call.mod.lib.dps_forward(
        ptrs.get("cfg", call.c), ptrs.get("input", call.buf(call.input)),
        ptrs.get("truth", call.buf(call.truth)), ptrs.get("output", call.buf(call.output)),
        ptrs.get("delta", call.buf(call.delta)), ptrs.get("result", result), quiet)


def _expect(what: str, name: str, status: int, expected: int, call: Call) -> None:
    if status != expected:
        FAIL.add("refusals", f"{what} {name}: status {status}, expected {expected}")
    elif expected and not call.untouched():
        FAIL.add("refusals", f"{what} {name}: refused (status {status}) but wrote into output/delta")


def refusals_section(with_lib: bool) -> None:
    ref = load_reference()
    probes = 0
    for flavor in ("alexeyab", "pjreddie"):
        call = _valid_call(ref, flavor)
        _expect(f"yref_forward {flavor}", "valid call", _ref_forward(call, {}), 0, call)
        call = _valid_call(ref, flavor)
        _expect(f"yref_forward {flavor}", "NULL stats", _ref_forward(call, {"stats": call.ffi.NULL}),
                YREF["NULL"], call)
        call = _valid_call(ref, flavor)
        call.c.flavor = 7
        _expect(f"yref_forward {flavor}", "flavor 7", _ref_forward(call, {}), YREF["OPTION"], call)
        probes += 3
        for name, change, expected in _refusal_cases(flavor):
            call = _valid_call(ref, flavor)
            ptrs = change(call)
            _expect(f"yref_forward {flavor}", name, _ref_forward(call, ptrs), YREF[expected], call)
            probes += 1
    # Through the Python API: refused before the C, with a message.
    config = _config("pjreddie")
    for bad in ((0.5, 1.0), (np.nan, 0.5), (0.5, -0.1)):
        t = np.zeros((1, 3, 6), np.float32)
        t[0, 0, :5] = (*bad, 0.1, 0.1, 0)
        for backend in ("c", "libdarknet") if with_lib else ("c",):
            try:
                run_reference(config, np.zeros((1, config.channels, 3, 3), np.float32), t, backend=backend)
                FAIL.add("refusals", f"{backend}: truth centre {bad} was not refused")
            except InputError:
                pass
            probes += 1
    if with_lib:
        probes += _shim_refusals()
    print(f"   {probes} refusal probes", flush=True)


def _shim_refusals() -> int:
    from parity.backends.darknet_library import find_library
    from parity.backends.libdarknet import load_shim

    shim = load_shim(find_library())
    probes = 0
    call = _valid_call(shim, "pjreddie")
    _expect("dps_forward", "valid call", _shim_forward(call, {}), 0, call)
    call = _valid_call(shim, "pjreddie")
    with _output_silenced():
        _expect("dps_forward", "valid call, not quiet", _shim_forward(call, {}, quiet=0), 0, call)
    call = _valid_call(shim, "pjreddie")
    _expect("dps_forward", "NULL result", _shim_forward(call, {"result": call.ffi.NULL}), DPS["NULL"], call)
    call = _valid_call(shim, "pjreddie")
    call.c.flavor = FLAVOR_CODES["alexeyab"]
    _expect("dps_forward", "alexeyab flavor into a pjreddie build", _shim_forward(call, {}), DPS["OPTION"], call)
    # Past darknet's int sizes (the C reference takes these: the caller's buffers set its limit).
    for name, sizes in (("grid 65536 x 65536, 80 classes", dict(w=65536, h=65536, classes=80)),
                        ("batch 100000 on a 1000 x 1000 grid", dict(batch=100000, w=1000, h=1000)),
                        ("max_boxes 400000000 with batch 2", dict(max_boxes=400_000_000, truth_rows=0))):
        call = _valid_call(shim, "pjreddie")
        for key, value in sizes.items():
            setattr(call.c, key, value)
        _expect("dps_forward", name, _shim_forward(call, {"truth": call.ffi.NULL}), DPS["SIZE"], call)
        probes += 1
    call = _valid_call(shim, "pjreddie")
    call.c.max_boxes = 91
    call.c.truth_rows = 5
    _expect("dps_forward", "max 91 (pjreddie keeps 90 boxes)", _shim_forward(call, {}), DPS["TRUTHS"], call)
    probes += 5
    for name, change, expected in _refusal_cases("pjreddie"):
        call = _valid_call(shim, "pjreddie")
        ptrs = change(call)
        _expect("dps_forward", name, _shim_forward(call, ptrs), DPS[expected], call)
        probes += 1
    # No file descriptor left for the /dev/null redirect: at the first fd, and after one fd moved.
    for free in (0, 1, 2):
        call = _valid_call(shim, "pjreddie")
        with _free_fds(free):
            status = _shim_forward(call, {})
        _expect("dps_forward", f"{free} free file descriptors", status, DPS["QUIET"], call)
        probes += 1
    call = _valid_call(shim, "pjreddie")
    _expect("dps_forward", "valid call after the fd probes", _shim_forward(call, {}), 0, call)
    return probes + 1


@contextmanager
def _output_silenced() -> Iterator[None]:
    """darknet's own prints (stdout and stderr) to /dev/null; sanitizer reports go to their log_path."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        for fd, copy in zip((1, 2), saved):
            os.dup2(copy, fd)
            os.close(copy)
        os.close(devnull)


@contextmanager
def _free_fds(free: int) -> Iterator[None]:
    """Exactly ``free`` file descriptors left below the soft limit while inside."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    top = max(int(name) for name in os.listdir("/proc/self/fd"))
    resource.setrlimit(resource.RLIMIT_NOFILE, (top + 64, hard))
    held: list[int] = []
    try:
        while True:
            try:
                held.append(os.open(os.devnull, os.O_RDONLY))
            except OSError:
                break
        for _ in range(free):
            os.close(held.pop())
        yield
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


# ---------------------------------------------------------------- size overflow

# Sizes at the limits of int, where a size check's own arithmetic can overflow: each must come back
# as a size error. darknet's l.outputs and its indices are int, so no such layer exists in darknet.
# Each probe runs in a child process: a sanitizer abort there is a finding, and the others still run.
OVERFLOW_PROBES = {
    "grid INT_MAX x INT_MAX": dict(w=INT_MAX, h=INT_MAX),
    "batch INT_MAX, grid 65536 x 65536": dict(batch=INT_MAX, w=65536, h=65536),
    "classes INT_MAX - 4 (5 + classes overflows), 1x1 grid": dict(classes=INT_MAX - 4, batch=1, w=1, h=1, n=1),
    "classes INT_MAX, 1x1 grid": dict(classes=INT_MAX, batch=1, w=1, h=1, n=1),
    "max_boxes INT_MAX": dict(max_boxes=INT_MAX, truth_rows=0),
}
OVERFLOW_TARGETS = {"yref_forward": "alexeyab", "dps_forward": "pjreddie"}


def overflow_probe(target: str, name: str) -> int:
    """Run one probe (in the child): 0 if refused as a size error with nothing written."""
    if target == "dps_forward":
        from parity.backends.darknet_library import find_library
        from parity.backends.libdarknet import load_shim

        mod, forward, expected = load_shim(find_library()), _shim_forward, DPS["SIZE"]
    else:
        mod, forward, expected = load_reference(), _ref_forward, YREF["SIZE"]
    call = _valid_call(mod, OVERFLOW_TARGETS[target])
    for key, value in OVERFLOW_PROBES[name].items():
        setattr(call.c, key, value)
    if name.startswith("max_boxes") and target == "yref_forward":  # no truth rows: a valid call
        expected = 0
    _expect(target, name, forward(call, {"truth": call.ffi.NULL} if not call.c.truth_rows else {}), expected, call)
    return 1 if FAIL.items else 0


def _sanitizer_logs(pid: int) -> list[Path]:
    logs = []
    for var in ("ASAN_OPTIONS", "UBSAN_OPTIONS"):
        for option in os.environ.get(var, "").split(":"):
            if option.startswith("log_path="):
                logs.append(Path(f"{option[len('log_path='):]}.{pid}"))
    return [p for p in logs if p.exists()]


def overflow_section(with_lib: bool) -> None:
    import subprocess

    targets = [t for t in OVERFLOW_TARGETS if with_lib or t != "dps_forward"]
    for target in targets:
        for name in OVERFLOW_PROBES:
            child = subprocess.Popen([sys.executable, __file__, "--probe", target, name],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            out, _ = child.communicate()
            if child.returncode == 0:
                continue
            text = out + "".join(p.read_text(errors="replace") for p in _sanitizer_logs(child.pid))
            first = next((line.strip().removeprefix(f"FAIL {target} {name}: ") for line in text.splitlines()
                          if "runtime error" in line or "ERROR: AddressSanitizer" in line or "FAIL" in line),
                         f"exit {child.returncode}")
            FAIL.add("overflow", f"{target} {name}: {first}")
    print(f"   {len(targets) * len(OVERFLOW_PROBES)} probes, each in its own process", flush=True)


# ---------------------------------------------------------------- main


SECTIONS = ("replay", "random", "extremes", "profiles", "libdarknet", "libdarknet-extremes", "refusals",
            "overflow")
NEEDS_LIBRARY = ("libdarknet", "libdarknet-extremes")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--random", type=int, default=2000, help="generated C reference cases (default 2000)")
    parser.add_argument("--libdarknet", type=int, default=300, help="generated libdarknet cases (default 300)")
    parser.add_argument("--seed", type=int, default=20240)
    parser.add_argument("--sections", default=",".join(SECTIONS),
                        help=f"comma-separated, in this order: {','.join(SECTIONS)} (default: all)")
    parser.add_argument("--require-libdarknet", action="store_true",
                        help="fail instead of skipping when Debian's libdarknet is absent")
    parser.add_argument("--probe", nargs=2, metavar=("TARGET", "NAME"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    route_ubsan_reports()
    if args.probe:
        warnings.simplefilter("ignore")
        return overflow_probe(*args.probe)
    chosen = [name.strip() for name in args.sections.split(",") if name.strip()]
    unknown = [name for name in chosen if name not in SECTIONS]
    if unknown:
        parser.error(f"unknown section {unknown[0]!r}; known: {', '.join(SECTIONS)}")

    # darknet's own complaints about the edge inputs (DarknetInputWarning, ConfigWarning) are the point here.
    warnings.simplefilter("ignore")
    start = time.perf_counter()
    check_sanitized(load_reference().__file__, "C reference")
    with_lib = libdarknet_available()
    if not with_lib and args.require_libdarknet:
        print("sanitize_driver: Debian's libdarknet (/usr/lib/darknet) is absent", file=sys.stderr)
        return 1
    runs: dict[str, Callable[[], Any]] = {
        "replay": replay_section,
        "random": lambda: random_section(args.random, args.seed),
        "extremes": lambda: extremes_section(args.seed),
        "profiles": lambda: profiles_section(args.seed),
        "libdarknet": lambda: libdarknet_section(args.libdarknet, args.seed),
        "libdarknet-extremes": lambda: extremes_section(args.seed + 1, backend="libdarknet"),
        "refusals": lambda: refusals_section(with_lib),
        "overflow": lambda: overflow_section(with_lib),
    }
    for name in SECTIONS:
        if name not in chosen:
            continue
        if name in NEEDS_LIBRARY and not with_lib:
            print(f"== {name}: skipped (no /usr/lib/darknet/libdarknet.so)", flush=True)
            continue
        with section(name):
            runs[name]()
    took = time.perf_counter() - start
    if FAIL.items:
        print(f"sanitize_driver: {len(FAIL.items)} failure(s) in {took:.0f} s:", file=sys.stderr)
        for item in FAIL.items:
            print(f"  {item}", file=sys.stderr)
        return 1
    print(f"sanitize_driver: {', '.join(chosen)}: passed in {took:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
