"""Check a candidate against recorded darknet cases (format v1).

Each FILE is a case (.npz) or a folder of them, recorded from real darknet
(../shared/recorded) or with `darknet-parity record`. The recorded delta is
the reference; the candidate (default: this project's PyTorch port) is
compared with it term by term, as in `run`. Exit 0 when all agree, 1 on a
mismatch, 2 on bad input.
"""
from __future__ import annotations

import argparse

from . import Command
from .harness_args import add_candidate_arguments, add_diff_arguments, add_output_arguments, run_options


class Replay(Command):
    __doc__ = __doc__

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("files", nargs="+", metavar="FILE", help="case files or folders")
        add_candidate_arguments(parser)
        add_diff_arguments(parser)
        parser.add_argument("--jobs", type=int, default=1, metavar="N", help="worker processes (default 1)")
        add_output_arguments(parser)

    def run(self, args: argparse.Namespace) -> int:
        from ..suite import run_suite, suite_refs
        from .run import _progress, report

        refs = suite_refs([], [], args.files, None, 0)
        result = run_suite(refs, run_options(args), jobs=max(1, args.jobs), progress=_progress(len(refs)))
        return report(result, args)
