"""Reports: text, JSON, JUnit and HTML views of one ``SuiteResult``.

Writers only render (STYLE.md section 4): the numbers come from
``parity.diff``/``parity.suite``; the shared aggregations live in ``_view``.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from .html import write_html
from .json_report import write_json
from .junit import write_junit

if TYPE_CHECKING:
    from ..suite import SuiteResult

__all__ = ["render_text", "summary_line", "write_html", "write_json", "write_junit", "write_reports"]


def __getattr__(name: str):
    """``render_text``/``summary_line`` import rich only when asked for."""
    if name in ("render_text", "summary_line"):
        from . import text

        return getattr(text, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def write_reports(result: "SuiteResult", *, json: str | Path | None = None, junit: str | Path | None = None,
                  html: str | Path | None = None, html_all_cases: bool = False) -> dict[str, Path]:
    """Write each requested file report; returns {"json"|"junit"|"html": path} for those written."""
    written: dict[str, Path] = {}
    if json is not None:
        written["json"] = write_json(result, json)
    if junit is not None:
        written["junit"] = write_junit(result, junit)
    if html is not None:
        written["html"] = write_html(result, html, None) if html_all_cases else write_html(result, html)
    return written
