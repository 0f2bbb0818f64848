"""The explanation search's cost against the plain run it explains (issue 9: at most 3x).

One suite (yolov4 profile, 40 samples = 120 cases) and one candidate with five
deviations: a TF-style port that differentiates CIoU exactly, never averages,
and takes every term's mean over the batch (``tests/porters``, written as
porters write losses). Round by round, interleaved so both see the same load:
the plain run (``run_suite`` without the search) and the search on the
deltas that run produced. The ratio compares medians of this run only.

    python benchmarks/bench_search.py [--rounds 3] [--cases 40] [--json out/bench-search.json]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from parity.atomic import write_atomic  # noqa: E402
from parity.cases import suite_refs  # noqa: E402
from parity.suite import RunOptions, run_suite  # noqa: E402

CANDIDATE = "porters.yolov4_style:tf_custom_gradient"
DOCUMENTED = {"box_grad_exact", "averaging_none", "box_mean_over_batch", "obj_mean_over_batch", "cls_mean_over_batch"}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--cases", type=int, default=40, help="samples of the yolov4 profile (3 heads each)")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    refs = suite_refs(["yolov4"], [], [], args.cases, 0)
    plain_s, search_s = [], []
    found = None
    for _ in range(args.rounds):
        start = time.perf_counter()
        run_suite(refs, RunOptions(candidate=CANDIDATE, convention="loss", finite_only=True))
        plain_s.append(time.perf_counter() - start)
        # the same run with the search; the search times itself (Explanation.seconds)
        kept = run_suite(refs, RunOptions(candidate=CANDIDATE, convention="loss", finite_only=True,
                                          search=True)).explanation
        search_s.append(kept["seconds"])
        found = kept
    plain, searched = statistics.median(plain_s), statistics.median(search_s)
    ids = {c["id"] for c in found["changes"]}
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, load {load:.1f}")
    print(f"suite: yolov4 profile, {len(refs)} cases; candidate {CANDIDATE} (5 deviations)")
    print(f"plain run {plain:.2f} s, search {searched:.2f} s: search / plain = {searched / plain:.2f}x "
          f"(medians of {args.rounds} interleaved rounds; goal <= 3x)")
    print(f"found {sorted(ids)}; documented {sorted(DOCUMENTED)}; {found['cases_reproduced']} of "
          f"{found['cases']} cases reproduced")
    if args.json:
        write_atomic(Path(args.json), json.dumps({
            "plain_s": plain_s, "search_s": search_s, "ratio": searched / plain, "cases": len(refs),
            "found": sorted(ids), "load": load, "cores": os.cpu_count()}, indent=1).encode())
    return 0 if searched / plain <= 3 and ids == DOCUMENTED else 1


if __name__ == "__main__":
    sys.exit(main())
