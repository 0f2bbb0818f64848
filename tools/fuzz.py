#!/usr/bin/env python3
"""A long random campaign: the C reference against the PyTorch port (``make fuzz``).

Every case is drawn from a seed (``--seed S``, case ``k`` uses the seed
``[FUZZ_TAG, S, k]``), so any finding replays exactly. A case is:

* a config drawn across every option's range, extremes included: one class
  or 80, a 1x1 grid, tiny (1e-3 px) and huge (1e5 px) anchors, duplicated
  anchors and mask entries, ``max=1`` up to 300 boxes, both flavors, every
  ``iou_loss`` and ``iou_thresh_kind``, thresholds at 0 and above 1,
  ``new_coords``, ``objectness_smooth``, label smoothing up to 1, focal loss,
  ``counters_per_class``, ``max_delta`` from 0 to FLT_MAX, zero normalizers,
  ``scale_x_y`` from 0.5 to 3, net sizes from 1 to 2048;
* inputs from ``parity.generate.generate_cases`` (planted overlaps, shared
  cells, borders, tiny/huge boxes, terminators, rows past ``max``, NaN/Inf)
  with feature probabilities drawn per case, then mutated: logits scaled up
  to 1e30 or set to +-FLT_MAX, denormals, extra NaN/Inf; truths with
  fractional or negative-fraction class ids, ``-0.0`` terminators, garbage
  (NaN, centres outside [0, 1), huge class ids) in rows darknet never
  reads (past ``max`` or after the terminator), sizes of 0, negative, NaN,
  Inf or above 1, denormal centres, the largest centre below 1 that stays in
  the grid, 5-column truth arrays. Every case passes ``check_layer_input``.

For each case the C reference and ``parity.torch.yolo_forward`` run on the
same input and are compared: the delta term by term with the borderline
rule of ``parity.diff`` (a mismatch at a slot whose deciding quantity lies
within tolerance of its threshold is borderline, hence explained), the
activated output element by element, the per-slot role bits (a difference
is explained only at a borderline slot), and the counters and cost (a
difference is explained only when the case has a borderline decision).
Anything else is a failure: it is shrunk with ``parity.shrink.shrink_case``
and saved under ``fixtures/fuzz/`` as a format-v1 case holding the C
reference's output and delta, so ``darknet-parity replay`` reproduces it.

Cases run in spawned worker processes (``--jobs``, default 2, one torch
thread each) that report every case as it finishes. A worker that dies (a
crash in the C reference or in torch) names the case it was running: that
case is a crash (saved as generated, under ``fixtures/fuzz/``), the rest of
its chunk goes back to the queue and a fresh worker takes over. A case
running past 300 s counts the same way. Exceptions are caught and recorded
per case. ``--index K...`` re-runs single cases of a campaign.

Prints a summary and writes it as JSON to ``out/fuzz.json``; exits 1 on any
crash, error or unexplained mismatch.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from parity.case import Case  # noqa: E402
from parity.cfg import dump_yolo_cfg  # noqa: E402
from parity.config import FLT_MAX, IOU_KINDS, THRESH_KINDS, YoloConfig  # noqa: E402
from parity.errors import ParityError  # noqa: E402
from parity.generate import (COCO_ANCHORS, COMBINATIONS, CaseFeatures, HeadGrid, generate_cases,  # noqa: E402
                             random_class_map, reached_combinations)
from parity.layer_input import active_rows, check_layer_input  # noqa: E402

FUZZ_TAG = 0x5F022   # first word of every case seed: fuzz cases never collide with other generators
DEFAULT_CASES = 10_000
CHUNK = 25            # cases per worker task
FIXTURE_DIR = ROOT / "fixtures" / "fuzz"
DEFAULT_JSON = ROOT / "out" / "fuzz.json"
# Set to a case index, the worker running that case exits at once: checks crash detection.
SELFTEST_CRASH_ENV = "DARKNET_PARITY_FUZZ_SELFTEST_CRASH_AT"


# --------------------------------------------------------------------------
# Configs


def _pick(rng: np.random.Generator, options: list[Any]) -> Any:
    return options[int(rng.integers(0, len(options)))]


def _anchors(rng: np.random.Generator, num: int) -> tuple[float, ...]:
    """Anchor (w, h) pairs: COCO-like, tiny, huge, mixed or with duplicates (exact best-anchor ties)."""
    kind = _pick(rng, ["coco", "coco", "random", "tiny", "huge", "mixed", "duplicates"])
    if kind == "coco" and num <= 9:
        start = int(rng.integers(0, 9 - num + 1))
        return tuple(float(v) for v in COCO_ANCHORS[2 * start: 2 * (start + num)])
    if kind == "tiny":
        values = np.exp(rng.uniform(np.log(1e-3), np.log(2.0), size=2 * num))
    elif kind == "huge":
        values = np.exp(rng.uniform(np.log(500.0), np.log(1e5), size=2 * num))
    elif kind == "mixed":
        values = np.exp(rng.uniform(np.log(1e-3), np.log(1e5), size=2 * num))
    else:
        values = np.exp(rng.uniform(np.log(4.0), np.log(600.0), size=2 * num))
    values = [float(np.float32(v)) for v in values]
    if kind == "duplicates" and num > 1:
        for a in range(1, num):
            if rng.random() < 0.5:
                src = int(rng.integers(0, a))
                values[2 * a: 2 * a + 2] = values[2 * src: 2 * src + 2]
    return tuple(values)


def _mask(rng: np.random.Generator, num: int) -> tuple[int, ...]:
    n = int(rng.integers(1, min(num, 4) + 1))
    mask = [int(m) for m in rng.choice(num, size=n, replace=False)]
    if rng.random() < 0.7:
        mask.sort()
    if rng.random() < 0.05:                       # darknet accepts a repeated mask entry
        mask.append(mask[int(rng.integers(0, len(mask)))])
    return tuple(mask)


def fuzz_config(rng: np.random.Generator, flavor: str) -> YoloConfig:
    """A [yolo] config with every option drawn across its range, extremes included."""
    classes = int(_pick(rng, [1, 1, 2, 3, int(rng.integers(1, 21)), int(rng.integers(1, 21)), 80]))
    num = int(_pick(rng, [1, 2, 3, 6, 9, 9, int(rng.integers(1, 13))]))
    net_w = int(_pick(rng, [416, 608, 320, 64, 96, 1, int(rng.integers(1, 2049))]))
    net_h = int(_pick(rng, [net_w, net_w, 416, 32, 1, int(rng.integers(1, 2049))]))
    thresholds = [0.0, 0.3, 0.5, 0.7, 1.0, float(np.float32(rng.uniform(0, 1)))]
    common = dict(
        classes=classes, num=num, mask=_mask(rng, num), anchors=_anchors(rng, num), net_w=net_w, net_h=net_h,
        ignore_thresh=float(_pick(rng, thresholds + [0.5, 0.7, 1.5])),
        truth_thresh=float(_pick(rng, [1.0, 1.0, 1.0, 0.6, 0.8, 0.0, 1.5, float(np.float32(rng.uniform(0, 1)))])),
        flavor=flavor,
    )
    if flavor == "pjreddie":
        return YoloConfig(max_boxes=int(_pick(rng, [90, 90, 1, 2, 5, int(rng.integers(1, 91))])), **common)
    opts: dict[str, Any] = dict(
        iou_loss=str(_pick(rng, list(IOU_KINDS))),
        iou_thresh_kind=str(_pick(rng, list(THRESH_KINDS))),
        iou_thresh=float(_pick(rng, [1.0, 1.0, 0.213, 0.5, 0.0, 1.5, float(np.float32(rng.uniform(0, 1)))])),
        iou_normalizer=float(_pick(rng, [0.75, 0.07, 0.05, 1.0, 0.0, 10.0])),
        obj_normalizer=float(_pick(rng, [1.0, 1.0, 4.0, 0.1, 0.0])),
        cls_normalizer=float(_pick(rng, [1.0, 1.0, 0.5, 0.0, 3.0])),
        scale_x_y=float(_pick(rng, [1.0, 1.0, 1.05, 1.1, 1.2, 2.0, 0.5, 3.0])),
        label_smooth_eps=float(_pick(rng, [0.0, 0.0, 0.0, 0.1, 0.5, 1.0])),
        focal_loss=int(rng.random() < 0.15),
        objectness_smooth=int(rng.random() < 0.15),
        new_coords=int(rng.random() < 0.15),
        max_delta=float(_pick(rng, [FLT_MAX, FLT_MAX, FLT_MAX, 5.0, 0.3, 1e-3, 0.0, 100.0])),
        show_details=int(rng.random() < 0.8),
        max_boxes=int(_pick(rng, [200, 200, 1, 2, 5, 300, int(rng.integers(1, 301))])),
    )
    if rng.random() < 0.2:
        counters = rng.integers(0, 5000, size=classes)
        if rng.random() < 0.3:
            counters[int(rng.integers(0, classes))] = 0
        opts["counters_per_class"] = tuple(int(v) for v in counters)
    opts["class_map"] = random_class_map(rng, classes)
    return YoloConfig(**common, **opts)


def _features(rng: np.random.Generator) -> CaseFeatures:
    """Generator feature probabilities drawn per case (so some cases are dense in one edge)."""
    def p(*values: float) -> float:
        return float(_pick(rng, list(values)))
    tiny = p(0.0, 0.1, 0.3, 0.5)
    return CaseFeatures(
        plant=p(0.0, 0.6, 0.9, 1.0), plant_class_match=p(0.0, 0.6, 1.0), plant_tight=p(0.0, 0.3, 0.8),
        plant_neighbour=p(0.0, 0.15, 0.5), plant_wild=p(0.0, 0.1, 0.5), shared_cell=p(0.0, 0.15, 0.5, 0.9),
        border=p(0.0, 0.15, 0.5), tiny=tiny, huge=min(p(0.0, 0.1, 0.3, 0.5), 1.0 - tiny),
        anchor_sized=p(0.0, 0.3, 0.8), class_oob=p(0.0, 0.05, 0.3), empty_image=p(0.0, 0.1, 0.5),
        mid_terminator=p(0.0, 0.15, 0.5), over_max=p(0.0, 0.05, 0.5), nonfinite=p(0.0, 0.1, 0.1, 0.3))


# --------------------------------------------------------------------------
# Cases


def _mutate_input(rng: np.random.Generator, x: np.ndarray, applied: list[str]) -> None:
    """Large magnitudes, FLT_MAX, denormals, zeros and extra NaN/Inf, in place."""
    flat = x.reshape(-1)
    if rng.random() < 0.1:
        flat *= np.float32(_pick(rng, [10.0, 100.0, 1e4, 1e10, 1e30]))
        applied.append("scaled")
    if rng.random() < 0.2:
        k = int(rng.integers(1, 21))
        idx = rng.integers(0, flat.size, size=k)
        values = np.array([_pick(rng, [1e4, -1e4, 1e10, -1e10, 1e30, -1e30, FLT_MAX, -FLT_MAX, 0.0, -0.0,
                                       1e-40, -1e-40, 88.8, -88.8, 710.0, -710.0]) for _ in range(k)], np.float32)
        flat[idx] = values
        applied.append("extreme_logits")
    if rng.random() < 0.1:
        k = int(rng.integers(1, 6))
        idx = rng.integers(0, flat.size, size=k)
        flat[idx] = np.array([_pick(rng, [np.nan, np.inf, -np.inf]) for _ in range(k)], np.float32)
        applied.append("extra_nonfinite")


def _largest_valid_below_one(grid: int) -> np.float32:
    v = np.nextafter(np.float32(1), np.float32(0))
    while int(v * np.float32(grid)) >= grid:
        v = np.nextafter(v, np.float32(0))
    return v


def _mutate_truth(rng: np.random.Generator, truth: np.ndarray, config: YoloConfig, flavor: str, w: int, h: int,
                  applied: list[str]) -> np.ndarray:
    """Edge values darknet reads (and garbage in rows it never reads); returns a new array."""
    t = truth.copy()
    active = active_rows(t, config.max_boxes)
    with np.errstate(invalid="ignore"):
        cls = t[..., 4]
        in_range = active & np.isfinite(cls) & (np.trunc(np.nan_to_num(cls)) >= 0) & (np.trunc(np.nan_to_num(cls)) < config.classes)
    used = np.argwhere(in_range)
    if used.size and rng.random() < 0.2:          # fractional class ids (truncated by darknet), -0.x reads as 0
        for b, r in used[rng.random(len(used)) < 0.5]:
            c = t[b, r, 4]
            t[b, r, 4] = np.float32(-rng.uniform(0.0, 0.999)) if c == 0 and rng.random() < 0.5 else \
                np.float32(c + rng.uniform(0.0, 0.99))
        applied.append("fractional_class")
    if used.size and rng.random() < 0.15:         # sizes darknet does not check
        for b, r in used[rng.random(len(used)) < 0.3]:
            col = int(rng.integers(2, 4))
            t[b, r, col] = np.float32(_pick(rng, [0.0, -0.0, -0.1, np.nan, np.inf, 1.0, 2.0, 50.0, 1e-30, 1e-7]))
        applied.append("odd_sizes")
    if used.size and rng.random() < 0.1:          # extreme centres that stay in the grid
        for b, r in used[rng.random(len(used)) < 0.3]:
            kind = int(rng.integers(0, 4))
            if kind == 0:
                t[b, r, 0] = np.float32(1e-45)                      # the smallest x that is not a terminator
            elif kind == 1:
                t[b, r, 1] = np.float32(0.0)                        # y == 0 is a valid centre
            elif kind == 2:
                t[b, r, 0] = _largest_valid_below_one(w)
            else:
                t[b, r, 1] = _largest_valid_below_one(h)
        applied.append("extreme_centres")
    if rng.random() < 0.2:                        # garbage in rows darknet never reads
        limit = min(config.max_boxes, t.shape[1])
        for b in range(t.shape[0]):
            row_active = active[b]
            first_unread = int(row_active.sum())  # the terminator (or max) row
            start = first_unread + 1 if first_unread < limit else limit
            for r in range(start, t.shape[1]):
                if rng.random() < 0.5:
                    t[b, r, :4] = np.array([_pick(rng, [np.nan, 1.5, -3.0, 1.0, np.inf, 0.5]) for _ in range(4)],
                                           np.float32)
                    t[b, r, 4] = np.float32(_pick(rng, [1e9, -5.0, np.nan, 3e10, 0.0]))
            if first_unread < limit and t[b, first_unread, 0] == 0 and rng.random() < 0.5:
                t[b, first_unread, 0] = np.float32(-0.0)          # -0.0 ends the list too
        applied.append("garbage_unread_rows")
    if t.shape[2] == 6 and rng.random() < 0.1:
        t = np.ascontiguousarray(t[..., :5])
        applied.append("five_columns")
    return t


def fuzz_case(index: int, seed: int = 0) -> Case:
    """Case ``index`` of campaign ``seed``: the same arguments give the same bytes."""
    rng = np.random.default_rng([FUZZ_TAG, seed, index])
    flavor = "pjreddie" if rng.random() < 0.25 else "alexeyab"
    config = fuzz_config(rng, flavor)
    gw = int(_pick(rng, [1, 1, 2, 3, int(rng.integers(1, 14)), int(rng.integers(1, 14)), 13, 19]))
    gh = int(_pick(rng, [gw, gw, 1, int(rng.integers(1, 14))]))
    batch = int(_pick(rng, [1, 1, 2, 3, 4]))
    config = config.replace(batch=batch)
    rows = max(config.max_boxes, 1)
    hi = int(_pick(rng, [0, 1, 3, 8, 12, 12, 40, rows]))
    lo = int(_pick(rng, [0, 0, min(hi, 1), hi]))
    features = _features(rng)
    sub_seed = [int(v) for v in rng.integers(0, 2 ** 31, size=2)]
    (case,) = generate_cases(sub_seed, [HeadGrid(config, gw, gh)], batch=batch, truths=(lo, hi),
                             features=features, flavor=flavor, label=f"tools/fuzz.py seed={seed} case={index}")
    applied: list[str] = []
    x = np.array(case.input, np.float32, copy=True)
    _mutate_input(rng, x, applied)
    truth = _mutate_truth(rng, case.truth, config, flavor, gw, gh, applied)
    try:
        check_layer_input(config, x, truth, flavor)
    except ParityError:   # a mutation made the truths unreadable for darknet: keep the generated ones
        truth = np.array(case.truth, np.float32, copy=True)
        applied.append("truth_mutation_refused")
    meta = dict(case.meta)
    meta["fuzz"] = {"seed": seed, "index": index, "mutations": applied}
    return Case(dump_yolo_cfg(config), config, flavor, x, truth, meta=meta)


# --------------------------------------------------------------------------
# Comparison


def compare(case: Case) -> dict[str, Any]:
    """The C reference and the PyTorch port on ``case``: an outcome record (JSON-able).

    ``status`` is "ok", "borderline" (every difference explained by a
    borderline decision) or "mismatch".
    """
    import torch

    from parity.compare import compare as compare_runs
    from parity.reference import run_reference
    from parity.torch import yolo_forward

    ref = run_reference(case.config, case.input, case.truth, flavor=case.flavor, decisions=True)
    run = yolo_forward(torch.from_numpy(case.input), torch.from_numpy(case.truth), case.config, case.flavor).numpy()
    out, delta, roles = run.output, run.delta, run.roles
    diff = compare_runs(ref, run, case=case, top_k=5)   # the one comparator and its one excuse rule
    record: dict[str, Any] = {
        "status": "ok", "flavor": case.flavor, "elements": int(ref.delta.size),
        "decision_mismatches": 0, "value_mismatches": 0, "borderline": 0, "output_mismatches": 0,
        "role_mismatches": 0, "role_borderline": 0, "stats_mismatches": {}, "stats_borderline": {},
        "max_abs": diff.max_abs,
        "branches": sorted(k for k, v in ref.branches.items() if v),
        "combinations": reached_combinations(case.config, case.flavor, ref.branches),
        "nonfinite_input": bool(not np.isfinite(case.input).all()),
    }
    failing = not diff.passed
    record.update({
        "status": "mismatch" if failing else ("borderline" if diff.borderline else "ok"),
        "decision_mismatches": diff.decision_mismatches,
        "value_mismatches": diff.value_mismatches,
        "borderline": diff.borderline,
        "output_mismatches": diff.output_mismatches,
        "role_mismatches": diff.role_mismatches,
        "stats_mismatches": dict(diff.stats_mismatches),
    })
    if failing:
        output_bad = diff.output_mask if diff.output_mask is not None else np.zeros(out.shape, bool)
        role_fail = diff.role_mask if diff.role_mask is not None else np.zeros(roles.shape, bool)
        record["details"] = _failure_details(case, ref, out, delta, roles, diff, output_bad, role_fail,
                                             diff.stats_mismatches)
    return record


def _failure_details(case: Case, ref: Any, out: np.ndarray, delta: np.ndarray, roles: np.ndarray, diff: Any,
                     output_bad: np.ndarray, role_fail: np.ndarray, stats_fail: dict) -> dict[str, Any]:
    """Where and what: terms, first mismatches with darknet's path, role bits, outputs, counters."""
    terms = sorted({c.term for c in diff.cells if c.failing})
    first = [{"kind": m.kind, "image": m.image, "anchor": m.anchor, "j": m.j, "i": m.i, "term": m.term,
              "entry": m.entry, "reference": m.reference, "torch": m.candidate, "role": m.role,
              "path": m.context.get("path", [])} for m in diff.mismatches if not m.borderline][:5]
    roles_at = [{"slot": [int(v) for v in idx], "reference": int(ref.roles[tuple(idx)]), "torch": int(roles[tuple(idx)])}
                for idx in np.argwhere(role_fail)[:5]]
    outputs_at = [{"index": [int(v) for v in idx], "reference": float(ref.output[tuple(idx)]),
                   "torch": float(out[tuple(idx)]), "input": float(case.input[tuple(idx)])}
                  for idx in np.argwhere(output_bad)[:5]]
    details = {"terms": terms, "first": first, "roles": roles_at, "outputs": outputs_at,
               "stats": {k: [float(a), float(b)] for k, (a, b) in stats_fail.items()}}
    if "cost" in stats_fail:
        details["cost"] = _cost_analysis(case, ref, float(stats_fail["cost"][0]))
    return details


