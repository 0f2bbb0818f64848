"""Combine the JSON results of shards (run --shard I/N --json ...) into one report.

Cases are concatenated and branch coverage is summed, so a branch that no
shard reached fails the merged result as it would a single run. Exit 0 when
the merged result passes, 1 otherwise.
"""
from __future__ import annotations

import argparse

from . import Command
from .harness_args import add_output_arguments


class Merge(Command):
    __doc__ = __doc__

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("results", nargs="+", metavar="SHARD.json", help="results written by run --json")
        add_output_arguments(parser)

    def run(self, args: argparse.Namespace) -> int:
        from ..suite import SuiteResult, merge
        from .run import report

        return report(merge(SuiteResult.load(p) for p in args.results), args)
