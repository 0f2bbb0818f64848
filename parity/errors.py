"""Errors the user can act on, and the CLI's exit codes.

A ``ParityError`` is bad input (a cfg, a tensor, a library, a candidate): the
CLI prints its message without a traceback and exits with ``EXIT_USAGE``.
Anything else escaping is a bug in this project. ``DarknetInputWarning`` is
input darknet accepts and reads its own way, which we mirror.
"""
from __future__ import annotations

import signal

EXIT_OK = 0
EXIT_MISMATCH = 1
EXIT_USAGE = 2


class ParityError(Exception):
    """Bad input from the user; the message names the problem."""


class ConfigError(ParityError, ValueError):
    """A darknet cfg that darknet would misread or that we cannot model.

    The message names the file, the line and the option where known.
    """

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None,
                 option: str | None = None) -> None:
        self.path, self.line, self.option = path, line, option
        where = []
        if path is not None:
            where.append(str(path))
        if line is not None:
            where.append(f"line {line}")
        prefix = ":".join(where)
        if option is not None:
            prefix = f"{prefix}: option '{option}'" if prefix else f"option '{option}'"
        super().__init__(f"{prefix}: {message}" if prefix else message)


class InputError(ParityError, ValueError):
    """A tensor of the wrong shape, dtype or content for the [yolo] layer."""


class BuildError(ParityError, RuntimeError):
    """The C reference or the libdarknet shim could not be compiled or loaded."""


class CaseFormatError(ParityError, ValueError):
    """A recorded case file that does not follow format v1."""


class DarknetInputWarning(UserWarning):
    """Input darknet accepts but reads differently from how it looks; we mirror darknet.

    Out-of-range class ids (AlexeyAB skips the row), an ``x == 0`` row ending an
    image's boxes early, more boxes than ``max``. Raised at most once per layer
    call, naming what darknet will do. Suites generate such input on purpose and
    silence this category (``parity.suite.compare_case``).
    """


class Interrupted(BaseException):
    """SIGINT or SIGTERM reached a run: it stops, keeping the results so far.

    A ``BaseException`` (like ``KeyboardInterrupt``) so that no ``except
    Exception`` on the way swallows it; distinct from ``KeyboardInterrupt`` so
    that a candidate raising ``KeyboardInterrupt`` itself is that case's error.
    """

    def __init__(self, signum: int) -> None:
        self.signum = signum
        self.name = signal.Signals(signum).name
        super().__init__(f"interrupted by {self.name}")


class CaseTimeout(BaseException):
    """One case ran past its time limit (``--timeout``); raised in the process running it."""
