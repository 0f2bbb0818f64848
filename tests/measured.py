"""Maxima measured by the agreement tests, printed in pytest's terminal summary (conftest.py)."""
from __future__ import annotations

MAXIMA: dict[str, list[float]] = {}


def record(label: str, max_abs: float, max_rel: float) -> None:
    """Keep the largest errors seen under ``label``."""
    current = MAXIMA.setdefault(label, [0.0, 0.0])
    MAXIMA[label] = [max(current[0], max_abs), max(current[1], max_rel)]
