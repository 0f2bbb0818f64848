"""Does a candidate run agree with a reference run? One rule, used everywhere.

Values agree when ``|cand - ref| <= atol + rtol*|ref|`` (defaults 1e-5 and
1e-4), NaN agrees only with NaN and an infinity only with itself. Decisions
(whether darknet wrote a delta at all: zero vs nonzero) are counted apart
from values: a decision mismatch is never a tolerance question.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

ATOL = 1e-5
RTOL = 1e-4
# Stats that are counts: they must be equal, not close.
EXACT_STATS = ("count", "rewritten_bbox", "total_bbox")
CLOSE_STATS = ("cost",)


def within(cand: np.ndarray, ref: np.ndarray, atol: float = ATOL, rtol: float = RTOL) -> np.ndarray:
    """Elementwise agreement under the tolerance rule (NaN == NaN, inf == same inf)."""
    cand64 = np.asarray(cand, dtype=np.float64)
    ref64 = np.asarray(ref, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        close = np.abs(cand64 - ref64) <= atol + rtol * np.abs(ref64)
    both_nan = np.isnan(cand64) & np.isnan(ref64)
    same_inf = np.isinf(ref64) & (cand64 == ref64)
    return close | both_nan | same_inf


@dataclass
class Agreement:
    """How one candidate run compares with one reference run."""

    name: str
    elements: int = 0
    decision_mismatches: int = 0
    value_mismatches: int = 0
    max_abs: float = 0.0
    max_rel: float = 0.0
    stats_mismatches: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    skipped: str | None = None

    def __bool__(self) -> bool:
        return self.skipped is None and not (
            self.decision_mismatches or self.value_mismatches or self.stats_mismatches)

    @property
    def status(self) -> str:
        return "skipped" if self.skipped is not None else ("ok" if self else "MISMATCH")


def _error_maxima(cand: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    finite = np.isfinite(cand) & np.isfinite(ref)
    if not finite.any():
        return 0.0, 0.0
    c, r = cand[finite].astype(np.float64), ref[finite].astype(np.float64)
    err = np.abs(c - r)
    nonzero = r != 0
    rel = float((err[nonzero] / np.abs(r[nonzero])).max()) if nonzero.any() else 0.0
    return float(err.max()), rel


def _stat_close(cand: Any, ref: Any, atol: float, rtol: float) -> bool:
    """The tolerance rule on one number (NaN == NaN, an infinity equals only itself)."""
    return bool(within(np.float64(cand), np.float64(ref), atol, rtol))


def compare_runs(name: str, ref_output: np.ndarray, ref_delta: np.ndarray, ref_stats: Mapping[str, Any],
                 output: np.ndarray, delta: np.ndarray, stats: Mapping[str, Any],
                 atol: float = ATOL, rtol: float = RTOL) -> Agreement:
    """Compare output, delta and the shared stats of two runs."""
    result = Agreement(name, elements=int(ref_delta.size))
    result.decision_mismatches = int(((ref_delta != 0) != (delta != 0)).sum())
    for ref, cand in ((ref_output, output), (ref_delta, delta)):
        result.value_mismatches += int((~within(cand, ref, atol, rtol)).sum())
        abs_err, rel_err = _error_maxima(cand, ref)
        result.max_abs = max(result.max_abs, abs_err)
        result.max_rel = max(result.max_rel, rel_err)
    for key in EXACT_STATS:
        if key in ref_stats and key in stats and int(ref_stats[key]) != int(stats[key]):
            result.stats_mismatches[key] = (stats[key], ref_stats[key])
    for key in CLOSE_STATS:
        if key in ref_stats and key in stats and not _stat_close(stats[key], ref_stats[key], atol, rtol):
            result.stats_mismatches[key] = (stats[key], ref_stats[key])
    return result
