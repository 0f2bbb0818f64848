"""Fitting a deviation's parameters from the candidate's delta: reductions, weights and thresholds.

A port's constant factors are never reported as bare numbers: a term's
factor is divided into the quantities the harness knows (batch, b*n*h*w
slots, truth-anchor pairs, pairs x classes, heads) and a *plain* constant
(one or two significant digits: 0.05, 0.5, 2, ...). A threshold is fitted as
the interval of values that reproduce every decision the candidate made, and
reported as the plainest number in it. Pure numpy: the search calls these on
the runs it already has.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .variant import REDUCTIONS

# How far apart per-case factors may be and still be one constant (float32 sums and means drift ~1e-6).
CONSISTENT_RTOL = 1e-3
# How close a factor must be to a plain constant to be that constant (0.889 is not 0.89).
PLAIN_RTOL = 1e-4


def plain(value: float, rtol: float = PLAIN_RTOL) -> float | None:
    """``value`` as a constant with one or two significant digits (0.05, 0.5, 2, 1.5), or None."""
    if not math.isfinite(value) or value == 0:
        return None
    for digits in (1, 2):
        rounded = float(f"{value:.{digits - 1}e}")
        if abs(rounded - value) <= rtol * abs(value):
            return rounded
    return None


def plainest_in(lo: float, hi: float, *, closed_lo: bool, closed_hi: bool) -> float | None:
    """The number with the fewest decimals in the interval (lo, hi) (ends closed as asked), nearest its middle."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo > hi:
        return None

    def inside(v: float) -> bool:
        return (v > lo or (closed_lo and v == lo)) and (v < hi or (closed_hi and v == hi))

    mid = (lo + hi) / 2
    for decimals in range(0, 8):
        step = 10.0 ** -decimals
        for base in (round(mid / step) * step, math.floor(mid / step) * step, math.ceil(mid / step) * step):
            for v in sorted({round(base + k * step, decimals) for k in (-1, 0, 1)}, key=lambda v: abs(v - mid)):
                if inside(v):
                    return v
    return mid if inside(mid) else None


@dataclass(frozen=True)
class TermFactor:
    """A term's fitted factor: ``weight / quantity`` (a known count), over the cfg's normalizer if ignored."""

    reduction: str = "sum"
    weight: float = 1.0
    factored: bool = True      # False: no known quantity and plain constant explain the per-case factors
    normalizer_ignored: bool = False   # the cfg's iou_normalizer / obj_normalizer is left out

    @property
    def is_darknet(self) -> bool:
        return self.reduction == "sum" and self.weight == 1.0 and not self.normalizer_ignored

    def multiplier(self, quantities: dict[str, float]) -> float:
        """The factor on darknet's term for a case with these counts (``"normalizer"``: the cfg's)."""
        divisor = quantities.get(self.reduction, 1) * (quantities.get("normalizer", 1.0)
                                                        if self.normalizer_ignored else 1.0)
        return self.weight / divisor


DARKNET_FACTOR = TermFactor()


def case_ratio(candidate: np.ndarray, model: np.ndarray) -> float | None:
    """The factor between the candidate's and the model's written elements (a robust median), or None."""
    use = (model != 0) & (candidate != 0) & np.isfinite(candidate) & np.isfinite(model) & (np.abs(model) > 1e-7)
    if not use.any():
        return None
    return float(np.median(candidate[use].astype(np.float64) / model[use].astype(np.float64)))


def fit_factor(ratios: Sequence[float | None], quantities: Sequence[dict[str, float]]) -> TermFactor:
    """The reduction and plain weight that explain every case's factor ``ratio = weight / quantity``.

    Candidates are every known quantity, with and without the cfg's
    normalizer (``quantities[k]["normalizer"]``: a port that ignores it);
    one fits when ``ratio * quantity`` is the same constant in every case.
    Among fitting ones: weight exactly 1 first (a plain mean or sum), then a
    plain weight; darknet's own normalizer before an ignored one; then the
    order of ``REDUCTIONS``. When none fits, the closest one, unfactored.
    """
    pairs = [(r, q) for r, q in zip(ratios, quantities) if r is not None and math.isfinite(r) and r != 0]
    if not pairs:
        return DARKNET_FACTOR
    best: tuple[tuple[int, ...], TermFactor] | None = None
    spreads: list[tuple[float, int, str, bool, float]] = []
    normalizers = {q.get("normalizer", 1.0) for _, q in pairs}
    for ignored in (False, True):
        if ignored and normalizers == {1.0}:
            continue
        for rank, kind in enumerate(REDUCTIONS):     # their order breaks ties ("sum" is darknet's)
            if any(kind not in q for _, q in pairs):
                continue
            weights = np.array([r * q[kind] * (q.get("normalizer", 1.0) if ignored else 1.0) for r, q in pairs],
                               dtype=np.float64)
            center = float(np.median(weights))
            spread = float(np.max(np.abs(weights - center)) / abs(center))
            spreads.append((spread, rank, kind, ignored, center))
            agree = np.abs(weights - center) <= CONSISTENT_RTOL * abs(center)
            if agree.mean() < 0.5:      # most cases must agree (others may hold a deviation not yet found)
                continue
            snapped = plain(center)
            if snapped is None:
                continue
            parts = int(kind != "sum") + int(ignored)
            score = (int(not agree.all()), 0 if snapped == 1.0 else 1, parts, int(kind == "heads"), int(ignored),
                     rank)
            if best is None or score < best[0]:
                best = (score, TermFactor(kind, snapped, normalizer_ignored=ignored))
    if best is not None:
        return best[1]
    spread, _, kind, ignored, center = min(spreads)
    snapped = plain(center, rtol=1e-2)
    if kind == "sum" and not ignored and snapped == 1.0:
        return DARKNET_FACTOR
    return TermFactor(kind, snapped if snapped is not None else center, factored=False, normalizer_ignored=ignored)


def threshold_interval(values_kept: np.ndarray, values_cut: np.ndarray) -> tuple[float, float] | None:
    """The interval [lo, hi) of t with ``kept <= t < cut`` for every value (a ``value > t`` test), or None."""
    lo = float(values_kept.max()) if values_kept.size else -math.inf
    hi = float(values_cut.min()) if values_cut.size else math.inf
    if lo >= hi:
        return None
    return lo, hi


def fit_threshold(values_kept: np.ndarray, values_cut: np.ndarray, *, lower: float = 0.0,
                  upper: float = 1.0) -> float | None:
    """The plainest t with ``value > t`` true exactly for ``values_cut`` (clipped to [lower, upper])."""
    interval = threshold_interval(values_kept, values_cut)
    if interval is None:
        return None
    lo, hi = max(interval[0], lower), min(interval[1], upper)
    return plainest_in(lo, hi, closed_lo=True, closed_hi=False)


def fit_ratio_limit(values_in: np.ndarray, values_out: np.ndarray, *, upper: float = 100.0) -> float | None:
    """The plainest K with ``value < K`` true exactly for ``values_in`` (a ratio rule's limit)."""
    lo = float(values_in.max()) if values_in.size else 1.0
    hi = float(values_out.min()) if values_out.size else upper
    if lo >= hi:
        return None
    return plainest_in(lo, hi, closed_lo=False, closed_hi=True)
