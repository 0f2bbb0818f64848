"""Shared test plumbing: print the measured agreement maxima after the run."""
from __future__ import annotations

import pytest
import torch

from measured import MAXIMA, record

# The suite's cases are small: a thread pool costs more than it saves on them (3x on 2 cores), and
# results do not depend on the thread count (test_properties.test_results_do_not_depend_on_threads).
torch.set_num_threads(1)


def pytest_sessionfinish(session):
    """In a pytest-xdist worker: hand this worker's maxima to the controller."""
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:
        workeroutput["parity_maxima"] = dict(MAXIMA)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error):
    """In the pytest-xdist controller: fold each worker's maxima into the summary's."""
    for label, (max_abs, max_rel) in getattr(node, "workeroutput", {}).get("parity_maxima", {}).items():
        record(label, max_abs, max_rel)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not MAXIMA:
        return
    terminalreporter.section("measured agreement maxima (rule: 1e-5 + 1e-4*|reference|)")
    for label, (max_abs, max_rel) in sorted(MAXIMA.items()):
        terminalreporter.write_line(f"{label}: max abs error {max_abs:.3g}, max rel error {max_rel:.3g}")
