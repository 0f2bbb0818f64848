"""YOLOv4 608x608 [yolo] training forward: this checkout against another commit, side by side.

Workloads (issue 13): three heads 76/38/19, 80 classes, yolov4.cfg's [yolo]
options; batch 8 with 50 truths per image (the reference workload), batch 8
with 200 truths and batch 32 with 50 (scaling: time per image and per truth
must stay flat). Implementations: the C reference, the PyTorch port on the CPU
with 1 thread and with every core, and on CUDA when torch sees a GPU.

Each checkout runs in worker processes (benchmarks/worker.py); the runs of the
two checkouts are interleaved round by round, so both see the same machine
load, and the ratios compare minimums measured in this run only, never figures
stored from another load. The figures (with the machine and its load average)
go to ``--json`` (``make bench`` writes benchmarks/baseline.json, committed).

    python benchmarks/bench_yolov4.py [--against HEAD~1|none] [--repeats 5] [--json out/bench.json]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from parity.cfg import parse_cfg
from parity.generate import CaseShape, random_case

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

from side_by_side import Checkout, Worker, save_cases  # noqa: E402

# (name, batch, truths per image); the first is the reference workload.
WORKLOADS = (("b8 t50", 8, 50), ("b8 t200", 8, 200), ("b32 t50", 32, 50))


def yolov4_layers(size: int = 608):
    text = (ROOT / "fixtures" / "cfg" / "yolov4.cfg").read_text()
    text = re.sub(r"(?m)^\s*width\s*=.*$", f"width={size}", text)
    text = re.sub(r"(?m)^\s*height\s*=.*$", f"height={size}", text)
    return parse_cfg(text).yolo_layers


def workload(batch: int, truths: int, seed: int = 0):
    """One (config, input, truth) per head; every image holds exactly ``truths`` boxes."""
    heads = []
    for k, layer in enumerate(yolov4_layers()):
        case = random_case(seed + k, layer.config, shape=CaseShape(batch, layer.grid_h, layer.grid_w, 0))
        rng = np.random.default_rng(seed + k)
        truth = np.zeros((batch, layer.config.max_boxes, 6), np.float32)
        truth[:, :truths, 0:2] = rng.uniform(0.01, 0.99, (batch, truths, 2))
        truth[:, :truths, 2:4] = np.exp(rng.uniform(np.log(0.02), np.log(0.6), (batch, truths, 2)))
        truth[:, :truths, 4] = rng.integers(0, layer.config.classes, (batch, truths))
        heads.append((layer.config, case.input, truth))
    return heads


def implementations() -> list[tuple[str, int, str]]:
    """(worker impl, torch threads, label): 1 and all cores for the port, since neither wins everywhere."""
    cores = len(os.sched_getaffinity(0))
    rows = [("c", 1, "C reference"), ("torch", 1, "PyTorch CPU 1 thread")]
    if cores > 1:
        rows.append(("torch", cores, f"PyTorch CPU {cores} threads"))
    if torch.cuda.is_available():
        rows.append(("cuda", 1, f"PyTorch {torch.cuda.get_device_name()}"))
        rows.append(("cuda-running-cost", 1, "  same, running_cost=True"))
    return rows


def machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        names = [ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                 if ln.startswith("model name")]
        model = names[0] if names else model
    except OSError:
        pass
    return f"{model}, {len(os.sched_getaffinity(0))} cores usable, torch {torch.__version__}"


class BadInput(Exception):
    """A bad option value: one line on stderr, exit 2."""


def git_commit(spec: str) -> str:
    done = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", spec], capture_output=True, text=True)
    if done.returncode:
        raise BadInput(f"--against {spec!r} is not a commit here: {done.stderr.strip() or 'git failed'}")
    return done.stdout.strip()


def this_tree() -> str:
    """HEAD's commit, marked when the working tree has uncommitted changes (they are what gets measured)."""
    try:
        commit = git_commit("HEAD")
    except BadInput:
        return "unknown (no git)"
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout.strip()
    return commit + (" + uncommitted changes" if dirty else "")


def measure(trees: dict[str, Path], repeats: int, tmp: Path) -> tuple[list[dict], dict[str, int | None]]:
    """Interleaved timings and one peak-memory pass per (workload, implementation, tree); the
    operations the port's device path dispatches on the first workload, per tree."""
    workers: dict[tuple[str, str], Worker] = {}
    rows = []
    try:
        for name, batch, truths in WORKLOADS:
            path = tmp / f"{name.replace(' ', '_')}.npz"
            save_cases(path, workload(batch, truths))
            for label, tree in trees.items():
                workers[label, name] = Worker(tree, path)
        impls = implementations()
        times: dict[tuple, list[float]] = {}
        for r in range(repeats):
            order = list(trees) if r % 2 == 0 else list(reversed(trees))
            for name, _, _ in WORKLOADS:
                for impl, threads, _ in impls:
                    for label in order:
                        answer = workers[label, name].ask(f"time {impl} {threads}")
                        if "seconds" in answer:     # else {"missing": ...}: an option that checkout lacks
                            times.setdefault((name, impl, threads, label), []).append(answer["seconds"])
        for name, batch, truths in WORKLOADS:
            for impl, threads, title in impls:
                row = {"workload": name, "batch": batch, "truths": truths, "implementation": title,
                       "impl": impl, "threads": threads}
                for label in trees:
                    runs = times.get((name, impl, threads, label))
                    if runs is None:
                        row[label] = None
                        continue
                    row[label] = {"min_s": min(runs), "median_s": statistics.median(runs), "max_s": max(runs)}
                    if threads == 1:   # memory does not depend on the thread count worth a second pass
                        row[label]["peak_extra_mib"] = workers[label, name].ask(f"memory {impl} 1")["peak_extra_mib"]
                rows.append(row)
        # None where that checkout has no device path to count
        ops = {label: workers[label, WORKLOADS[0][0]].ask("ops").get("ops") for label in trees}
    finally:
        for worker in workers.values():
            worker.close()
    return rows, ops


