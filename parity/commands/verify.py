"""Check the C reference against real darknet.

Two sources of truth: the recorded dev set (cases recorded from real darknet
builds: $DARKNET_PARITY_RECORDED, else ../shared/recorded) plus fixtures/,
replayed through the C reference; and a real libdarknet (Debian's package by
default) run side by side with the C reference on random cases. Exit 0 only
if everything compared agrees.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from ..compare import compare
from ..diff import Agreement
from ..errors import EXIT_MISMATCH, EXIT_OK, ParityError
from ..recorded import locate
from ..replay import FIXTURES_DIR, replay_paths
from ..summary import agreement_table, totals_line
from . import Command

DEBIAN_LIB = "/usr/lib/darknet/libdarknet.so"


def libdarknet_agreements(cases: int, seed: int, flavor: str, lib: str | None,
                          include: str | None) -> list[Agreement]:
    """C reference vs a real libdarknet on ``cases`` random cases."""
    from ..generate import random_case, random_config
    from ..reference import run_reference

    results = []
    for k in range(cases):
        rng = np.random.default_rng([seed, k])
        config = random_config(rng, flavor)
        case = random_case(seed * 100003 + k, config, flavor=flavor)
        ours = run_reference(config, case.input, case.truth, flavor=flavor, decisions=True)
        real = run_reference(config, case.input, case.truth, flavor=flavor, backend="libdarknet",
                             darknet_lib=lib, darknet_include=include)
        results.append(Agreement.of(compare(real, ours, case=case, decisions=ours,
                                            name=f"random seed={seed} #{k}")))
    return results


class VerifyReference(Command):
    __doc__ = __doc__

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--recorded", metavar="DIR", help="recorded dev set (default: ../shared/recorded)")
        parser.add_argument("--libdarknet-cases", type=int, default=200, metavar="N",
                            help="random cases to run against the library (default 200; 0 skips)")
        parser.add_argument("--seed", type=int, default=0, help="seed of the random cases")
        parser.add_argument("--flavor", choices=("pjreddie", "alexeyab"), default="pjreddie",
                            help="flavor of the library (Debian's package is pjreddie)")
        parser.add_argument("--darknet-lib", metavar="PATH", help=f"libdarknet.so (default {DEBIAN_LIB})")
        parser.add_argument("--darknet-include", metavar="DIR", help="folder with its darknet.h")
        parser.add_argument("--verbose", action="store_true", help="list every case, not only mismatches")

    def run(self, args: argparse.Namespace) -> int:
        ok = True
        found = locate(args.recorded)
        if found.note:
            print(f"note: {found.note}")
        groups = sorted({p.parent for root in (found.path, FIXTURES_DIR) if root is not None and root.is_dir()
                         for p in root.rglob("*.npz")})
        for folder in groups:
            results = list(replay_paths([folder]))
            shown = results if args.verbose else [r for r in results if not (r or r.skipped)]
            print(f"\nC reference vs recordings in {folder}:")
            if shown:
                print(agreement_table(shown, "cases" if args.verbose else "mismatches"))
            print(totals_line(results))
            ok &= all(r or r.skipped for r in results)
        lib = args.darknet_lib or DEBIAN_LIB
        if args.libdarknet_cases <= 0:
            print("libdarknet: skipped (--libdarknet-cases 0)")
        elif not Path(lib).exists():
            if args.darknet_lib:   # a path the user named must exist; only the Debian default may be absent
                raise ParityError(f"--darknet-lib {lib}: no such file")
            print(f"libdarknet: skipped ({lib} not found; Debian: apt-get install darknet)")
        else:
            results = libdarknet_agreements(args.libdarknet_cases, args.seed, args.flavor,
                                            args.darknet_lib, args.darknet_include)
            failed = [r for r in results if not r]
            print(f"\nC reference ({args.flavor}) vs {lib} on {len(results)} random cases:")
            if failed:
                print(agreement_table(failed[:20], "first mismatches"))
            print(totals_line(results))
            ok &= not failed
        return EXIT_OK if ok else EXIT_MISMATCH
