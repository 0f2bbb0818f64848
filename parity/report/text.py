"""The terminal view of a suite result, rendered with rich.

Renders only: every number comes from the ``SuiteResult`` (and the shared
aggregations in ``_view``), so this view agrees with the JSON, JUnit and HTML
ones. All text from the result goes through ``rich.text.Text``, never through
markup, so brackets in darknet's path or an error message print as they are,
and control characters are spelled ``#xNN`` so a stray ESC cannot restyle the
terminal.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from rich import box
from rich.console import Console, Group
from rich.padding import Padding
from rich.table import Table
from rich.text import Text

from . import _view

if TYPE_CHECKING:
    from ..diff import CaseDiff, Mismatch
    from ..suite import SuiteResult

MAX_CASES = 10          # failing cases shown in detail unless verbose
MAX_MISMATCHES = 5      # mismatches shown per case unless verbose
NARROW = 110            # console width below which the wide table drops its padding


def summary_line(result: "SuiteResult") -> str:
    """Cases, passed, failed, borderline and time, in one plain line."""
    return _view.summary_text(result)


def render_text(result: "SuiteResult", *, console: Console | None = None, verbose: bool = False,
                max_cases: int = MAX_CASES, max_mismatches: int = MAX_MISMATCHES) -> None:
    """Print the report: compact by default (fits a CI log at 80 columns), everything with ``verbose``.

    The compact report leads with the verdict and the explanation (every
    cause the diagnosis named, with how many failing cases show it), then the
    term x role rows that fail, coverage in one line, and the first few
    failing cases in detail.
    """
    console = console if console is not None else Console()
    if verbose:
        _render_full(result, console)
        return
    _render_compact(result, console, min(max_cases, COMPACT_CASES), min(max_mismatches, COMPACT_MISMATCHES))


COMPACT_CASES = 3        # failing cases shown in detail by default
COMPACT_MISMATCHES = 3   # mismatches listed per case by default
COMPACT_CAUSES = 10      # distinct causes listed in the explanation
COMPACT_ROWS = 12        # failing cases listed by name


def _render_compact(result: "SuiteResult", console: Console, max_cases: int, max_mismatches: int) -> None:
    console.print(_verdict(result))
    console.print(_header(result, tolerances=False))
    failing = result.failed
    search = result.explanation
    if search:
        console.print(_search_block(search))
    if failing:
        if not (search and search["changes"]):     # the search's residual line says what remains
            console.print(_explanation(result))
        console.print(_term_role_table(result, console.width, failing_only=True))
        console.print(_errors_block(result))
        console.print(_failing_list(failing))
        comparable = [c for c in failing if c.error is None]
        for k, case in enumerate(comparable[:max_cases]):
            console.print(_case_details(case, max_mismatches, causes=False, compact=True, brief=k > 0))
        if len(comparable) > max_cases:
            console.print(_t(f"... {len(comparable) - max_cases} more failing cases not shown in detail",
                             style="yellow"))
    console.print(_coverage_line(result))
    skipped = [c for c in result.cases if _view.skip_reason(c) is not None]
    if skipped:
        console.print(_t(f"{len(skipped)} case(s) skipped (not failures): {_view.skip_reason(skipped[0])}"
                         + (" ..." if len(skipped) > 1 else ""), style="dim"))
    for note in getattr(result, "notes", []):
        console.print(_t(f"note: {note}", style="bold yellow"))
    if failing:
        console.print(_t("--verbose (or the HTML/JSON report) shows every case, mismatch and table", style="dim"))
    console.print(_verdict(result))


def _render_full(result: "SuiteResult", console: Console) -> None:
    console.print(_header(result))
    if result.explanation:
        console.print(_search_block(result.explanation))
    console.print(_explanation(result))
    console.print(_term_role_table(result, console.width))
    console.print(_coverage_table(result))
    failing = result.failed
    if failing:
        console.print(_failing_cases_table(failing))
    for case in failing:
        console.print(_case_details(case, None))
    skipped = [c for c in result.cases if _view.skip_reason(c) is not None]
    if skipped:
        console.print(_skipped_block(skipped))
    console.print(_verdict(result))
    for note in getattr(result, "notes", []):
        console.print(_t(f"note: {note}", style="bold yellow"))


def _search_block(search: dict) -> Group:
    """The explanation search: the changes that turn darknet into the candidate, each with its fix."""
    lines: list = [_t(""), _t(_view.explanation_headline(search), style="bold")]
    for k, change in enumerate(search["changes"], 1):
        first, *rest = _view.explanation_change_lines(change)
        lines.append(Padding(_t(f"{k}. {first}"), (0, 0, 0, 2)))
        lines += [Padding(_t(line, style="dim" if line.startswith("darknet") else ""), (0, 0, 0, 5))
                  for line in rest]
    lines.append(_t(_view.explanation_residual(search), style="bold green" if not search["elements_outside"]
                    else "bold yellow"))
    return Group(*lines)


def _explanation(result: "SuiteResult") -> Group | Text:
    """Every cause the diagnosis named over the run, most widespread first."""
    groups = _view.cause_groups(result)
    if not groups:
        return _t("")
    failing = len([c for c in result.failed if c.error is None])
    lines: list = [_t(""), _t(f"Why it differs ({failing} failing case(s) diagnosed):", style="bold")]
    for g in groups[:COMPACT_CAUSES]:
        lines.append(Padding(_t(f"- {g.term}: {g.message}"), (0, 0, 0, 2)))
        lines.append(Padding(_t(f"cause {g.cause}, in {g.cases} case(s), e.g. {g.first_case}", style="dim"),
                             (0, 0, 0, 4)))
    if len(groups) > COMPACT_CAUSES:
        lines.append(Padding(_t(f"... {len(groups) - COMPACT_CAUSES} more (--verbose)", style="dim"), (0, 0, 0, 2)))
    return Group(*lines)


def _errors_block(result: "SuiteResult") -> Group | Text:
    errors = _view.distinct_errors(result)
    if not errors:
        return _t("")
    lines: list = [_t(""), _t("Could not be compared:", style="bold red")]
    for message, cases in errors[:5]:
        more = f" (and {len(cases) - 1} more)" if len(cases) > 1 else ""
        lines.append(Padding(_t(f"{cases[0]}{more}: {message}", style="red"), (0, 0, 0, 2)))
    return Group(*lines)


def _failing_list(failing: list["CaseDiff"]) -> Group:
    names = [c.case for c in failing]
    shown = ", ".join(names[:COMPACT_ROWS]) + (f", ... ({len(names) - COMPACT_ROWS} more)"
                                               if len(names) > COMPACT_ROWS else "")
    return Group(_t(""), _t(f"Failing cases ({len(failing)}): ", style="bold"), Padding(_t(shown), (0, 0, 0, 2)))


def _coverage_line(result: "SuiteResult") -> Text:
    _, groups, grid = _view.coverage_grid(result)
    enabled = sum(1 for cell in grid.values() if cell.enabled)
    missing = result.missing_branches
    total = sum(len(v) for v in missing.values())
    text = f"branch coverage: {enabled - total} of {enabled} enabled branches hit over {len(groups)} group(s)"
    if missing:
        text += "; never hit: " + "; ".join(f"{g}: {', '.join(b)}" for g, b in missing.items())
        text += "" if result.coverage_fails else " (reported; --require-coverage makes it fail)"
    return _t(text, style="bold red" if result.coverage_fails else ("yellow" if missing else "dim"))


def _t(value: object, style: str = "") -> Text:
    """Result text as a rich Text: never parsed as markup, control characters made visible."""
    return Text(_view.printable(value), style=style)


def _row(table: Table, *cells: object, style: str | None = None) -> None:
    table.add_row(*(c if isinstance(c, Text) else _t(c) for c in cells), style=style)


def _titled(title: str, table: Table, note: Text | None = None) -> Group:
    """A table under a left-aligned heading; the heading is not wrapped to the table's width."""
    return Group(_t(""), _t(title, style="bold"), table, *([note] if note is not None else []))