def _cost_analysis(case: Case, ref: Any, torch_cost: float) -> dict[str, Any]:
    """The two costs beside the exact sums of squares of the reference's delta (float64).

    darknet's cost is ``pow(mag_array(delta), 2)``: a float32 sum of squares
    taken in memory order (AlexeyAB with show_details and an IoU loss skips the
    box rows and adds ``iou_normalizer*mean(1 - IoU)``).
    """
    B, _, H, W = case.input.shape
    d = ref.delta.reshape(B, case.config.n, 5 + case.config.classes, H, W).astype(np.float64)
    all_rows = float(np.sum(d * d))
    no_box = float(np.sum(d[:, :, 4:] ** 2))
    reference = float(ref.stats["cost"])
    return {"reference": reference, "torch": torch_cost,
            "relative_difference": abs(torch_cost - reference) / abs(reference) if reference else None,
            "sum_of_squares_f64": all_rows, "sum_of_squares_f64_without_box_rows": no_box,
            "nonzero_delta_elements": int(np.count_nonzero(ref.delta)),
            "show_details": case.config.show_details, "iou_loss": case.config.iou_loss}


def _quiet_inputs() -> None:
    """No DarknetInputWarning per case: the campaign feeds such inputs on purpose."""
    import warnings

    from parity import errors

    warnings.simplefilter("ignore", getattr(errors, "DarknetInputWarning", UserWarning))


