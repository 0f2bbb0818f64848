"""Check a candidate against recorded darknet cases (format v1).

Each FILE is a case (.npz) or a folder of them, recorded from real darknet
(../shared/recorded), with `darknet-parity record`, or from your own training
loop (parity.record.Recorder). A case's recorded delta is the reference; a
case recorded without one (Recorder) gets it from --reference (our C
reference by default, or a darknet library). The candidate (default: this
project's PyTorch port) is compared with it term by term, as in `run`. Exit 0
when all agree, 1 on a mismatch, 2 on bad input or a candidate error.
"""
from __future__ import annotations

import argparse

from ..errors import ParityError
from . import Command, add_reference_arguments
from .harness_args import (add_candidate_arguments, add_diff_arguments, add_output_arguments,
                           add_process_arguments, add_semantics_arguments, check_output_paths, jobs_of, run_options)


class Replay(Command):
    __doc__ = __doc__

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("files", nargs="+", metavar="FILE", help="case files or folders")
        add_candidate_arguments(parser)
        add_reference_arguments(parser)
        add_semantics_arguments(parser)
        add_diff_arguments(parser)
        add_process_arguments(parser)
        add_output_arguments(parser)

    def run(self, args: argparse.Namespace) -> int:
        from ..cases import suite_refs
        from ..suite import run_suite
        from .run import _progress, preflight, report

        opts = run_options(args)
        jobs = jobs_of(args)
        check_output_paths(args)
        refs = suite_refs([], [], args.files, None, 0)
        preflight(opts)
        if len(refs) == 1:
            _show_input_warnings(refs[0].source)
        result = run_suite(refs, opts, jobs=jobs, progress=_progress(len(refs)),
                           options={"seed": None, "cases": None, "suite": "replay " + ", ".join(args.files)})
        return report(result, args, "replay")


def _show_input_warnings(path: str) -> None:
    """For one file: print what darknet reads differently in its truth (the suite itself stays quiet)."""
    import sys
    import warnings

    from ..case import load_case
    from ..errors import DarknetInputWarning
    from ..layer_input import check_layer_input

    case = load_case(path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", DarknetInputWarning)
        try:
            check_layer_input(case.config, case.input, case.truth, case.flavor)
        except ParityError:
            return  # the comparison reports it
    for w in caught:
        if issubclass(w.category, DarknetInputWarning):
            print(f"darknet-parity replay: warning: {path}: {w.message}", file=sys.stderr)