def _header(result: "SuiteResult", tolerances: bool = True) -> Group:
    parts: list = [_t(summary_line(result), style="bold")]
    run = _view.run_description(result)
    if run:
        parts.append(_t(f"run: {run}"))
    parts.append(Text.assemble(("tolerance rule: ", "bold"), _view.printable(result.rule or "(not recorded)"),
                               "; decisions (whether darknet writes a delta) must match exactly"))
    needed = _view.needed_tolerances(result) if tolerances else None
    if needed:
        parts.append(_needed_table(needed))
    return Group(*parts)


def _needed_table(needed: dict[str, dict[str, float | None]]) -> Group:
    table = Table()
    table.add_column("term")
    table.add_column("atol (rtol as set)", justify="right")
    table.add_column("rtol (atol as set)", justify="right")
    for term, need in needed.items():
        rtol = need.get("rtol")
        _row(table, term, _view.fmt_num(need.get("atol")),
                      _view.fmt_num(rtol) if rtol is not None else "none (a zero reference differs)")
    return _titled("Smallest tolerance that would have passed the value mismatches", table,
                   _t("(decision mismatches are not a tolerance question)", style="dim"))


def _term_role_table(result: "SuiteResult", width: int, failing_only: bool = False) -> Group:
    # Nine columns: below ~110 columns drop the cell padding so numbers fit instead of being elided.
    table = Table(box=box.SQUARE, padding=(0, 0)) if width < NARROW else Table()
    for name, justify in (("term", "left"), ("role", "left"), ("elements", "right"), ("decision", "right"),
                          ("value", "right"), ("borderline", "right"), ("max abs", "right"), ("max rel", "right"),
                          ("max ulps", "right")):
        table.add_column(name, justify=justify, overflow="fold")  # type: ignore[arg-type]
    rows = _view.term_role_rows(result)
    if failing_only:
        rows = [r for r in rows if r.failing or r.borderline]
    for row in rows:
        _row(table, row.term, row.role, str(row.elements), str(row.decision_mismatches),
             str(row.value_mismatches), str(row.borderline), _view.fmt_num(row.max_abs),
             _view.fmt_num(row.max_rel), str(row.max_ulps),
             style="red" if row.failing else ("yellow" if row.borderline else None))
    note = _t("decision/value: failing mismatches; borderline ones are reported, not failures", style="dim")
    title = "Term x role rows that differ, all cases" if failing_only else "Term x role, all cases"
    return _titled(title, table, _t("no compared elements", style="dim") if not rows else note)