def run_one(index: int, seed: int) -> dict[str, Any]:
    """Build and compare one case; exceptions become an "error" record."""
    record: dict[str, Any] = {"index": index}
    if os.environ.get(SELFTEST_CRASH_ENV) == str(index):
        os._exit(70)  # self-test of crash detection (tests/test_properties.py): the worker dies
    try:
        case = fuzz_case(index, seed)
        record["mutations"] = case.meta["fuzz"]["mutations"]
        record["features"] = case.meta["features"]["applied"]
        record.update(compare(case))
    except Exception as exc:  # noqa: BLE001 - every failure is recorded, none stops the campaign
        record.update(status="error", error=f"{type(exc).__name__}: {exc}",
                      traceback=traceback.format_exc(limit=8))
    record["index"] = index
    return record


def _fuzz_chunk(indices: list[int], seed: int, *, emit: Any) -> None:
    """A worker's share (parity.pool): one record per case index, emitted as each finishes."""
    import torch

    torch.set_num_threads(1)
    _quiet_inputs()
    for k in indices:
        emit(str(k), run_one(k, seed))


# --------------------------------------------------------------------------
# Campaign


def campaign(cases: int | list[int], seed: int, jobs: int, progress: bool = True,
             case_timeout: float = 300.0) -> list[dict[str, Any]]:
    """Run cases ``0..cases-1`` (or the listed indices) of campaign ``seed`` in ``jobs`` worker processes.

    The suite's own worker pool (``parity.pool.run_isolated``) runs them: a
    worker that dies names the case it was running, which is recorded as a
    crash, and the rest of its chunk goes to a fresh worker. A case running
    longer than ``case_timeout`` seconds is recorded the same way.
    """
    from parity.pool import run_isolated

    indices = list(range(cases)) if isinstance(cases, int) else list(cases)
    chunks = [indices[s: s + CHUNK] for s in range(0, len(indices), CHUNK)]
    results: list[dict[str, Any]] = []
    start = time.perf_counter()
    next_report = [1000]

    def on_result(key: str, record: dict[str, Any]) -> None:
        results.append(record)
        if progress and len(results) >= next_report[0]:
            rate = len(results) / max(time.perf_counter() - start, 1e-9)
            print(f"  {len(results)}/{len(indices)} cases, {rate:.0f} cases/s", file=sys.stderr, flush=True)
            next_report[0] += 1000

    def on_lost(key: str, why: str) -> None:
        results.append({"index": int(key), "status": "crash", "error": why})

    run_isolated(chunks, str, _fuzz_chunk, (seed,), jobs, case_timeout, on_result, on_lost)
    return sorted(results, key=lambda r: r["index"])


