"""The browsable view: one self-contained HTML file with inline CSS and inline SVG heatmaps.

Self-contained so a CI artifact opens anywhere, offline: no scripts, fonts,
images or style sheets are fetched. The page is built as an element tree and
serialized here (void and SVG leaf elements self-closed, everything else
closed explicitly), so it is well-formed XML as well as valid HTML, and
every string from the result is escaped exactly once.
"""
from __future__ import annotations

import html as _html
import math
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

from ..atomic import write_atomic
from . import _view
from ._view import bin_xml_escape

if TYPE_CHECKING:
    from ..diff import CaseDiff, Mismatch
    from ..suite import SuiteResult

MAX_CASES = 10                   # failing cases drawn in detail (the rest: one row each); None: all
_VOID = frozenset({"meta", "br", "hr"})
_RAW_TEXT = frozenset({"style"})  # CSS is ours and holds no '<' or '&'

CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 1.6em; } h3 { font-size: 1.05em; }
table { border-collapse: collapse; margin: 0.5em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 2px 6px; vertical-align: top; }
th { background: #f2f2f2; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.fail td { background: #fde8e8; } tr.border td { background: #fff7dc; }
td.missing { background: #f8c9c9; color: #900; font-weight: bold; }
.verdict { font-weight: bold; font-size: 1.1em; padding: 0.4em 0.6em; }
.verdict.pass { background: #e3f6e3; color: #135f13; } .verdict.fail { background: #fde8e8; color: #8f1111; }
.case { border-top: 2px solid #ddd; margin-top: 1.5em; }
.heatmaps { display: flex; flex-wrap: wrap; gap: 1em; }
figure { margin: 0; } figcaption { font-size: 0.85em; color: #555; }
.legend span { display: inline-block; width: 1.2em; height: 0.9em; border: 1px solid #ccc; }
ol.path { margin: 0; padding-left: 1.2em; } .dim { color: #666; } .error { color: #8f1111; }
code { font-size: 0.95em; }
"""


def _el(tag: str, text: object = None, children: Iterable[ET.Element] = (), **attrs: object) -> ET.Element:
    """An element; attribute names use ``_`` for ``-`` and a trailing ``_`` for keywords (``class_``)."""
    el = ET.Element(tag, {k.rstrip("_").replace("_", "-"): str(v) for k, v in attrs.items() if v is not None})
    if text is not None:
        el.text = str(text)
    el.extend(children)
    return el


def _serialize(el: ET.Element, out: list[str], in_svg: bool = False) -> None:
    svg = in_svg or el.tag == "svg"
    attrs = "".join(f' {k}="{_html.escape(bin_xml_escape(v), quote=True)}"' for k, v in el.attrib.items())
    children = list(el)
    if el.tag in _VOID or (svg and not children and not el.text):
        out.append(f"<{el.tag}{attrs} />")
    else:
        text = el.text or ""
        out.append(f"<{el.tag}{attrs}>" + (text if el.tag in _RAW_TEXT else _html.escape(bin_xml_escape(text), False)))
        for child in children:
            _serialize(child, out, svg)
        out.append(f"</{el.tag}>")
    if el.tail:
        out.append(_html.escape(bin_xml_escape(el.tail), quote=False))


def render_html(result: "SuiteResult", max_cases: int | None = MAX_CASES) -> str:
    """The whole page as a string (what ``write_html`` writes)."""
    head = _el("head", children=[_el("meta", charset="utf-8"), _el("title", "darknet-parity report"),
                                 _el("style", CSS)])
    body = _el("body", children=[_el("h1", "darknet-parity report"), *_summary(result), *_search(result),
                                 *_rule(result),
                                 *_term_role(result), *_coverage(result), *_failing(result, max_cases),
                                 *_skipped(result, max_cases), _verdict(result)])
    out = ["<!DOCTYPE html>\n"]
    _serialize(_el("html", children=[head, body], lang="en"), out)
    return "".join(out) + "\n"


def write_html(result: "SuiteResult", path: str | Path, max_cases: int | None = MAX_CASES) -> Path:
    """Write the page (parents created); returns its path."""
    return write_atomic(path, render_html(result, max_cases).encode("utf-8"))


def _verdict(result: "SuiteResult") -> ET.Element:
    return _el("p", _view.verdict_text(result), class_="verdict " + ("pass" if result.passed else "fail"))


def _summary(result: "SuiteResult") -> list[ET.Element]:
    parts = [_verdict(result), _el("p", _view.summary_text(result), class_="summary")]
    run = _view.run_description(result)
    if run:
        parts.append(_el("p", f"run: {run}", class_="dim"))
    return parts


def _table(header: list[str], rows: Iterable[ET.Element], class_: str | None = None) -> ET.Element:
    head = _el("thead", children=[_el("tr", children=[_el("th", h) for h in header])])
    return _el("table", children=[head, _el("tbody", children=rows)], class_=class_)


def _row(cells: Iterable[object], class_: str | None = None, numeric: Iterable[int] = ()) -> ET.Element:
    numeric = set(numeric)
    tds = []
    for k, cell in enumerate(cells):
        if isinstance(cell, ET.Element) and cell.tag == "td":
            tds.append(cell)
        elif isinstance(cell, ET.Element):
            tds.append(_el("td", children=[cell]))
        else:
            tds.append(_el("td", cell, class_="num" if k in numeric else None))
    return _el("tr", children=tds, class_=class_)


def _rule(result: "SuiteResult") -> list[ET.Element]:
    parts = [_el("h2", "Tolerance rule"),
             _el("p", children=[_el("code", result.rule or "(not recorded)")]),
             _el("p", "Decisions (whether darknet writes a delta at all) must match exactly.", class_="dim")]
    needed = _view.needed_tolerances(result)
    if needed:
        parts.append(_el("p", "Smallest tolerance per term under which the value mismatches would have passed "
                              "(decision mismatches are not a tolerance question):"))
        rows = [_row([term, _view.fmt_num(n.get("atol")),
                      _view.fmt_num(n.get("rtol")) if n.get("rtol") is not None else "none (a zero reference differs)"],
                     numeric=(1, 2)) for term, n in needed.items()]
        parts.append(_table(["term", "atol (rtol as set)", "rtol (atol as set)"], rows, class_="needed"))
    return parts


def _term_role(result: "SuiteResult") -> list[ET.Element]:
    rows = []
    for r in _view.term_role_rows(result):
        cls = "fail" if r.failing else ("border" if r.borderline else None)
        rows.append(_row([r.term, r.role, r.elements, r.decision_mismatches, r.value_mismatches, r.borderline,
                          _view.fmt_num(r.max_abs), _view.fmt_num(r.max_rel), r.max_ulps], cls, numeric=range(2, 9)))
    header = ["term", "role", "elements", "decision mismatches", "value mismatches", "borderline", "max abs",
              "max rel", "max ulps"]
    return [_el("h2", "Term × role, all cases"), _table(header, rows, class_="term-role")]


def _coverage(result: "SuiteResult") -> list[ET.Element]:
    branches, groups, grid = _view.coverage_grid(result)
    parts = [_el("h2", "Branch coverage (cases hitting each branch)")]
    if not branches:
        return parts + [_el("p", "none recorded", class_="dim")]
    rows = []
    for branch in branches:
        cells: list[object] = [branch]
        for group in groups:
            cell = grid[(branch, group)]
            if cell.missing:
                cells.append(_el("td", "0 (never hit)", class_="missing num", title="enabled but never hit"))
            else:
                cells.append(_el("td", str(cell.count) if cell.count or cell.enabled else "–", class_="num"))
        rows.append(_row(cells))
    parts.append(_table(["branch", *groups], rows, class_="coverage"))
    for group, missing in result.missing_branches.items():
        parts.append(_el("p", f"{group}: enabled but never hit: {', '.join(missing)}", class_="error"))
    return parts


def _search(result: "SuiteResult") -> list[ET.Element]:
    """The explanation search, first: the changes that turn darknet into the candidate, with their fixes."""
    search = result.explanation
    if not search:
        return []
    items = []
    for change in search["changes"]:
        first, *rest = _view.explanation_change_lines(change)
        snippet = [line.strip() for line in rest if line.startswith("    ")]
        text = [line for line in rest if not line.startswith("    ")]
        children = [_el("p", first), *(_el("p", line, class_="dim") for line in text)]
        if snippet:
            children.append(_el("pre", "\n".join(snippet)))
        items.append(_el("li", children=children))
    return [_el("h2", _view.explanation_headline(search)), _el("ol", children=items),
            _el("p", _view.explanation_residual(search))]


def _failing(result: "SuiteResult", max_cases: int | None) -> list[ET.Element]:
    failing = result.failed
    parts = [_el("h2", f"Failing cases ({len(failing)})")]
    if not failing:
        return parts + [_el("p", "none", class_="dim")]
    shown = failing if max_cases is None else failing[:max_cases]
    rows = []
    for k, case in enumerate(failing):
        link = _el("a", case.case, href=f"#case-{k}") if k < len(shown) else case.case
        if case.error is not None:
            rows.append(_row([link, "–", "–", "–", "–", _el("td", f"error: {case.error}", class_="error")]))
            continue
        cause = _view.top_cause(case)
        rows.append(_row([link, case.decision_mismatches, case.value_mismatches, case.borderline,
                          _view.worst_term(case) or "–", _view.cause_headline(cause) if cause else "–"],
                         numeric=(1, 2, 3)))
    parts.append(_table(["case", "decision", "value", "borderline", "worst term", "top cause"], rows))
    if len(shown) < len(failing):
        parts.append(_el("p", f"Details below for the first {len(shown)}; {len(failing) - len(shown)} more are "
                              "summarized in the table (--html-all-cases draws every one; the JSON report has "
                              "them all).", class_="dim"))
    parts += [_case_section(case, k) for k, case in enumerate(shown)]
    return parts


def _skipped(result: "SuiteResult", max_cases: int | None) -> list[ET.Element]:
    skipped = [c for c in result.cases if _view.skip_reason(c) is not None]
    if not skipped:
        return []
    max_cases = len(skipped) if max_cases is None else max_cases
    rows = [_row([c.case, _view.skip_reason(c)]) for c in skipped[:max_cases]]
    parts = [_el("h2", f"Skipped cases ({len(skipped)}, not failures)"), _table(["case", "why"], rows, "skipped")]
    if len(skipped) > max_cases:
        parts.append(_el("p", f"{len(skipped) - max_cases} more skipped cases omitted.", class_="dim"))
    return parts


def _case_section(case: "CaseDiff", k: int) -> ET.Element:
    parts = [_el("h3", f"{case.case}"),
             _el("p", f"flavor {case.flavor or '?'}, delta shape {tuple(case.shape)}", class_="dim")]
    if case.error is not None:
        parts.append(_el("p", f"could not be compared: {case.error}", class_="error"))
        return _el("section", children=parts, id=f"case-{k}", class_="case")
    parts.append(_el("p", _view.case_summary(case)))
    terms = _view.heatmap_terms(case)
    if terms:
        parts.append(_el("p", "Failing mismatches per grid cell (j row, i column), summed over images and "
                              "anchors; hover a cell for its count:", class_="dim"))
        parts.append(_el("div", children=[_heatmap_figure(case, t) for t in terms], class_="heatmaps"))
    parts += _mismatch_table(case)
    parts += _causes(case)
    return _el("section", children=parts, id=f"case-{k}", class_="case")


def heat_color(count: int, top: int) -> str:
    """White for 0, then from light pink to pure red as ``count`` reaches ``top``."""
    if count <= 0 or top <= 0:
        return "#ffffff"
    g = round(225 * (1 - min(count, top) / top))
    return f"#ff{g:02x}{g:02x}"


def _ticks(n: int) -> list[int]:
    if n <= 12:
        return list(range(n))
    step = math.ceil(n / 8)
    ticks = list(range(0, n, step))
    if n - 1 - ticks[-1] >= step / 2:      # label the last row/column unless it would overlap a tick
        ticks.append(n - 1)
    return ticks


def _heatmap_figure(case: "CaseDiff", term: str) -> ET.Element:
    grid = case.heatmaps[term]
    H, W = _view.grid_size(grid)
    top = max((max(row) for row in grid if row), default=0)
    svg = heatmap_svg(grid, term, case.case)
    legend = _el("div", f"{term}: {H}×{W} grid, max {top} ", class_="legend",
                 children=[_el("span", " ", style=f"background: {heat_color(0, top)}"), _el("span", " ", style=(
                     f"background: {heat_color(max(1, top // 2), top)}")), _el("span", " ", style=(
                     f"background: {heat_color(top, top)}"))])
    return _el("figure", children=[svg, _el("figcaption", children=[legend])])


def heatmap_svg(grid: list[list[int]], term: str, case_id: str) -> ET.Element:
    """An H x W grid of rects colored by mismatch count, with axis labels and the grid size."""
    H, W = _view.grid_size(grid)
    cell = max(4, min(24, round(320 / max(H, W, 1))))
    left, top_pad, bottom = 40, 22, 34
    width, height = left + W * cell + 10, top_pad + H * cell + bottom
    top = max((max(row) for row in grid if row), default=0)
    svg = _el("svg", class_="heatmap", data_term=term, data_case=case_id, width=width, height=height,
              viewBox=f"0 0 {width} {height}", role="img", aria_label=f"{term} mismatches, {H}x{W} grid")
    svg.append(_el("text", f"{term} ({H}×{W})", x=left, y=14, font_size=12, font_weight="bold"))
    cells = _el("g", class_="cells", stroke="#d0d0d0", stroke_width="0.5")
    # One white rect for the grid, then only the cells with mismatches: a 76x76 grid stays small.
    cells.append(_el("rect", x=left, y=top_pad, width=W * cell, height=H * cell, fill=heat_color(0, top)))
    for j, row in enumerate(grid):
        for i, count in enumerate(row):
            if not count:
                continue
            rect = _el("rect", x=left + i * cell, y=top_pad + j * cell, width=cell, height=cell,
                       fill=heat_color(count, top), data_count=count, data_j=j, data_i=i)
            rect.append(_el("title", f"({j}, {i}): {count} mismatch{'es' if count != 1 else ''}"))
            cells.append(rect)
    svg.append(cells)
    labels = _el("g", class_="axes", font_size=9, fill="#444")
    for i in _ticks(W):
        labels.append(_el("text", i, x=left + i * cell + cell / 2, y=top_pad + H * cell + 11, text_anchor="middle"))
    for j in _ticks(H):
        labels.append(_el("text", j, x=left - 4, y=top_pad + j * cell + cell / 2 + 3, text_anchor="end"))
    labels.append(_el("text", "i (column)", x=left + W * cell / 2, y=height - 4, text_anchor="middle"))
    mid = top_pad + H * cell / 2
    labels.append(_el("text", "j (row)", x=10, y=mid, text_anchor="middle", transform=f"rotate(-90 10 {mid})"))
    svg.append(labels)
    return svg


def _mismatch_table(case: "CaseDiff") -> list[ET.Element]:
    if not case.mismatches:
        return [_el("p", "no mismatches listed", class_="dim")]
    header = ["kind", "image", "anchor", "cell (j, i)", "term", "role", "reference", "candidate",
              "float64 exact (closer)", "truths", "darknet's path", "borderline because"]
    rows = [_mismatch_row(m) for m in case.mismatches]
    return [_el("p", f"First mismatches ({len(case.mismatches)} listed):"), _table(header, rows, "mismatches")]


def _mismatch_row(m: "Mismatch") -> ET.Element:
    path = _el("ol", class_="path", children=[_el("li", step) for step in _view.mismatch_path(m)])
    reasons = _view.mismatch_reasons(m)
    cells: list[object] = [_view.mismatch_label(m), m.image, m.anchor, f"({m.j}, {m.i})", m.term, m.role,
                           _view.fmt_value(m.reference), _view.fmt_value(m.candidate), _view.mismatch_exact(m),
                           _view.mismatch_truths(m), _el("td", children=[path]), "; ".join(reasons) or "–"]
    return _row(cells, "border" if m.borderline else "fail")


def _causes(case: "CaseDiff") -> list[ET.Element]:
    causes = _view.ordered_causes(case)
    if not causes:
        return [_el("p", "Diagnosis: no cause identified.", class_="dim")]
    items = []
    for cause in causes:
        detail = _view.cause_detail(cause)
        children = [_el("strong", _view.cause_headline(cause))]
        if detail:
            children.append(_el("div", detail, class_="dim"))
        items.append(_el("li", children=children))
    return [_el("p", "Diagnosis:"), _el("ul", class_="causes", children=items)]
