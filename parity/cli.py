"""The ``darknet-parity`` command line: ``main(argv) -> exit code``.

Subcommands are listed here by module path and imported only when chosen,
so ``darknet-parity --help`` works without numpy, torch or a C compiler.
Exit codes: 0 agreement, 1 mismatch, 2 usage or input error (a
``ParityError``, printed without a traceback).
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import sys
import warnings
from typing import Iterator, Sequence

from .errors import EXIT_USAGE, ParityError

DESCRIPTION = ("Check a port of darknet's [yolo] training loss against darknet, term by term. "
               "Exit codes: 0 agreement, 1 mismatch, 2 usage or input error.")

# name -> (module, class, one-line summary shown by --help)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "run": ("parity.commands.run", "Run",
            "check a candidate (default: the PyTorch port) against the reference over profiles, cfgs, recordings"),
    "replay": ("parity.commands.replay", "Replay",
               "check a candidate against recorded darknet cases (format v1)"),
    "merge": ("parity.commands.merge", "Merge", "combine shard results (run --shard --json) into one report"),
    "verify-reference": ("parity.commands.verify", "VerifyReference",
                         "check the C reference against real darknet: the recorded dev set and a libdarknet"),
    "record": ("parity.commands.record", "Record",
               "generate or re-record cases and write them (format v1) with a reference's results"),
    "explain": ("parity.commands.explain", "Explain",
                "explain darknet's reasoning at one slot (image, anchor, cell) of a case"),
    "shrink": ("parity.commands.shrink", "Shrink",
               "reduce a case a candidate fails on to a small one that still fails"),
}


class _Parser(argparse.ArgumentParser):
    """argparse that exits with our usage code (2) and a one-line message."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        raise SystemExit(EXIT_USAGE)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="darknet-parity", description=DESCRIPTION)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, (_, _, summary) in COMMANDS.items():
        sub.add_parser(name, help=summary, add_help=False)
    return parser


def _load(name: str):  # -> Command class
    module, cls, _ = COMMANDS[name]
    return getattr(importlib.import_module(module), cls)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        parser = build_parser()
        parser.parse_args(argv or ["--help"])
        return EXIT_USAGE
    command = _load(argv[0])()
    sub = _Parser(prog=f"darknet-parity {argv[0]}", description=command.__doc__,
                  formatter_class=argparse.RawDescriptionHelpFormatter)
    command.add_arguments(sub)
    args = sub.parse_args(argv[1:])
    try:
        with tool_warnings(f"darknet-parity {argv[0]}"):
            return int(command.run(args))
    except ParityError as exc:
        print(f"darknet-parity {argv[0]}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE


@contextlib.contextmanager
def tool_warnings(prog: str) -> Iterator[None]:
    """Warnings as the tool's own one-line messages on stderr, each distinct message once.

    Python's default format (file, line and source of the warning call) is
    for developers; a user wants what happened, once.
    """
    seen: set[str] = set()

    def show(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
        text = str(message)
        if text not in seen:
            seen.add(text)
            print(f"{prog}: warning: {text}", file=sys.stderr)

    with warnings.catch_warnings():
        warnings.simplefilter("always")      # our own dedupe: per message, not per source line
        warnings.showwarning = show
        yield


def entry() -> None:
    """Console-script entry point."""
    raise SystemExit(main())


if __name__ == "__main__":
    entry()