# --------------------------------------------------------------------------
# Failures: shrink and save


def _still_fails(status: str, error: str | None):
    def still(candidate: Case) -> bool:
        try:
            rec = compare(candidate)
        except Exception as exc:  # noqa: BLE001
            return status == "error" and error is not None and error.split(":")[0] == type(exc).__name__
        return status == "mismatch" and rec["status"] == "mismatch"
    return still


def _shown(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def save_crash(index: int, seed: int, folder: Path = FIXTURE_DIR) -> dict[str, Any]:
    """A case whose worker died, saved as generated (no reference results: the run never finished)."""
    from parity.case import load_case, save_case

    case = fuzz_case(index, seed)
    case.meta = dict(case.meta)
    case.meta["fuzz"] = {**case.meta["fuzz"], "status": "crash"}
    path = Path(folder) / f"fuzz-s{seed}-{index:06d}-crash.npz"
    save_case(path, case)
    # the cfg as saved: a map= case names its map file there (maps/STEM.map)
    return {"index": index, "status": "crash", "steps": 0, "path": _shown(path), "config": load_case(path).cfg}


def shrink_and_save(record: dict[str, Any], seed: int, max_steps: int, folder: Path = FIXTURE_DIR) -> dict[str, Any]:
    """Shrink a failing case and save it (with the C reference's results) under fixtures/fuzz/."""
    from parity.case import load_case, save_case
    from parity.reference import run_reference
    from parity.shrink import case_size, shrink_case

    case = fuzz_case(record["index"], seed)
    small, steps = shrink_case(case, _still_fails(record["status"], record.get("error")), max_steps)
    info: dict[str, Any] = {"index": record["index"], "status": record["status"], "steps": len(steps),
                            "size_before": case_size(case), "size_after": case_size(small)}
    try:
        ref = run_reference(small.config, small.input, small.truth, flavor=small.flavor)
        small.output, small.delta, small.stats = ref.output, ref.delta, ref.stats.as_dict()
    except Exception as exc:  # noqa: BLE001 - the reference itself fails: save the input alone
        info["reference_error"] = f"{type(exc).__name__}: {exc}"
    small.meta = dict(small.meta)
    small.meta["fuzz"] = {**case.meta["fuzz"], "shrink_steps": steps, "status": record["status"]}
    small.meta["generator"] = f"tools/fuzz.py seed={seed} case={record['index']} (shrunk)"
    try:
        info["after_shrink"] = compare(small)
    except Exception as exc:  # noqa: BLE001
        info["after_shrink"] = {"status": "error", "error": f"{type(exc).__name__}: {exc}"}
    path = Path(folder) / f"fuzz-s{seed}-{record['index']:06d}.npz"
    save_case(path, small)
    info["path"] = _shown(path)
    info["config"] = load_case(path).cfg      # as saved: a map= case names its map file
    return info


# --------------------------------------------------------------------------


def summarize(results: list[dict[str, Any]], seconds: float, args: argparse.Namespace) -> dict[str, Any]:
    status = Counter(r["status"] for r in results)
    compared = [r for r in results if r["status"] in ("ok", "borderline", "mismatch")]
    branches: Counter[str] = Counter()
    features: Counter[str] = Counter()
    combos: Counter[str] = Counter({name: 0 for name in COMBINATIONS})
    for r in compared:
        branches.update(r.get("branches", []))
        combos.update(r.get("combinations", []))
        features.update(r.get("features", []))
        features.update(r.get("mutations", []))
    return {
        "cases": len(results),
        "seed": args.seed,
        "jobs": args.jobs,
        "crashes": status["crash"],
        "errors": status["error"],
        "mismatch_cases": status["mismatch"],
        "decision_mismatches": sum(r.get("decision_mismatches", 0) for r in compared if r["status"] == "mismatch"),
        "value_mismatches": sum(r.get("value_mismatches", 0) + r.get("output_mismatches", 0)
                                for r in compared if r["status"] == "mismatch"),
        "role_mismatches": sum(r.get("role_mismatches", 0) for r in compared),
        "stats_mismatch_cases": sum(1 for r in compared if r.get("stats_mismatches")),
        "borderline_cases": status["borderline"],
        "borderline_elements": sum(r.get("borderline", 0) for r in compared),
        "borderline_roles": sum(r.get("role_borderline", 0) for r in compared),
        "ok_cases": status["ok"],
        "elements": sum(r.get("elements", 0) for r in compared),
        "max_abs_error": max((r.get("max_abs", 0.0) for r in compared), default=0.0),
        "flavors": dict(Counter(r.get("flavor", "?") for r in compared)),
        "nonfinite_cases": sum(1 for r in compared if r.get("nonfinite_input")),
        "branches_reached": dict(sorted(branches.items())),
        "combinations_reached": dict(sorted(combos.items())),
        "features": dict(sorted(features.items())),
        "seconds": round(seconds, 2),
        "cases_per_second": round(len(results) / seconds, 1) if seconds > 0 else None,
        "failures": [{k: v for k, v in r.items() if k not in ("branches", "combinations", "features", "mutations")}
                     for r in results if r["status"] in ("crash", "error", "mismatch")][:50],
    }


def print_summary(s: dict[str, Any]) -> None:
    print(f"fuzz: {s['cases']} cases (seed {s['seed']}, {s['jobs']} jobs) in {s['seconds']:.1f} s, "
          f"{s['cases_per_second']} cases/s")
    print(f"  crashes: {s['crashes']}   errors: {s['errors']}")
    print(f"  mismatching cases: {s['mismatch_cases']} (decision mismatches {s['decision_mismatches']}, "
          f"value mismatches {s['value_mismatches']}, role mismatches {s['role_mismatches']}, "
          f"cases with counter/cost mismatches {s['stats_mismatch_cases']})")
    print(f"  borderline (explained): {s['borderline_cases']} cases, {s['borderline_elements']} delta elements, "
          f"{s['borderline_roles']} role slots")
    print(f"  agreeing: {s['ok_cases']} cases; {s['elements']:,} delta elements compared, max abs error "
          f"{s['max_abs_error']:.3g}; flavors {s['flavors']}; NaN/Inf inputs in {s['nonfinite_cases']} cases")
    print("  darknet branches reached (cases): " + ", ".join(f"{k} {v}" for k, v in s["branches_reached"].items()))
    print("  option combinations reached (cases): "
          + ", ".join(f"{k} {v}" for k, v in s.get("combinations_reached", {}).items()))
    for f in s.get("saved", []):
        print(f"  saved {f['path']} ({f['status']}, {f['steps']} shrink steps)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=DEFAULT_CASES, help="cases to run (default %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="campaign seed (default %(default)s)")
    parser.add_argument("--jobs", type=int, default=2, help="worker processes (default %(default)s)")
    parser.add_argument("--index", type=int, nargs="+", metavar="K",
                        help="run only these case indices of the campaign (replay a finding)")
    parser.add_argument("--json", default=str(DEFAULT_JSON), help="summary JSON (default out/fuzz.json)")
    parser.add_argument("--shrink-steps", type=int, default=300, help="tries per shrink (default %(default)s)")
    parser.add_argument("--max-saved", type=int, default=10, help="failures to shrink and save (default %(default)s)")
    parser.add_argument("--fixtures", default=str(FIXTURE_DIR), help="where shrunk failures go (default fixtures/fuzz)")
    parser.add_argument("--no-save", action="store_true", help="do not shrink or save failures")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    args = parser.parse_args(argv)
    if args.cases < 1 or args.jobs < 1:
        parser.error("--cases and --jobs must be >= 1")

    start = time.perf_counter()
    results = campaign(args.index or args.cases, args.seed, args.jobs, progress=not args.quiet)
    seconds = time.perf_counter() - start
    summary = summarize(results, seconds, args)
    if not args.no_save:
        import torch

        torch.set_num_threads(1)
        _quiet_inputs()
        failed = [r for r in results if r["status"] in ("error", "mismatch")]
        crashed = [r["index"] for r in results if r["status"] == "crash"]
        summary["saved"] = [shrink_and_save(r, args.seed, args.shrink_steps, Path(args.fixtures))
                            for r in failed[: args.max_saved]]
        summary["saved"] += [save_crash(k, args.seed, Path(args.fixtures)) for k in crashed[: args.max_saved]]
    summary["crashing_cases"] = [r["index"] for r in results if r["status"] == "crash"]
    print_summary(summary)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(summary, indent=1, default=float))
    print(f"  summary written to {args.json}")
    bad = summary["crashes"] + summary["errors"] + summary["mismatch_cases"]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
