"""Plain-text rendering of agreement results (one view of the same objects)."""
from __future__ import annotations

from typing import Sequence

from .diff import Agreement
from .tolerance import ATOL, RTOL


def agreement_table(results: Sequence[Agreement], title: str) -> str:
    """A table of cases plus a totals line that states the tolerance rule."""
    lines = [title, f"{'case':52s} {'status':9s} {'decisions':>9s} {'values':>7s} {'max abs':>10s} {'max rel':>10s}"]
    for r in results:
        name = r.name if len(r.name) <= 52 else "..." + r.name[-49:]
        if r.skipped is not None:
            lines.append(f"{name:52s} {'skipped':9s} {r.skipped}")
            continue
        extra = f"  stats: {r.stats_mismatches}" if r.stats_mismatches else ""
        extra += f"  error: {r.error}" if r.error else ""
        extra += f"  ({r.borderline} borderline)" if r.borderline else ""
        extra += f"  ({r.ofast_drift} within -Ofast drift)" if r.ofast_drift else ""
        lines.append(f"{name:52s} {r.status:9s} {r.decision_mismatches:9d} {r.value_mismatches:7d} "
                     f"{r.max_abs:10.3g} {r.max_rel:10.3g}{extra}")
    lines.append(totals_line(results))
    return "\n".join(lines)


def totals_line(results: Sequence[Agreement]) -> str:
    ran = [r for r in results if r.skipped is None]
    failed = [r for r in ran if not r]
    max_abs = max((r.max_abs for r in ran), default=0.0)
    max_rel = max((r.max_rel for r in ran), default=0.0)
    return (f"{len(ran)} compared, {len(failed)} mismatched, {len(results) - len(ran)} skipped; "
            f"max abs error {max_abs:.3g}, max rel error {max_rel:.3g}; "
            f"rule |cand - ref| <= {ATOL:g} + {RTOL:g}*|ref|, decisions exact")
