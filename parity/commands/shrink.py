"""Reduce a case your candidate fails on to a small case that still fails the same way.

CASE is a format-v1 case file (.npz) or a case id ("PROFILE#K",
"PROFILE#S/headN", "FILE.cfg#K"; --seed picks the sweep). If the candidate
agrees with the reference on it, there is nothing to shrink: exit 0.
Otherwise the case is reduced greedily, keeping each step only while the
candidate still fails with the same kind of mismatch (the same term, and
decision vs value, as its main failure on the original): fewer images,
fewer truth rows (darknet's row order and x == 0 terminator kept), fewer
anchors, a smaller grid window (the stride, hence every prediction in cell
units, kept), fewer classes (ids remapped). Each step is a valid case.

A recorded case is first compared with its recording; the reduced cases,
which have none, with the reference (--reference, our C one by default).
The minimal case is written in format v1 with the reference's output,
delta and stats, and meta saying what it was shrunk from and how, to --out
(default: <case>-min.npz). Prints the sizes before and after and the
candidate's remaining mismatches. Exit 1: the written case still fails.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any

from ..errors import EXIT_MISMATCH, EXIT_OK, EXIT_USAGE, ParityError
from . import Command, add_reference_arguments
from .explain import WIDTH, add_case_arguments, case_label
from .harness_args import add_candidate_arguments, add_diff_arguments, run_options
from .record import fill_from_reference, safe_name

DEFAULT_MAX_STEPS = 300
# Provenance of a recording: the shrunk case is not that recording.
_STALE_META = ("implementation", "commit", "build", "layer_fields", "case_id", "features", "forced",
               "recorded_by", "reference", "parity_version")


def failure_kind(diff: Any) -> tuple[str, str] | None:
    """The main failure of a comparison: (term, "decision" | "value"), ("candidate", "error"), or None.

    The term and kind with the most failing elements; decisions win ties.
    """
    if diff.error is not None:
        return ("candidate", "error")
    counts: dict[tuple[str, str], int] = {}
    for cell in diff.cells:
        for kind, number in (("decision", cell.decision_mismatches), ("value", cell.value_mismatches)):
            if number:
                counts[(cell.term, kind)] = counts.get((cell.term, kind), 0) + number
    if not counts:
        return None
    return max(counts, key=lambda k: (counts[k], k[1] == "decision"))


def failing_kinds(diff: Any) -> set[tuple[str, str]]:
    if diff.error is not None:
        return {("candidate", "error")}
    return {(c.term, kind) for c in diff.cells
            for kind, number in (("decision", c.decision_mismatches), ("value", c.value_mismatches)) if number}


def describe_kind(kind: tuple[str, str]) -> str:
    term, what = kind
    return "the candidate raises an error" if what == "error" else f"{what} mismatches in the {term} term"


class Shrink(Command):
    __doc__ = __doc__

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        add_case_arguments(parser)
        parser.add_argument("--out", metavar="FILE", help="where to write the minimal case (default <case>-min.npz)")
        parser.add_argument("--max-steps", type=int, default=DEFAULT_MAX_STEPS, metavar="N",
                            help=f"reduced cases to try at most (default {DEFAULT_MAX_STEPS})")
        add_candidate_arguments(parser)
        add_reference_arguments(parser)
        add_diff_arguments(parser)

    def run(self, args: argparse.Namespace) -> int:
        from rich.console import Console

        from ..candidates import load_candidate
        from ..case import save_case
        from ..tolerance import load_tolerances
        from ..shrink import case_size, shrink_case
        from ..suite import compare_case

        if args.max_steps < 0:
            raise ParityError(f"--max-steps {args.max_steps}: must be >= 0")
        console = Console(soft_wrap=True, highlight=False, width=None if sys.stdout.isatty() else WIDTH)
        from ..cases import case_from_spec   # lazy: the CLI's --help stays light

        case = case_from_spec(args.case, args.seed, args.profiles_file, args.cases)
        label = case_label(case, args.case)
        opts = dataclasses.replace(run_options(args), diagnose=False, top_k=1, search=False)
        rule = load_tolerances(opts.tolerances)
        candidate = load_candidate(opts.candidate, convention=opts.convention, layout=opts.layout,
                                   framework=opts.framework,
                                   device=opts.device)
        first = compare_case(case, opts, name=label, rule=rule, candidate=candidate)
        if first.skipped:
            console.print(f"{label}: the recording is not compared ({first.skipped}); shrinking against the "
                          f"{opts.reference} reference instead")
        elif first.passed:
            console.print(f"candidate {candidate.name!r} agrees with the reference on {label} "
                          f"({case.input.size} elements, {first.borderline} borderline): nothing to shrink")
            return EXIT_OK
        start = _unrecorded(case)
        base = compare_case(start, opts, name=label, rule=rule, candidate=candidate)
        kind = failure_kind(base)
        if kind is None:
            if first.skipped:
                console.print(f"candidate {candidate.name!r} agrees with the {opts.reference} reference on {label}: "
                              "nothing to shrink")
                return EXIT_OK
            raise ParityError(f"{label}: the candidate fails against the recorded delta but agrees with the "
                              f"{opts.reference} reference; the reference itself differs from this recording "
                              "(check it with `darknet-parity verify-reference`), so there is nothing to shrink")

        def still_fails(reduced: Any) -> bool:
            try:
                diff = compare_case(reduced, opts, name=label, rule=rule, candidate=candidate)
            except ParityError:
                return False
            return kind in failing_kinds(diff)

        small, steps = shrink_case(start, still_fails, args.max_steps)
        small = fill_from_reference(small, args.reference, args.darknet_lib, args.darknet_include)
        small.meta.update({
            "shrunk_from": case.path or args.case, "shrunk_from_id": label, "shrink_steps": steps,
            "shrink_failure": describe_kind(kind), "shrink_candidate": candidate.name,
            "generator": f"darknet-parity shrink of {label} ({len(steps)} steps); originally: "
                         f"{case.meta.get('generator', case.name)}"})
        out = Path(args.out) if args.out else _default_out(case, args.case)
        save_case(out, small)
        final = compare_case(small, dataclasses.replace(opts, diagnose=True, top_k=args.top_k), name=str(out),
                             rule=rule, candidate=candidate)
        _print_summary(console, label, out, case_size(case), case_size(small), steps, kind, final)
        if final.error:   # the candidate raises or returns NaN/Inf on the minimal case: an input error
            print(f"darknet-parity shrink: error: {final.error}", file=sys.stderr)
            return EXIT_USAGE
        return EXIT_MISMATCH if not final.passed else EXIT_OK


def _unrecorded(case: Any) -> Any:
    """The case without recorded results or recording provenance: what shrinking starts from."""
    from ..case import Case

    meta = {k: v for k, v in case.meta.items() if k not in _STALE_META}
    return Case(case.cfg, case.config, case.flavor, case.input, case.truth, None, None, {}, meta, None)


def _default_out(case: Any, spec: str) -> Path:
    if case.path:
        path = Path(case.path)
        return path.with_name(f"{path.stem}-min.npz")
    return Path(f"{safe_name(spec)}-min.npz")


def _print_summary(console: Any, label: str, out: Path, before: dict[str, int], after: dict[str, int],
                   steps: list[str], kind: tuple[str, str], final: Any) -> None:
    from rich.table import Table
    from rich.text import Text

    console.print(Text(f"shrank {label} keeping {describe_kind(kind)}: {len(steps)} step(s)", style="bold"))
    for k, step in enumerate(steps, 1):
        console.print(Text(f"  {k}. {step}"))
    sizes = Table(title="size", title_justify="left")
    for col in ("", "batch", "truths", "classes", "anchors", "grid (w x h)", "elements"):
        sizes.add_column(col, justify="left" if not col else "right")
    for name, size in (("before", before), ("after", after)):
        sizes.add_row(name, str(size["batch"]), str(size["truths"]), str(size["classes"]), str(size["anchors"]),
                      f"{size['w']} x {size['h']}", str(size["elements"]))
    console.print(sizes)
    console.print(Text(f"wrote {out}"))
    if final.error is not None:
        console.print(Text(f"the candidate still fails on it: {final.error}"))
        return
    status = "still fails" if not final.passed else "passes (the failure depended on what was removed)"
    console.print(Text(f"the candidate {status} on it: {final.decision_mismatches} decision and "
                       f"{final.value_mismatches} value mismatch(es), {final.borderline} borderline"))
    terms: dict[str, list[int]] = {}
    for cell in final.cells:
        if cell.decision_mismatches or cell.value_mismatches:
            t = terms.setdefault(cell.term, [0, 0])
            t[0] += cell.decision_mismatches
            t[1] += cell.value_mismatches
    if terms:
        table = Table(title="remaining mismatches per term", title_justify="left")
        for col in ("term", "decision", "value"):
            table.add_column(col, justify="left" if col == "term" else "right")
        for term, (d, v) in terms.items():
            table.add_row(term, str(d), str(v))
        console.print(table)
    if final.mismatches:
        table = Table(title="first mismatches (image, anchor, row j, column i)", title_justify="left")
        for col in ("kind", "slot", "term", "reference", "candidate", "role"):
            table.add_column(col, justify="right" if col in ("reference", "candidate") else "left")
        for m in final.mismatches:
            table.add_row(m.kind + (" (borderline)" if m.borderline else ""), f"{m.image},{m.anchor},{m.j},{m.i}",
                          m.term, f"{m.reference:.6g}", f"{m.candidate:.6g}", m.role)
        console.print(table)
    for cause in final.causes[:3]:
        console.print(Text(f"likely cause ({cause.get('term')}): {cause.get('message')}"))
    if final.mismatches:
        m = final.mismatches[0]
        console.print(Text(f"explain the first: darknet-parity explain {out} --cell {m.image},{m.anchor},{m.j},{m.i}"))
