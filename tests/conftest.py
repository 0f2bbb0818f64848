"""Shared test plumbing: print the measured agreement maxima after the run."""
from __future__ import annotations

from measured import MAXIMA


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not MAXIMA:
        return
    terminalreporter.section("measured agreement maxima (rule: 1e-5 + 1e-4*|reference|)")
    for label, (max_abs, max_rel) in sorted(MAXIMA.items()):
        terminalreporter.write_line(f"{label}: max abs error {max_abs:.3g}, max rel error {max_rel:.3g}")
