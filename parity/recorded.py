"""Where the recordings of real darknet are, and saying so loudly when they are not.

The dev set (cases recorded from real upstream darknet builds) lives outside
the repository: ``../shared/recorded`` beside a checkout, or wherever
``$DARKNET_PARITY_RECORDED`` points. CI has it; a public clone does not. A
run that silently skipped it would claim agreement it never checked, so
``locate`` reports its absence as a one-line note with how many recorded
cases go unchecked, and refuses a folder the user named that does not exist.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .errors import ParityError

REPO_ROOT = Path(__file__).resolve().parent.parent
ENV = "DARKNET_PARITY_RECORDED"
DEFAULT_DIRS = (REPO_ROOT.parent / "shared" / "recorded", REPO_ROOT / "shared" / "recorded")
# The dev set as CI has it: folder -> cases (what a run without it does not check).
EXPECTED = {"alexeyab-O2": 61, "alexeyab": 61, "alexeyab-extra-O2": 71, "alexeyab-extra": 71, "pjreddie": 20}


@dataclass(frozen=True)
class RecordedSet:
    """The dev set found (``path`` None when absent) and a note for the user, if any."""

    path: Path | None
    cases: int
    note: str | None = None


def _count(path: Path) -> int:
    return sum(1 for _ in path.rglob("*.npz"))


def locate(explicit: str | os.PathLike[str] | None = None, *, what: str = "--recorded") -> RecordedSet:
    """The dev set: ``explicit`` (a path the user gave), else ``$DARKNET_PARITY_RECORDED``, else ../shared/recorded.

    A folder the user named (``explicit`` or the environment variable) must
    exist and hold cases: ParityError otherwise. The default folder may be
    absent: then ``path`` is None and ``note`` says what was not checked.
    """
    named = (os.fspath(explicit), what) if explicit is not None else (
        (os.environ[ENV], f"${ENV}") if os.environ.get(ENV) else None)
    if named is not None:
        path = Path(named[0])
        if not path.is_dir():
            raise ParityError(f"{named[1]} {path}: no such folder of recorded cases")
        count = _count(path)
        if not count:
            raise ParityError(f"{named[1]} {path}: the folder holds no recorded case (.npz)")
        return RecordedSet(path, count, _shortfall(path))
    for path in DEFAULT_DIRS:
        if path.is_dir() and _count(path):
            return RecordedSet(path, _count(path), _shortfall(path))
    missing = sum(EXPECTED.values())
    return RecordedSet(None, 0, f"recorded dev set ABSENT (../shared/recorded, or set ${ENV}): "
                                f"{missing} cases recorded from real darknet in {len(EXPECTED)} folders were "
                                "NOT checked")


def _shortfall(path: Path) -> str | None:
    """A note when known folders hold fewer cases than the dev set CI has."""
    short = [f"{name} {have}/{want}" for name, want in EXPECTED.items()
             if (have := _count(path / name) if (path / name).is_dir() else 0) < want]
    if not short:
        return None
    return f"recorded dev set at {path} is incomplete ({', '.join(short)} cases): the rest were NOT checked"
