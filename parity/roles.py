"""The names every layer shares: per-slot role bits and darknet branch names.

Both are defined once, in the C reference's public header
(``darknet_ref/yolo_ref.h``: ``YREF_ROLE_*`` and ``enum yref_branch``), and
read from it here, so the C reference, the PyTorch port, the comparison and
the reports can never disagree on a bit or a name. This module imports
nothing from the project: it is the ground floor.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np


def ref_dir() -> Path:
    """``darknet_ref/`` of a source checkout, else the installed package data (``parity._csrc``)."""
    checkout = Path(__file__).resolve().parent.parent / "darknet_ref"
    if (checkout / "yolo_ref.h").is_file():
        return checkout
    import parity._csrc as csrc  # an installed wheel: the same files as package data

    return Path(csrc.__file__).resolve().parent


HEADER = ref_dir() / "yolo_ref.h"


def _read_roles(text: str) -> dict[str, int]:
    found = re.findall(r"#define\s+YREF_ROLE_([A-Z_]+)\s+\(1\s*<<\s*(\d+)\)", text)
    return {name: 1 << int(shift) for name, shift in found}


def _read_branches(text: str) -> tuple[str, ...]:
    body = text.split("enum yref_branch {", 1)[1].split("YREF_BR_COUNT", 1)[0]
    names = re.findall(r"^\s*YREF_BR_([A-Z_]+)", body, flags=re.MULTILINE)
    return tuple(n.lower() for n in names)


_TEXT = HEADER.read_text()
ROLE_BITS: dict[str, int] = _read_roles(_TEXT)
# darknet's branches in counter order: the names reports, coverage and profiles use.
BRANCHES: tuple[str, ...] = _read_branches(_TEXT)
del _TEXT

ROLE_IGNORED = ROLE_BITS["IGNORED"]
ROLE_CLASSMATCH_BLOCKED = ROLE_BITS["CLASSMATCH_BLOCKED"]
ROLE_TRUTH_THRESH = ROLE_BITS["TRUTH_THRESH"]
ROLE_BEST_ANCHOR = ROLE_BITS["BEST_ANCHOR"]
ROLE_EXTRA_ANCHOR = ROLE_BITS["EXTRA_ANCHOR"]
ROLE_REWRITTEN = ROLE_BITS["REWRITTEN"]
ROLE_CLASS_SHORTCUT = ROLE_BITS["CLASS_SHORTCUT"]
ROLE_AVERAGED = ROLE_BITS["AVERAGED"]
ROLE_OBJ_NONFINITE = ROLE_BITS["OBJ_NONFINITE"]

# darknet's class-match test: a cell may be ignored only if some class probability exceeds this.
CLASS_MATCH_THRESH = 0.25

# Slot roles for the diff, in priority order (a slot gets the first that applies).
ROLES = ("rewritten", "truth_thresh", "extra", "best", "ignored", "negative")
_ROLE_FLAGS = (("rewritten", ROLE_REWRITTEN), ("truth_thresh", ROLE_TRUTH_THRESH), ("extra", ROLE_EXTRA_ANCHOR),
               ("best", ROLE_BEST_ANCHOR), ("ignored", ROLE_IGNORED))


def role_of(bits: int) -> str:
    """The role of one slot from its role bits (priority as in ``ROLES``)."""
    for name, flag in _ROLE_FLAGS:
        if bits & flag:
            return name
    return "negative"


def slot_roles(bits: np.ndarray) -> np.ndarray:
    """Index into ``ROLES`` per slot ([B, n, H, W] role bits -> int8 array)."""
    role = np.full(bits.shape, ROLES.index("negative"), dtype=np.int8)
    for name, flag in reversed(_ROLE_FLAGS):  # highest priority written last
        role[(bits & flag) != 0] = ROLES.index(name)
    return role


def positive(bits: np.ndarray) -> np.ndarray:
    """Slots a truth writes box and class deltas on (best anchor, iou_thresh extra or truth_thresh)."""
    return (bits & (ROLE_BEST_ANCHOR | ROLE_EXTRA_ANCHOR | ROLE_TRUTH_THRESH)) != 0
