"""The explanation search on random combinations of catalogue switches (``make search-proof``).

Draws ``--count`` observable combinations of 1 to 5 deviations (alternating
the yolov3 (MSE) and yolov4 (CIoU) profiles), makes each one's variant the
candidate, and runs the search. Exit 1 unless the exact set is recovered in
at least ``--min-exact`` of them and no deviation outside the true set is
ever named.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from parity.atomic import write_atomic  # noqa: E402
from parity.deviations.proof import check_combination, dense_cases, draw  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--min-exact", type=float, default=0.98)
    ap.add_argument("--json", help="write every outcome here")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    rng = random.Random(args.seed)
    exact = 0
    false_named = []
    rows = []
    seconds = 0.0
    for k in range(args.count):
        profile = ("yolov3", "yolov4")[k % 2]
        cases = dense_cases(profile)
        combination = draw(rng, profile, cases)
        start = time.perf_counter()
        outcome = check_combination(combination, cases)
        took = time.perf_counter() - start
        seconds += took
        exact += outcome.exact
        if outcome.false_names:
            false_named.append(k)
        rows.append({"profile": profile, "true": sorted(combination.ids), "found": sorted(outcome.explanation.ids),
                     "exact": outcome.exact, "false_names": sorted(outcome.false_names),
                     "outside": outcome.explanation.elements_outside, "seconds": round(took, 2)})
        mark = "ok " if outcome.exact else "MISS"
        print(f"{k:4d} {mark} {profile} true={sorted(combination.ids)} found={sorted(outcome.explanation.ids)}"
              f" outside={outcome.explanation.elements_outside} {took:.1f}s", flush=True)
    rate = exact / max(1, args.count)
    print(f"exact set recovered in {exact} of {args.count} ({rate:.1%}); deviations named outside the true set: "
          f"{len(false_named)} combination(s); search time {seconds:.0f} s ({seconds / max(1, args.count):.2f} s each)")
    if args.json:
        write_atomic(Path(args.json), json.dumps({"count": args.count, "exact": exact, "false_named": false_named,
                                                  "outcomes": rows}, indent=1).encode())
    return 0 if rate >= args.min_exact and not false_named else 1


if __name__ == "__main__":
    sys.exit(main())
