"""Check a candidate against darknet's [yolo] reference over a suite of cases.

Cases come from named profiles (modelled on real cfgs, with variants of every
option), from real darknet cfg files (one sweep per file, every [yolo] layer
at its true grid), and from recorded case files. With no --profile, --cfg or
--replay, the default suite runs: every shipped profile, plus the recorded
cases in fixtures/ and in the recorded dev set (../shared/recorded or
$DARKNET_PARITY_RECORDED) when present. The candidate (default: this project's
PyTorch port) is compared term by term with the reference's delta; failing
cases get a diagnosis. Exit 0 when every case agrees and every darknet branch
a profile enables was reached, 1 on a mismatch, 2 on bad input.

  darknet-parity run                                   # the default suite
  darknet-parity run --profile yolov4 --candidate mypkg.loss:yolo_loss --convention loss
  darknet-parity run --cfg my-yolov4.cfg --cases 10 --html out/report.html
  darknet-parity run --shard 2/4 --json out/shard2.json   # then: darknet-parity merge out/shard*.json
"""
from __future__ import annotations

import argparse
import sys

from ..errors import EXIT_MISMATCH, EXIT_OK, EXIT_USAGE, ParityError
from . import Command, add_reference_arguments
from .harness_args import (add_candidate_arguments, add_diff_arguments, add_output_arguments,
                           add_process_arguments, add_semantics_arguments, check_output_paths, jobs_of, run_options)


class Run(Command):
    __doc__ = __doc__

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        cases = parser.add_argument_group("cases")
        cases.add_argument("--profile", action="append", default=[], metavar="NAME",
                           help="a profile (repeatable); `--profile all` runs every shipped profile")
        cases.add_argument("--profiles-file", action="append", metavar="YAML",
                           help="your own profiles, added to (or overriding) the shipped ones")
        cases.add_argument("--cfg", action="append", default=[], metavar="FILE.cfg",
                           help="a real darknet cfg: cases for each of its [yolo] layers at their true grids")
        cases.add_argument("--replay", action="append", default=[], metavar="PATH",
                           help="recorded cases (format v1 .npz, or folders of them)")
        cases.add_argument("--cases", type=int, metavar="N",
                           help="samples per profile or cfg (default: each profile's own count; 4 per cfg)")
        cases.add_argument("--seed", type=int, default=0, help="seed of the generated cases (default 0)")
        add_candidate_arguments(parser)
        add_reference_arguments(parser)
        add_semantics_arguments(parser)
        add_diff_arguments(parser)
        scale = parser.add_argument_group("scale")
        add_process_arguments(scale)
        scale.add_argument("--shard", metavar="I/N", help="run only the I-th of N deterministic slices")
        add_output_arguments(parser)

    def run(self, args: argparse.Namespace) -> int:
        from ..cases import shard, suite_refs
        from ..profiles import default_profile_names
        from ..suite import run_suite

        from ..recorded import locate

        profiles, replay = list(args.profile), list(args.replay)
        notes = []
        if not (profiles or args.cfg or replay):
            profiles, replay = ["all"], default_recordings()
            found = locate()
            notes += [found.note] if found.note else []
        if profiles == ["all"]:
            profiles = default_profile_names()
        opts = run_options(args)
        jobs = jobs_of(args)
        check_output_paths(args)
        refs = shard(suite_refs(profiles, args.cfg, replay, args.cases, args.seed, opts.profiles_extra),
                     args.shard)
        preflight(opts)
        result = run_suite(refs, opts, jobs=jobs, progress=_progress(len(refs)), shard_spec=args.shard,
                           options={"seed": args.seed, "cases": args.cases, "suite": suite_description(args)})
        result.notes += notes
        return report(result, args, "run")


def suite_description(args: argparse.Namespace) -> str:
    """What a run covered (profiles, cfgs, recordings) before sharding: shards of one run share it."""
    parts = [f"profile {p}" for p in args.profile] + [f"cfg {c}" for c in args.cfg]
    parts += [f"replay {r}" for r in args.replay]
    return ", ".join(parts) or "the default suite"


def preflight(opts) -> None:
    """Fail once, before any case runs, on what would fail every case: the candidate, the library."""
    from ..candidates import load_candidate

    import math

    from ..errors import ParityError

    if not math.isfinite(opts.loss_scale):
        raise ParityError(f"--loss-scale {opts.loss_scale}: darknet's [net] loss_scale must be a finite number")
    load_candidate(opts.candidate, convention=opts.convention, layout=opts.layout, device=opts.device,
                   framework=opts.framework, network=opts.network)
    if opts.reference == "libdarknet":
        from ..backends.darknet_library import find_library
        from ..backends.libdarknet import load_shim

        load_shim(find_library(opts.darknet_lib, opts.darknet_include))


def default_recordings() -> list[str]:
    """Recorded cases the default suite replays: fixtures/ and the recorded dev set, where present."""
    from ..recorded import locate
    from ..replay import FIXTURES_DIR

    found = [d for d in (FIXTURES_DIR, locate().path) if d is not None and any(d.rglob("*.npz"))]
    return [str(d) for d in found]


def _progress(total: int):
    """A progress bar on a terminal for long runs; silent otherwise."""
    if total < 20 or not sys.stderr.isatty():
        return None
    from rich.progress import Progress

    bar = Progress(transient=True)
    task = bar.add_task("cases", total=total)
    bar.start()

    def advance(_result) -> None:
        bar.advance(task)
        if bar.finished:
            bar.stop()
    return advance


# Distinct error messages listed on stderr when cases could not be compared.
MAX_ERRORS_SHOWN = 5


def report(result, args: argparse.Namespace, command: str | None = None) -> int:
    """Render the terminal summary, write the requested files, return the exit code.

    2 if any case could not be compared (its error is also printed on stderr),
    else 1 on a mismatch or an enabled branch never reached, else 0.
    """
    from ..report import render_text, write_reports

    render_text(result, verbose=args.verbose)
    try:
        written = write_reports(result, json=args.json, junit=args.junit, html=args.html)
    except OSError as exc:
        raise ParityError(f"could not write a report: {exc}") from None
    for kind, path in written.items():
        print(f"wrote {kind}: {path}")
    prog = f"darknet-parity {command}" if command else "darknet-parity"
    if result.incomplete:
        print(f"{prog}: error: the run is incomplete ({result.incomplete}); "
              f"{'the reports hold' if written else 'shown above are'} the cases that ran, marked incomplete",
              file=sys.stderr)
        return EXIT_USAGE
    errors = [c for c in result.cases if c.error is not None]
    if errors:
        print_case_errors(errors, len(result.cases), prog)
        return EXIT_USAGE
    return EXIT_OK if result.passed else EXIT_MISMATCH


def print_case_errors(errors, total: int, prog: str) -> None:
    """One line per distinct error message on stderr, naming the first case it hit."""
    by_message: dict[str, list[str]] = {}
    for case in errors:
        by_message.setdefault(case.error, []).append(case.case)
    print(f"{prog}: error: {len(errors)} of {total} case(s) could not be compared", file=sys.stderr)
    for message, cases in list(by_message.items())[:MAX_ERRORS_SHOWN]:
        more = f" (and {len(cases) - 1} more case(s))" if len(cases) > 1 else ""
        print(f"  {cases[0]}{more}: {message}", file=sys.stderr)
    if len(by_message) > MAX_ERRORS_SHOWN:
        print(f"  ... {len(by_message) - MAX_ERRORS_SHOWN} more distinct error(s) (see the report)", file=sys.stderr)
