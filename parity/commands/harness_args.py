"""Argument groups shared by the commands that run a candidate (run, replay, shrink)."""
from __future__ import annotations

import argparse

from ..atomic import check_writable
from ..errors import ParityError
from ..pool import check_jobs, check_timeout
from ..suite import DEFAULT_TIMEOUT, RunOptions


def add_candidate_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("candidate (your implementation)")
    group.add_argument("--candidate", default="parity", metavar="SPEC",
                       help="'parity' (this project's PyTorch port, the default), 'naive' (a textbook autograd "
                            "loss), or module:callable / path/file.py:callable called as fn(input, truth, config)")
    group.add_argument("--convention", choices=("delta", "grad", "loss"),
                       help="what the callable returns (default: detected from the return value)")
    group.add_argument("--layout", choices=("nchw", "bnhwc"), default="nchw",
                       help="head layout the callable takes and returns: darknet's [b, n*(5+c), h, w] (default) "
                            "or [b, n, h, w, 5+c]")
    group.add_argument("--device", default="cpu", help="torch device for the candidate (default cpu)")
    group.add_argument("--whole-network", action="store_true",
                       help="the callable takes every head of a sample at once: fn(inputs: list, truth, "
                            "configs: list) returning a scalar loss or one delta/gradient per head")
    group.add_argument("--framework", choices=("torch", "jax", "tf"),
                       help="what the callable is written in (default: detected from its module); JAX and TF "
                            "candidates get their own arrays, and a returned loss is differentiated with "
                            "jax.grad / tf.GradientTape"),


def add_output_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("reports")
    group.add_argument("--json", metavar="PATH", help="write the full results as JSON (input of `merge`)")
    group.add_argument("--junit", metavar="PATH", help="write a JUnit XML report for CI systems")
    group.add_argument("--html", metavar="PATH", help="write a self-contained HTML report with heatmaps")
    group.add_argument("--html-all-cases", action="store_true",
                       help="draw every failing case in detail in the HTML report (default: the first 10, the "
                            "rest one row each: a failing 120-case run is about 0.5 MB)")
    group.add_argument("--verbose", action="store_true",
                       help="the whole text report: every failing case, mismatch, path and table (default: a "
                            "compact report that fits a CI log)")


def add_process_arguments(group: argparse._ActionsContainer) -> None:
    """--jobs and --timeout: where cases run and how long one may take."""
    group.add_argument("--jobs", type=int, metavar="N",
                       help="run the cases in N worker processes, 1 up to a bound from this machine's cores and "
                            "memory: a candidate that crashes, exits or hangs then costs its own case only "
                            "(default: in this process)")
    group.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, metavar="SECONDS",
                       help=f"seconds one case may take before it is an error (default {DEFAULT_TIMEOUT:g}; 0: none)")


def check_output_paths(args: argparse.Namespace) -> None:
    """--json/--junit/--html must be writable files: checked before any case runs."""
    problems = [why for flag in ("json", "junit", "html")
                if getattr(args, flag, None) and (why := check_writable(getattr(args, flag), f"--{flag}"))]
    if problems:
        raise ParityError("; ".join(problems))


def jobs_of(args: argparse.Namespace) -> int | None:
    """--jobs checked against this machine's bound (None: in this process)."""
    return check_jobs(args.jobs)


def add_diff_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("comparison")
    group.add_argument("--tolerances", metavar="YAML", help="per-term tolerance file (default: parity/tolerances.yaml)")
    group.add_argument("--per-class", action="store_true", help="split the class term per class")
    group.add_argument("--top-k", type=int, default=10, metavar="K", help="mismatches listed per case (default 10)")
    group.add_argument("--finite-only", action="store_true",
                       help="leave out cases whose input holds NaN/Inf (darknet's guards keep its delta finite "
                            "there; most ports return NaN); the summary says how many")
    group.add_argument("--no-search", action="store_true",
                       help="skip the explanation search (by default a failing run ends with the catalogue "
                            "deviations under which darknet's semantics reproduce the candidate)")
    group.add_argument("--require-coverage", action="store_true",
                       help="fail (exit 1) when a darknet branch a profile's configs enable is never reached "
                            "(always reported; `make parity` sets this)")


def add_semantics_arguments(parser: argparse.ArgumentParser) -> None:
    """Which darknet the reference stands for: its build (-O2 or -Ofast) and its backward (CPU or GPU)."""
    group = parser.add_argument_group("reference semantics")
    group.add_argument("--backward", choices=("cpu", "gpu"), default="cpu",
                       help="the delta darknet's backward adds to the previous layer: 'cpu' (default, darknet's "
                            "CPU semantics: the layer's delta) or 'gpu' (AlexeyAB's GPU backward: delta * "
                            "loss_scale * delta_normalizer; pjreddie's is unscaled)")
    group.add_argument("--loss-scale", type=float, default=1.0, metavar="F",
                       help="darknet's [net] loss_scale, used by --backward gpu (default 1, as darknet's)")
    group.add_argument("--reference-build", choices=("auto", "o2", "ofast"), default="auto",
                       help="the build of the reference: 'ofast' (darknet's default Makefile flags) reports box "
                            "deltas within the -Ofast bound of parity/tolerances.yaml as '-Ofast drift', not "
                            "failures; 'o2' keeps the strict rule. 'auto' (default): a recording's meta.build "
                            "decides, any other reference (the C reference, --reference libdarknet) is 'o2'")


def run_options(args: argparse.Namespace) -> RunOptions:
    """RunOptions from parsed arguments (the reference group comes from add_reference_arguments)."""
    return RunOptions(
        candidate=args.candidate, convention=args.convention, layout=args.layout, device=args.device,
        reference=getattr(args, "reference", "c"), darknet_lib=getattr(args, "darknet_lib", None),
        darknet_include=getattr(args, "darknet_include", None), tolerances=args.tolerances,
        per_class=args.per_class, top_k=args.top_k,
        profiles_extra=tuple(getattr(args, "profiles_file", None) or ()),
        require_coverage=bool(getattr(args, "require_coverage", False)),
        finite_only=bool(getattr(args, "finite_only", False)),
        framework=getattr(args, "framework", None),
        network=bool(getattr(args, "whole_network", False)),
        timeout=check_timeout(getattr(args, "timeout", DEFAULT_TIMEOUT)),
        reference_build=getattr(args, "reference_build", "auto"), backward=getattr(args, "backward", "cpu"),
        loss_scale=getattr(args, "loss_scale", 1.0), search=not getattr(args, "no_search", True))