def scaling(rows: list[dict], label: str) -> dict[str, dict[str, float]]:
    """Per implementation: time per image (b32 / b8) and per truth (t200 / t50); <= ~1 is linear or better."""
    by = {(r["workload"], r["implementation"]): r[label]["min_s"] for r in rows}
    out = {}
    for title in dict.fromkeys(r["implementation"] for r in rows):
        base = by["b8 t50", title]
        out[title] = {"per_image_b32_over_b8": (by["b32 t50", title] / 32) / (base / 8),
                      "per_truth_t200_over_t50": (by["b8 t200", title] / 200) / (base / 50)}
    return out


def report(result: dict) -> None:
    against = result["against"]
    print(f"{result['workload']}\nmachine: {result['machine']}; load average {result['load_before']} before, "
          f"{result['load_after']} after")
    print(f"this: {result['commit']}" + (f"; against: {against['spec']} = {against['commit']}" if against else ""))
    head = f"{'workload':8s} {'implementation':28s} {'this min s':>10s} {'max s':>7s} {'peak MiB':>8s}"
    if against:
        head += f" {'against s':>10s} {'peak MiB':>8s} {'this/against':>12s}"
    print(head)
    for row in result["rows"]:
        this = row["this"]
        mib = lambda d: f"{d['peak_extra_mib']:8.0f}" if "peak_extra_mib" in d else f"{'-':>8s}"  # noqa: E731
        line = (f"{row['workload']:8s} {row['implementation'][:28]:28s} {this['min_s']:10.4f} "
                f"{this['max_s']:7.3f} {mib(this)}")
        old = row.get("against")
        if against and old:
            line += f" {old['min_s']:10.4f} {mib(old)} {this['min_s'] / old['min_s']:12.2f}"
        elif against:
            line += f" {'(not in that checkout)':>32s}"
        print(line)
    print("scaling (this checkout; 1.00 = linear, below = better than linear):")
    for title, s in result["scaling"].items():
        print(f"  {title[:28]:28s} time per image b32/b8 {s['per_image_b32_over_b8']:.2f}, "
              f"time per truth t200/t50 {s['per_truth_t200_over_t50']:.2f}")
    ops = result["device_path_ops"]
    print(f"port's device path (what a GPU runs), {WORKLOADS[0][0]}: {ops['this']} operations dispatched "
          "per three-head call (about one kernel launch each)"
          + (f"; against: {ops['against'] if ops.get('against') is not None else 'no device path'}"
             if against else ""))
    cpu = [r for r in result["rows"] if r["workload"] == "b8 t50" and r["impl"] == "torch"]
    if len(cpu) > 1:
        best = min(cpu, key=lambda r: r["this"]["min_s"])
        steady = min(cpu, key=lambda r: r["this"]["max_s"])
        print(f"fastest PyTorch CPU setting here: {best['threads']} thread(s) ({best['this']['min_s']:.4f} s); "
              f"slowest run the smallest with {steady['threads']} thread(s) ({steady['this']['max_s']:.4f} s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--against", default="HEAD~1", help="a commit to measure side by side, or 'none'")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", default=str(ROOT / "out" / "bench.json"))
    args = parser.parse_args()
    try:
        if args.repeats < 1:
            raise BadInput(f"--repeats must be at least 1, got {args.repeats}")
        against = None if args.against.lower() == "none" else {"spec": args.against, "commit": git_commit(args.against)}
    except BadInput as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    load_before = [round(v, 2) for v in os.getloadavg()]
    checkout = Checkout(against["commit"]) if against else None
    try:
        trees = {"this": ROOT} | ({"against": checkout.path} if checkout else {})
        with tempfile.TemporaryDirectory() as tmp:
            rows, ops = measure(trees, args.repeats, Path(tmp))
    finally:
        if checkout:
            checkout.close()
    result = {
        "workload": "YOLOv4 608x608, heads 76/38/19, 80 classes, yolov4.cfg [yolo] options; "
                    f"workloads {', '.join(w[0] for w in WORKLOADS)} (batch, truths per image); "
                    f"min (and max) of {args.repeats} interleaved runs; peak extra memory of one run (1 thread)",
        "machine": machine(),
        "load_before": load_before,
        "load_after": [round(v, 2) for v in os.getloadavg()],
        "commit": this_tree(),
        "against": against,
        "rows": rows,
        "scaling": scaling(rows, "this"),
        "device_path_ops": ops,
    }
    report(result)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