def _coverage_table(result: "SuiteResult") -> Group | Text:
    branches, groups, grid = _view.coverage_grid(result)
    if not branches:
        return _t("branch coverage: none recorded")
    table = Table()
    table.add_column("branch", overflow="fold")
    for group in groups:
        table.add_column(_t(group), justify="right", overflow="fold")
    for branch in branches:
        cells = []
        for group in groups:
            cell = grid[(branch, group)]
            if cell.missing:
                cells.append(_t("0 never hit", style="bold red"))
            else:
                cells.append(_t(str(cell.count) if cell.count or cell.enabled else "-"))
        _row(table, branch, *cells)
    missing = result.missing_branches
    note = None
    if missing:
        note = _t("enabled but never hit: " + "; ".join(f"{g}: {', '.join(b)}" for g, b in missing.items()),
                  style="bold red")
    return _titled("Branch coverage (cases hitting each branch)", table, note)


def _failing_cases_table(failing: list["CaseDiff"]) -> Group:
    table = Table()
    table.add_column("case", overflow="fold")
    table.add_column("decision", justify="right")
    table.add_column("value", justify="right")
    table.add_column("borderline", justify="right")
    table.add_column("worst term")
    table.add_column("top cause", overflow="fold")
    for case in failing:
        if case.error is not None:
            _row(table, case.case, "-", "-", "-", "-", _t(f"error: {case.error}", style="red"))
            continue
        cause = _view.top_cause(case)
        _row(table, case.case, str(case.decision_mismatches), str(case.value_mismatches), str(case.borderline),
                      _view.worst_term(case) or "-", _t(_view.cause_headline(cause)) if cause else "-")
    return _titled(f"Failing cases ({len(failing)})", table)


