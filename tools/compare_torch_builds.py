#!/usr/bin/env python3
"""Bit-identity of this checkout's PyTorch port (CPU) against another commit's.

    python tools/compare_torch_builds.py --against HEAD [-n 600] [--seed 0]

Runs both ports (the other commit from a temporary git worktree) on the same
cases: N generated ones (tools/compare_c_builds.py's mix: NaN/Inf, edge
features, inputs to refuse) and every recorded case. Output, delta, roles,
every stats field and every decision must be byte-identical (a refusal must
be the same exception type). Exit 1 on any difference.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tools"), str(ROOT / "benchmarks")]

from compare_c_builds import generated_cases, recorded_cases  # noqa: E402
from side_by_side import Checkout, Worker, save_cases  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--against", default="HEAD")
    parser.add_argument("-n", type=int, default=600)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    cases = [(c, x, t, label) for c, _, x, t, label in generated_cases(args.n, args.seed)]
    cases += [(c, x, t, label) for c, _, x, t, label in recorded_cases()]
    checkout = Checkout(args.against)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "cases.npz"
            save_cases(path, [(c, x, t) for c, x, t, _ in cases])
            old, new = Worker(checkout.path, path), Worker(ROOT, path)
            a, b = old.ask("digest")["digests"], new.ask("digest")["digests"]
            old.close()
            new.close()
    finally:
        checkout.close()
    bad = [label for (_, _, _, label), x, y in zip(cases, a, b) if x != y]
    for label in bad[:20]:
        print(f"DIFFERENT: {label}")
    print(f"{len(cases) - len(bad)}/{len(cases)} cases bit-identical to {args.against}'s port")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
