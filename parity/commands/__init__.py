"""Subcommands of ``darknet-parity``; each is a class whose docstring is its help."""
from __future__ import annotations

import argparse


class Command:
    """Base: a subcommand adds its arguments and runs, returning an exit code."""

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        raise NotImplementedError

    def run(self, args: argparse.Namespace) -> int:
        raise NotImplementedError


def add_reference_arguments(parser: argparse.ArgumentParser) -> None:
    """--reference/--darknet-lib/--darknet-include, shared by every command that runs a reference."""
    group = parser.add_argument_group("reference")
    group.add_argument("--reference", choices=("c", "libdarknet"), default="c",
                       help="our C reference (default) or a real darknet library")
    group.add_argument("--darknet-lib", metavar="PATH",
                       help="libdarknet.so built from your darknet checkout (default: Debian's package)")
    group.add_argument("--darknet-include", metavar="DIR",
                       help="that checkout's include/ folder holding darknet.h (default: Debian's package)")