def _case_details(case: "CaseDiff", max_mismatches: int | None, causes: bool = True, compact: bool = False,
                  brief: bool = False) -> Group:
    """A failing case: counts, its first mismatches (compact: the first with darknet's path, the rest
    in one line each; ``brief``: all in one line) and its diagnosis."""
    title = Text.assemble(("FAILED ", "bold red"), (_view.printable(case.case), "bold"),
                          _view.printable(f"  flavor {case.flavor or '?'}, delta shape {tuple(case.shape)}"))
    parts: list = [_t(""), title]
    if case.error is not None:
        parts.append(Padding(_t(f"could not be compared: {case.error}", style="red"), (0, 0, 0, 2)))
        return Group(*parts)
    parts.append(Padding(_t(_view.case_summary(case)), (0, 0, 0, 2)))
    shown = case.mismatches if max_mismatches is None else case.mismatches[:max_mismatches]
    if shown:
        parts.append(Padding(_t(f"first mismatches ({len(shown)} of {len(case.mismatches)} listed):",
                                style="bold"), (0, 0, 0, 2)))
    parts += [Padding(_mismatch_line(m) if brief or (compact and k) else _mismatch_block(m), (0, 0, 0, 4))
              for k, m in enumerate(shown)]
    if causes:
        parts.append(_causes_block(case))
    return Group(*parts)


def _mismatch_line(m: "Mismatch") -> Text:
    """One mismatch in one sentence (the compact report; darknet's path is in the first and in --verbose)."""
    style = "yellow" if m.borderline else "red"
    return Text.assemble((_view.mismatch_label(m), f"bold {style}"),
                         _view.printable(f" at {_view.mismatch_where(m)}, role {m.role}: reference "
                                         f"{_view.fmt_value(m.reference)}, candidate {_view.fmt_value(m.candidate)}"))


def _mismatch_block(m: "Mismatch") -> Group:
    style = "yellow" if m.borderline else "red"
    lines = [Text.assemble((_view.mismatch_label(m), f"bold {style}"), f" at {_view.mismatch_where(m)}, ",
                           ("role ", "dim"), _view.printable(m.role)),
             _t(f"reference {_view.fmt_value(m.reference)}, candidate {_view.fmt_value(m.candidate)}, "
                f"float64 exact {_view.mismatch_exact(m)}"),
             _t(f"truths: {_view.mismatch_truths(m)}")]
    lines += [_t(f"darknet: {step}", style="dim") for step in _view.mismatch_path(m)]
    lines += [_t(f"borderline: {reason}", style="yellow") for reason in _view.mismatch_reasons(m)]
    return Group(lines[0], *(Padding(line, (0, 0, 0, 2)) for line in lines[1:]))


def _causes_block(case: "CaseDiff") -> Padding:
    causes = _view.ordered_causes(case)
    if not causes:
        return Padding(_t("diagnosis: no cause identified", style="dim"), (0, 0, 0, 2))
    lines: list = [_t("diagnosis:", style="bold")]
    for cause in causes:
        lines.append(Padding(_t("- " + _view.cause_headline(cause)), (0, 0, 0, 2)))
        detail = _view.cause_detail(cause)
        if detail:
            lines.append(Padding(_t(detail, style="dim"), (0, 0, 0, 4)))
    return Padding(Group(*lines), (0, 0, 0, 2))


def _skipped_block(skipped: list["CaseDiff"]) -> Group:
    lines: list = [_t(""), _t(f"Skipped cases ({len(skipped)}, not failures)", style="bold")]
    lines += [Padding(_t(f"{c.case}: {_view.skip_reason(c)}", style="dim"), (0, 0, 0, 2)) for c in skipped]
    return Group(*lines)


def _verdict(result: "SuiteResult") -> Text:
    return _t(_view.verdict_text(result), style="bold green" if result.passed else "bold red")
