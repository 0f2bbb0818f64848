"""Combine the JSON results of shards (run --shard I/N --json ...) into one report.

Cases are concatenated and branch coverage is summed, so a branch that no
shard reached fails the merged result as it would a single run. The files
must be every shard of one run (same suite, seed, candidate and tolerances,
each index 1..N once); otherwise nothing is merged (exit 2, naming the
problem, e.g. the missing shards). Exit 0 when the merged result passes, 1
on a mismatch.
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
        from ..suite import SuiteResult, check_shards, merge
        from .harness_args import check_output_paths
        from .run import report

        check_output_paths(args)
        results = [(p, SuiteResult.load(p)) for p in args.results]
        check_shards(results)
        return report(merge(res for _, res in results), args, "merge")
