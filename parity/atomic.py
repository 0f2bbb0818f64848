"""Files written whole or not at all: a temporary name in the same folder, then a rename.

A crash, a full disk or Ctrl-C mid-write leaves either the old file or the
new one, never half of one; the temporary file is removed on any failure.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_atomic(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (parents created); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(temp, path)
    except BaseException:
        try:
            os.unlink(temp)
        except OSError:
            pass
        raise
    return path


def check_writable(path: str | os.PathLike[str], what: str) -> str | None:
    """Why ``path`` cannot take a new file (a folder, an unwritable or impossible parent), else None.

    Checked before any work so that a long run does not fail at its last step.
    """
    path = Path(path)
    if path.is_dir():
        return f"{what} {path}: is a folder, not a file"
    parent = path.parent
    while not parent.exists():
        if parent == parent.parent:
            break
        parent = parent.parent
    if not parent.is_dir():
        return f"{what} {path}: {parent} is not a folder"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"{what} {path}: {parent} is not writable"
    if path.exists() and not os.access(path, os.W_OK):
        return f"{what} {path}: the file is not writable"
    return None
