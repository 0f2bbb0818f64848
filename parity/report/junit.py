"""The CI view: one JUnit XML test suite, a test case per parity case plus branch coverage.

Written with ``xml.etree.ElementTree`` like pytest's junitxml; every string
from the result first goes through ``bin_xml_escape``, because an error
message can carry control characters that XML 1.0 cannot hold at all.
"""
from __future__ import annotations

import io
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import TYPE_CHECKING

from ..atomic import write_atomic
from . import _view
from ._view import bin_xml_escape

if TYPE_CHECKING:
    from ..diff import CaseDiff
    from ..suite import SuiteResult

__all__ = ["bin_xml_escape", "build_junit", "write_junit"]

SUITE_NAME = "darknet-parity"
MESSAGE_LIMIT = 1000     # failure messages are shown on one line by most CI front ends


def _short(text: str) -> str:
    return text if len(text) <= MESSAGE_LIMIT else text[: MESSAGE_LIMIT - 3] + "..."


def _case_time(case: "CaseDiff") -> str:
    """Seconds spent on the case when the run recorded them (CaseDiff has no field for it)."""
    seconds = (case.meta or {}).get("seconds", 0.0)
    return f"{float(seconds):.3f}" if isinstance(seconds, (int, float)) else "0.000"


def _testcase(case: "CaseDiff", groups: list[str]) -> ET.Element:
    group = _view.group_of_case(case, groups)
    el = ET.Element("testcase", classname=bin_xml_escape(f"{SUITE_NAME}.{group}"),
                    name=bin_xml_escape(case.case), time=_case_time(case))
    details = bin_xml_escape("\n".join(_view.case_detail_lines(case)))
    if case.error is not None:
        err = ET.SubElement(el, "error", message=bin_xml_escape(_short(_view.case_summary(case))))
        err.text = details
    elif _view.skip_reason(case) is not None:
        ET.SubElement(el, "skipped", message=bin_xml_escape(_short(str(_view.skip_reason(case)))))
    elif not case.passed:
        fail = ET.SubElement(el, "failure", message=bin_xml_escape(_short(_view.case_summary(case))))
        fail.text = details
    elif case.borderline or getattr(case, "ofast_drift", 0):
        out = ET.SubElement(el, "system-out")
        words = [f"{case.borderline} borderline mismatches"] if case.borderline else []
        words += [f"{case.ofast_drift} elements within -Ofast drift"] if getattr(case, "ofast_drift", 0) else []
        out.text = bin_xml_escape(f"{', '.join(words)} (reported, not failures)")
    return el


def _coverage_testcase(result: "SuiteResult") -> ET.Element:
    el = ET.Element("testcase", classname=f"{SUITE_NAME}.coverage", name="branch-coverage", time="0.000")
    missing = result.missing_branches
    if missing and not result.coverage_fails:   # reported, not required (--require-coverage)
        total = sum(len(b) for b in missing.values())
        ET.SubElement(el, "skipped", message=bin_xml_escape(
            _short(f"{total} enabled branches never hit (reported; not required: --require-coverage)")))
    elif missing:
        lines = [f"{group}: {', '.join(branches)}" for group, branches in missing.items()]
        total = sum(len(b) for b in missing.values())
        fail = ET.SubElement(el, "failure", message=bin_xml_escape(
            _short(f"{total} enabled branches never hit: " + "; ".join(lines))))
        fail.text = bin_xml_escape("branches a group's configs enable but no case of the group reached:\n"
                                   + "\n".join(lines))
    return el


def build_junit(result: "SuiteResult") -> ET.Element:
    """The ``<testsuites>`` tree (one ``<testsuite>``) for ``result``."""
    counts = _view.counts(result)
    missing = 1 if result.coverage_fails else 0
    reported = 1 if result.missing_branches and not missing else 0
    attrs = {"name": SUITE_NAME, "tests": str(counts.cases + 1), "failures": str(counts.failed + missing),
             "errors": str(counts.errors), "skipped": str(counts.skipped + reported),
             "time": f"{result.seconds:.3f}"}
    root = ET.Element("testsuites", attrs)
    suite = ET.SubElement(root, "testsuite", attrs)
    props = ET.SubElement(suite, "properties")
    ET.SubElement(props, "property", name="tolerance_rule", value=bin_xml_escape(result.rule or "(not recorded)"))
    run = _view.run_description(result)
    if run:
        ET.SubElement(props, "property", name="run", value=bin_xml_escape(run))
    ET.SubElement(props, "property", name="verdict", value=bin_xml_escape(_view.verdict_text(result)))
    groups = sorted(set(result.coverage) | set(result.enabled))
    for case in result.cases:
        suite.append(_testcase(case, groups))
    suite.append(_coverage_testcase(result))
    return root


def write_junit(result: "SuiteResult", path: str | Path) -> Path:
    """Write the JUnit XML file (parents created); returns its path."""
    tree = ET.ElementTree(build_junit(result))
    ET.indent(tree, space=" ")
    buffer = io.BytesIO()
    tree.write(buffer, encoding="utf-8", xml_declaration=True)
    return write_atomic(path, buffer.getvalue())
