"""Reports that fit (issue 10): a failing 120-case run reads in a CI log; HTML stays small."""
from __future__ import annotations

import io

import pytest
from rich.console import Console

from parity.cases import suite_refs
from parity.plugin import render_report
from parity.report.html import render_html
from parity.report.text import render_text
from parity.suite import RunOptions, run_suite


@pytest.fixture(scope="module")
def failing_run():
    # The textbook loss over 40 yolov4 samples (120 cases): most fail, for many reasons.
    result = run_suite(suite_refs(["yolov4"], [], [], 40, 0), RunOptions(candidate="naive"))
    assert len(result.cases) == 120 and len(result.failed) > 60
    return result


def _text(result, width=80, verbose=False) -> str:
    out = io.StringIO()
    render_text(result, console=Console(file=out, width=width, no_color=True), verbose=verbose)
    return out.getvalue()


def test_the_default_text_report_fits_150_lines_at_80_columns(failing_run):
    text = _text(failing_run)
    lines = text.splitlines()
    assert len(lines) <= 150, len(lines)
    assert max(map(len, lines)) <= 80
    assert lines[0].startswith("MISMATCH") and lines[-1].startswith("MISMATCH")
    assert "Why it differs" in text and "--verbose" in text
    assert "never hit" not in text or "branch coverage:" in text     # coverage is one line, not a table


def test_verbose_shows_everything(failing_run):
    full = _text(failing_run, verbose=True)
    assert len(full.splitlines()) > 3 * len(_text(failing_run).splitlines())
    assert all(c.case in full for c in failing_run.failed)


def test_the_default_html_stays_under_3_mb_and_all_cases_is_a_choice(failing_run):
    small, full = render_html(failing_run), render_html(failing_run, None)
    assert len(small.encode()) <= 3 * 2**20, len(small)
    assert len(full) > len(small)
    assert all(c.case in small for c in failing_run.failed)          # every case still has its row


def test_a_failing_plugin_check_prints_a_compact_report(failing_run):
    report = render_report(failing_run)
    assert len(report.splitlines()) <= 150
