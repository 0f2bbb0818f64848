#!/usr/bin/env python3
"""Regenerate fixtures/darknet-train/: a real darknet training run, recorded (``make fixtures``).

Debian's darknet library (pjreddie, 2018) builds yolov3-tiny from the cfg the
package ships, at 128x128 with batch 4 and random weights (seed 0), and
trains it for 3 iterations on the package's 7 photographs with the boxes of
fixtures/darknet-train/labels.yaml. After each forward pass both [yolo]
layers (16: 4x4 grid, 23: 8x8) become one format-v1 case: 6 files, under
2 MB. The same as

    darknet-parity record --darknet-train --out fixtures/darknet-train

(the command's defaults are these settings). The old recordings in the folder
are replaced; labels.yaml and README.md are kept. ``--check`` writes nothing
and exits 1 unless a fresh recording equals the committed one bit for bit.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from parity.case import load_case  # noqa: E402
from parity.darknet_train import TrainSettings, case_stem, iter_summary, record_training, write_recording  # noqa: E402
from parity.errors import ParityError  # noqa: E402

OUT = ROOT / "fixtures" / "darknet-train"
SETTINGS = TrainSettings(iterations=3, size=128, batch=4, seed=0)
MAX_BYTES = 3_000_000


def _same(a, b) -> bool:
    return (all(np.array_equal(getattr(a, k), getattr(b, k)) for k in ("input", "truth", "output", "delta"))
            and a.stats == b.stats and a.cfg == b.cfg)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=OUT, help=f"folder (default {OUT})")
    parser.add_argument("--check", action="store_true",
                        help="compare a fresh recording with the files in --out instead of writing")
    args = parser.parse_args(argv)
    try:
        recording = record_training(SETTINGS)
    except ParityError as exc:
        print(f"make_fixtures: {exc}", file=sys.stderr)
        return 2
    for line in iter_summary(recording):
        print(line)
    if args.check:
        differ = []
        for case in recording.cases:
            path = args.out / f"{case_stem(case)}.npz"
            if not path.is_file() or not _same(case, load_case(path)):
                differ.append(path.name)
        print(f"{len(recording.cases) - len(differ)} of {len(recording.cases)} recordings reproduced bit for bit"
              + (f"; differ or missing: {', '.join(differ)}" if differ else ""))
        return 1 if differ else 0
    args.out.mkdir(parents=True, exist_ok=True)
    for old in args.out.glob("*.npz"):
        old.unlink()
    paths = write_recording(recording, args.out)
    total = sum(p.stat().st_size for p in paths)
    for path in paths:
        print(f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}: {path.stat().st_size:,} bytes")
    print(f"{len(paths)} recordings, {total:,} bytes in {args.out}")
    if total > MAX_BYTES:
        print(f"make_fixtures: {total:,} bytes is over the {MAX_BYTES:,} the repository allows", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
