"""YOLOv4 608x608 [yolo] training forward: C reference vs PyTorch (CPU, CUDA).

Workload (issue 3): three heads 76/38/19, 80 classes, yolov4.cfg's [yolo]
options, batch 8, 50 truths per image. Each implementation runs the three
heads; the median of repeated runs is reported with ratios to the C
reference, plus the PyTorch path's peak extra memory (CPU: peak RSS growth;
CUDA: torch.cuda.max_memory_allocated), and the extra memory of the bounded
ignore search at batch 16 with 200 truths per image. Writes JSON.

    python benchmarks/bench_yolov4.py [--repeats 7] [--json out/bench.json]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from parity.cfg import parse_cfg
from parity.generate import CaseShape, random_case
from parity.reference import run_reference
from parity.torch import yolo_forward

ROOT = Path(__file__).resolve().parent.parent


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


def _median_time(fn, repeats: int, sync=lambda: None) -> float:
    fn()
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _rss_peak_reset() -> None:
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field):
                return int(line.split()[1])
    return 0


def cpu_peak_extra_mib(fn) -> float:
    """Peak RSS growth while ``fn`` runs (Linux: VmHWM after resetting it)."""
    import gc

    gc.collect()
    _rss_peak_reset()
    base = _rss_kib("VmRSS:")
    fn()
    return (_rss_kib("VmHWM:") - base) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--truths", type=int, default=50)
    parser.add_argument("--json", default=str(ROOT / "out" / "bench.json"))
    args = parser.parse_args()
    heads = workload(args.batch, args.truths)
    rows = []

    def run_c():
        for cfg, x, t in heads:
            run_reference(cfg, x, t)

    c_time = _median_time(run_c, args.repeats)
    rows.append({"implementation": "C reference", "device": "cpu", "seconds": c_time})

    cpu_heads = [(cfg, torch.from_numpy(x), torch.from_numpy(t)) for cfg, x, t in heads]

    def run_torch_cpu():
        for cfg, x, t in cpu_heads:
            yolo_forward(x, t, cfg)

    rows.append({"implementation": "PyTorch", "device": f"cpu ({torch.get_num_threads()} threads)",
                 "seconds": _median_time(run_torch_cpu, args.repeats),
                 "peak_extra_mib": cpu_peak_extra_mib(run_torch_cpu)})
    big = [(cfg, torch.from_numpy(x), torch.from_numpy(t)) for cfg, x, t in workload(16, 200)]
    big_cpu_mib = cpu_peak_extra_mib(lambda: [yolo_forward(x, t, cfg) for cfg, x, t in big])

    big_cuda_mib = None
    if torch.cuda.is_available():
        gpu_heads = [(cfg, x.cuda(), t.cuda()) for cfg, x, t in cpu_heads]

        def run_torch_cuda():
            for cfg, x, t in gpu_heads:
                yolo_forward(x, t, cfg)

        secs = _median_time(run_torch_cuda, args.repeats, torch.cuda.synchronize)
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        run_torch_cuda()
        torch.cuda.synchronize()
        peak = (torch.cuda.max_memory_allocated() - base) / 2**20
        rows.append({"implementation": "PyTorch", "device": torch.cuda.get_device_name(), "seconds": secs,
                     "peak_extra_mib": peak})
        big_gpu = [(cfg, x.cuda(), t.cuda()) for cfg, x, t in big]
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        for cfg, x, t in big_gpu:
            yolo_forward(x, t, cfg)
        torch.cuda.synchronize()
        big_cuda_mib = (torch.cuda.max_memory_allocated() - base) / 2**20

    for row in rows:
        row["ratio_to_c"] = row["seconds"] / c_time
    result = {
        "workload": f"YOLOv4 608x608, heads 76/38/19, 80 classes, yolov4.cfg [yolo] options, batch {args.batch}, "
                    f"{args.truths} truths per image; median of {args.repeats}",
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
        "rows": rows,
        "batch16_200truths_peak_extra_mib": {"cpu": big_cpu_mib, "cuda": big_cuda_mib},
    }
    print(result["workload"])
    print(f"{'implementation':16s} {'device':32s} {'median s':>9s} {'vs C':>7s} {'peak extra MiB':>15s}")
    for row in rows:
        peak = f"{row['peak_extra_mib']:.0f}" if "peak_extra_mib" in row else "-"
        print(f"{row['implementation']:16s} {row['device'][:32]:32s} {row['seconds']:9.3f} "
              f"{row['ratio_to_c']:7.2f} {peak:>15s}")
    print(f"batch 16, 200 truths/image, peak extra memory: CPU {big_cpu_mib:.0f} MiB"
          + (f", CUDA {big_cuda_mib:.0f} MiB" if big_cuda_mib is not None else ""))
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=1))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
