"""Replay recorded cases through the reference and check agreement.

Each FILE is a format-v1 case (.npz) or a folder of them. The reference
(our C implementation by default) runs on the case's input and truth; its
output, delta, cost and counters must match the recording.
"""
from __future__ import annotations

import argparse
import json

from ..agreement import Agreement
from ..errors import EXIT_MISMATCH, EXIT_OK
from ..replay import replay_paths
from ..summary import agreement_table
from . import Command, add_reference_arguments


class Replay(Command):
    __doc__ = __doc__

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("files", nargs="+", metavar="FILE", help="case files or folders")
        add_reference_arguments(parser)
        parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")

    def run(self, args: argparse.Namespace) -> int:
        results = list(replay_paths(args.files, reference=args.reference, darknet_lib=args.darknet_lib,
                                    darknet_include=args.darknet_include))
        print(agreement_table(results, f"replay through the {args.reference} reference"))
        if args.json:
            write_json(args.json, results)
        return EXIT_OK if all(r or r.skipped for r in results) else EXIT_MISMATCH


def write_json(path: str, results: list[Agreement]) -> None:
    with open(path, "w") as fh:
        json.dump([r.__dict__ for r in results], fh, indent=1, default=str)
