#!/usr/bin/env python3
"""Bit-identity (and speed) of this checkout's C reference against another commit's.

    python tools/compare_c_builds.py --against 1ba8138 [-n 3000] [--seed 0]
    python tools/compare_c_builds.py --against 1ba8138 -n 0 --bench 7

Builds ``darknet_ref/`` as it was at COMMIT into a temporary folder (cffi,
the same flags as parity/backends/ref_build.py) and runs both builds on the same
inputs, calling ``yref_forward`` directly (no Python-side refusals in the
way, so the C's own status codes are compared too):

* N generated cases: ``parity.generate.random_config``/``random_case`` with
  and without NaN/Inf, and the feature-driven generator with every edge
  feature turned up (shared cells, borders, tiny/huge boxes, class ids out of
  range, mid-list terminators, rows past max, NaN/Inf, wild predictions);
* every recorded case (``shared/recorded`` and ``fixtures/``).

Output, delta, roles, every stats field and every branch counter must be
byte-identical, and so must the status. When this checkout's build exports
``yref_forward_decisions``, each case is run through it a second time with
every decision array requested, and those results must match too (asking for
decisions must change nothing).

``--bench R``: the YOLOv4 608 workload of benchmarks/bench_yolov4.py (three
heads, batch 8, 50 truths per image), old and new interleaved R times in one
process; prints each build's minimum and the ratio of minimums.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from parity.backends import ref_build as _build_ref  # noqa: E402
from parity.errors import ParityError  # noqa: E402
from parity.backends.ground import FLAVOR_CODES, fill_layer_struct  # noqa: E402

# The part of the API every commit has: enough to call yref_forward.
_OLD_CDEF = _build_ref.CONFIG_CDEF + _build_ref.STATS_CDEF

STATS_FIELDS = ("cost", "count", "assigned", "rewritten_bbox", "total_bbox", "tot_iou", "tot_iou_loss",
                "tot_giou_loss", "avg_iou", "class_loss", "iou_loss", "total_loss")


def build_commit(commit: str, tmp: Path) -> Any:
    """Compile ``darknet_ref/*.c`` of ``commit`` (git show) into ``tmp``; return the module."""
    src = tmp / "darknet_ref"
    src.mkdir(parents=True)
    names = subprocess.run(["git", "-C", str(ROOT), "ls-tree", "--name-only", f"{commit}:darknet_ref"],
                           check=True, capture_output=True, text=True).stdout.split()
    for name in names:
        if name.endswith((".c", ".h")):
            blob = subprocess.run(["git", "-C", str(ROOT), "show", f"{commit}:darknet_ref/{name}"],
                                  check=True, capture_output=True).stdout
            (src / name).write_bytes(blob)
    import cffi

    ffi = cffi.FFI()
    ffi.cdef(_OLD_CDEF % {"branch_count": _build_ref.branch_count(src)})
    module = f"_darknet_ref_old_{commit[:12]}"
    ffi.set_source(module, '#include "yolo_ref.h"\n',
                   sources=[os.fspath(src / n) for n in sorted(names) if n.endswith(".c")],
                   include_dirs=[os.fspath(src)], extra_compile_args=list(_build_ref.CFLAGS), libraries=["m"])
    built = ffi.compile(tmpdir=os.fspath(tmp / "build"), verbose=False)
    import importlib.util

    spec = importlib.util.spec_from_file_location(module, built)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class Runner:
    """Calls one build's yref_forward (and, if asked, yref_forward_decisions) on raw arrays."""

    def __init__(self, mod: Any) -> None:
        self.mod, self.ffi, self.lib = mod, mod.ffi, mod.lib
        self.has_decisions = hasattr(self.lib, "yref_forward_decisions")

    def run(self, config: Any, flavor: str, x: np.ndarray, t: np.ndarray, decisions: bool = False) -> dict:
        call, collect = self.prepare(config, flavor, x, t, decisions)
        return collect(call())

    def prepare(self, config: Any, flavor: str, x: np.ndarray, t: np.ndarray, decisions: bool = False):
        """(call, collect): ``call()`` runs the C once on ready buffers and returns its status;
        ``collect(status)`` turns the buffers into the result dict. Timing measures ``call`` only."""
        ffi, lib = self.ffi, self.lib
        keep: list[Any] = []
        B, _, H, W = x.shape
        shape = argparse.Namespace(batch=B, n=config.n, h=H, w=W)
        cfg = ffi.new("yref_config *")
        cfg.flavor = FLAVOR_CODES[flavor]
        fill_layer_struct(ffi, cfg, config, flavor, shape, t, keep)
        output = np.full_like(x, 7.0)
        delta = np.full_like(x, 7.0)
        roles = np.full((B, config.n, H, W), -3, np.int32)
        stats = ffi.new("yref_stats *")
        args = (cfg, ffi.from_buffer("float[]", x), ffi.from_buffer("float[]", t) if t.size else ffi.NULL,
                ffi.from_buffer("float[]", output, require_writable=True),
                ffi.from_buffer("float[]", delta, require_writable=True),
                ffi.from_buffer("int[]", roles, require_writable=True), stats)
        dec_arrays: dict[str, np.ndarray] = {}
        if decisions:
            d = ffi.new("yref_decisions *")
            slots, rows = (B, config.n, H, W), (B, t.shape[1])
            spec = dict(best_iou=(slots, np.float32), second_iou=(slots, np.float32),
                        best_truth=(slots, np.int32), best_match_iou=(slots, np.float32),
                        max_class_prob=(slots, np.float32), class_match=(slots, np.int32),
                        divisor=(slots, np.int32), truth_used=(rows, np.int32),
                        truth_best_anchor=(rows, np.int32), truth_i=(rows, np.int32), truth_j=(rows, np.int32),
                        anchor_iou=(rows + (config.num,), np.float32),
                        anchor_thresh_iou=(rows + (config.num,), np.float32),
                        assign=((max(1, B * t.shape[1] * config.n), 7), np.int32))
            for name, (shp, dt) in spec.items():
                arr = np.full(shp, 99, dt)
                dec_arrays[name] = arr
                setattr(d, name, ffi.from_buffer("float[]" if dt == np.float32 else "int[]", arr,
                                                 require_writable=True))
            d.assign_capacity = dec_arrays["assign"].shape[0]

            def call() -> int:
                return lib.yref_forward_decisions(*args, d)
        else:
            d = None

            def call() -> int:
                return lib.yref_forward(*args)

        def collect(status: int) -> dict:
            if d is not None:
                dec_arrays["assign_count"] = np.array(d.assign_count)
            out = {"status": status, "output": output, "delta": delta, "roles": roles,
                   "branches": np.array([stats.branches[k] for k in range(len(stats.branches))], np.int64)}
            for name in STATS_FIELDS:
                value = getattr(stats, name)
                out[name] = np.array(value, np.float32 if isinstance(value, float) else np.int64)
            out["decisions"] = dec_arrays
            return out
        return call, collect


def differences(a: dict, b: dict) -> list[str]:
    """Keys whose values are not byte-identical."""
    bad = []
    for key in ("status", "output", "delta", "roles", "branches") + STATS_FIELDS:
        va, vb = np.asarray(a[key]), np.asarray(b[key])
        if va.dtype != vb.dtype or va.shape != vb.shape or va.tobytes() != vb.tobytes():
            bad.append(key)
    return bad


def generated_cases(n: int, seed: int):
    """n (config, flavor, input, truth, label) from parity.generate, NaN/Inf and edge features included."""
    from parity.generate import CaseFeatures, CaseShape, random_case, random_config

    edgy = CaseFeatures(plant=0.8, plant_tight=0.5, plant_wild=0.3, shared_cell=0.4, border=0.3, tiny=0.2,
                        huge=0.2, class_oob=0.15, empty_image=0.15, mid_terminator=0.3, over_max=0.3,
                        nonfinite=0.5)
    for k in range(n):
        rng = np.random.default_rng([seed, k])
        flavor = "pjreddie" if rng.random() < 0.3 else "alexeyab"
        config = random_config(rng, flavor)
        kind = k % 5
        try:
            if kind in (0, 4):
                case = random_case(seed * 100003 + k, config, flavor=flavor)
            elif kind == 1:
                case = random_case(seed * 100003 + k, config, flavor=flavor, nonfinite=int(rng.integers(1, 40)))
            else:
                feats = edgy if kind == 2 else CaseFeatures()
                if flavor == "pjreddie":
                    feats = CaseFeatures(**{**feats.as_dict(), "class_oob": 0.0})
                shape = CaseShape(batch=int(rng.integers(1, 4)), h=int(rng.integers(1, 14)),
                                  w=int(rng.integers(1, 14)), max_truths=int(rng.integers(0, 40)))
                case = random_case(seed * 100003 + k, config, flavor=flavor, shape=shape, features=feats)
        except ParityError:
            continue
        truth = case.truth
        if kind == 4 and truth.size:
            # Inputs the C must refuse (or, for AlexeyAB class ids, skip): a centre on the far
            # border, NaN/out-of-range class ids, NaN sizes, a zero x mid-list.
            truth = truth.copy()
            b, r = int(rng.integers(0, truth.shape[0])), int(rng.integers(0, truth.shape[1]))
            col, value = [(0, 1.0), (4, np.nan), (4, -1.0), (4, 3e9), (2, np.nan), (3, np.inf), (0, 0.0),
                          (2, 0.0), (1, -0.5)][int(rng.integers(0, 9))]
            truth[b, r, col] = value
        yield config, flavor, case.input, truth, f"generated#{k} kind{kind} {flavor}"


def recorded_cases():
    from parity.case import load_case
    from parity.replay import case_paths, shared_recorded_dir

    dirs = [ROOT / "fixtures"]
    shared = shared_recorded_dir()
    if shared is not None:
        dirs.append(shared)
    skipped = 0
    for path in case_paths(dirs):
        try:
            case = load_case(path)
            config = case.config
        except ParityError:
            # A cfg our parser refuses on purpose (iou_loss=CIoU, map=): compare the two C
            # builds on it anyway, with the value darknet falls back to / without the map.
            config, case = _lenient(path), None
            if config is None:
                skipped += 1
                continue
            with np.load(path) as data:
                x, t = data["input"], data["truth"]
            yield config, config.flavor, x, t, f"{path} (lenient cfg)"
            continue
        yield config, case.flavor, case.input, case.truth, str(path)
    print(f"recorded: {skipped} case(s) not readable even leniently, not compared")


def _lenient(path: Path) -> Any:
    """The case's config with option values darknet silently replaces written as it uses them."""
    import json
    import re

    from parity.cfg import yolo_config_from_cfg

    with np.load(path) as data:
        text = str(data["cfg"][()])
        flavor = json.loads(str(data["meta"][()])).get("flavor", "alexeyab") if "meta" in data.files else "alexeyab"
    known_loss = ("mse", "iou", "giou", "diou", "ciou")
    text = re.sub(r"(?m)^\s*map\s*=.*$", "", text)
    text = re.sub(r"(?m)^(\s*iou_loss\s*=\s*)(\S+)\s*$",
                  lambda m: m.group(0) if m.group(2) in known_loss else m.group(1) + "iou", text)
    text = re.sub(r"(?m)^(\s*iou_thresh_kind\s*=\s*)(\S+)\s*$",
                  lambda m: m.group(0) if m.group(2) in known_loss[1:] else m.group(1) + "iou", text)
    try:
        return yolo_config_from_cfg(text, path=f"{path}:cfg (lenient)", flavor=flavor)
    except ParityError:
        return None


def _prepared(config: Any, flavor: str, x: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The arrays as the Python wrapper hands them to C (pjreddie reads 5 columns)."""
    from parity.layer_input import check_layer_input

    try:
        x2, t2, _ = check_layer_input(config, x, t, flavor)
        return x2, t2
    except ParityError:
        return np.ascontiguousarray(x, np.float32), np.ascontiguousarray(t, np.float32)


def compare(old: Runner, new: Runner, cases, verbose: bool) -> tuple[int, int, dict]:
    done = failed = 0
    statuses: dict[int, int] = {}
    for config, flavor, x, t, label in cases:
        x, t = _prepared(config, flavor, x, t)
        a = old.run(config, flavor, x, t)
        b = new.run(config, flavor, x, t)
        bad = differences(a, b)
        if new.has_decisions:
            c = new.run(config, flavor, x, t, decisions=True)
            bad += [f"{k} (with decisions)" for k in differences(a, c)]
        statuses[int(a["status"])] = statuses.get(int(a["status"]), 0) + 1
        done += 1
        if bad:
            failed += 1
            print(f"MISMATCH {label}: {', '.join(bad)}")
        elif verbose:
            print(f"ok {label}")
    return done, failed, statuses


def bench(old: Runner, new: Runner, repeats: int) -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from bench_yolov4 import workload

    heads = []
    for config, x, t in workload(8, 50):
        x2, t2 = _prepared(config, config.flavor, x, t)
        heads.append((config, x2, t2))

    calls = {id(r): [r.prepare(config, config.flavor, x, t)[0] for config, x, t in heads] for r in (old, new)}

    def once(runner: Runner) -> float:
        t0 = time.perf_counter()
        for call in calls[id(runner)]:
            if call() != 0:
                raise SystemExit("bench: the C reference refused the workload")
        return time.perf_counter() - t0

    for r in (old, new):
        once(r)
    times: dict[str, list[float]] = {"old": [], "new": []}
    for _ in range(repeats):
        times["old"].append(once(old))
        times["new"].append(once(new))
    mo, mn = min(times["old"]), min(times["new"])
    print("bench: YOLOv4 608, heads 76/38/19, 80 classes, batch 8, 50 truths/image, 1 thread")
    print(f"  old: min {mo:.4f} s  (all: {' '.join(f'{v:.3f}' for v in times['old'])})")
    print(f"  new: min {mn:.4f} s  (all: {' '.join(f'{v:.3f}' for v in times['new'])})")
    print(f"  speedup (ratio of minimums): {mo / mn:.2f}x")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--against", required=True, help="commit whose darknet_ref/ is the baseline")
    ap.add_argument("-n", type=int, default=3000, help="generated cases (default 3000)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-recorded", action="store_true", help="skip the recorded cases")
    ap.add_argument("--bench", type=int, default=0, metavar="R", help="also time both builds, R repeats")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args()
    import warnings

    warnings.simplefilter("ignore")
    from parity.backends.c_reference import load_reference

    import parity
    print(f"parity from {parity.__file__}")
    with tempfile.TemporaryDirectory(prefix="oldref-") as tmp:
        old = Runner(build_commit(args.against, Path(tmp)))
        new = Runner(load_reference())
        print(f"baseline {args.against} built; this checkout's build exports decisions: {new.has_decisions}")
        total_done = total_failed = 0
        if args.n:
            done, failed, st = compare(old, new, generated_cases(args.n, args.seed), args.verbose)
            print(f"generated: {done} cases, {failed} mismatching; statuses {st}")
            total_done, total_failed = total_done + done, total_failed + failed
        if not args.no_recorded:
            done, failed, st = compare(old, new, recorded_cases(), args.verbose)
            print(f"recorded: {done} cases, {failed} mismatching; statuses {st}")
            total_done, total_failed = total_done + done, total_failed + failed
        if args.bench:
            bench(old, new, args.bench)
    print(f"total: {total_done} cases, {total_failed} mismatching")
    return 1 if total_failed else 0


if __name__ == "__main__":
    sys.exit(main())
