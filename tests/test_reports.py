"""Reports are views of one SuiteResult: each must show the same facts, and files must be well formed.

The results are built by hand (made-up numbers) so these tests pin the
writers alone, not the diff, the diagnosis or the profiles.
"""
from __future__ import annotations

import io
import json
import re
import shutil
import struct
import subprocess
import xml.etree.ElementTree as ET
import zlib
from html.parser import HTMLParser

import pytest
from rich.console import Console

from parity.diff import CaseDiff, Cell, Mismatch
from parity.report import render_text, summary_line, write_html, write_json, write_junit, write_reports
from parity.report.html import heat_color, render_html
from parity.report.junit import bin_xml_escape
from parity.suite import SuiteResult

RULE = "|cand - ref| <= 1e-05 + 0.0001*|ref| [tolerances.yaml]"
OBJ_CAUSE = "objectness delta carries an extra sigmoid' factor p*(1-p)"
# A heatmap of 3 rows (j) x 4 columns (i): counts 0..3, so the color scale is exercised.
OBJ_HEAT = [[0, 1, 0, 0], [0, 3, 2, 0], [0, 0, 0, 1]]
X_HEAT = [[0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0]]


def _rule_dict() -> dict:
    return {"default": {"atol": 1e-5, "rtol": 1e-4}, "terms": {}, "source": "tolerances.yaml"}


def passing_case() -> CaseDiff:
    """Every element agrees; one borderline decision (reported, not a failure)."""
    cells = [Cell("obj", "negative", 90, 90, max_abs=1e-7, max_rel=2e-7, max_ulps=1),
             Cell("obj", "ignored", 6, 0, borderline=1),
             Cell("x", "best", 2, 2, max_abs=3e-8, max_rel=1e-7, max_ulps=2)]
    return CaseDiff("smoke#0", "alexeyab", (1, 18, 3, 4), _rule_dict(), cells=cells, borderline=1,
                    branches={"ignore": 1, "truth_thresh": 0})


def failing_case() -> CaseDiff:
    """7 obj mismatches (2 decisions, 5 values) and one x value mismatch, with heatmaps and causes."""
    cells = [Cell("obj", "negative", 90, 90, value_mismatches=5, max_abs=0.0125, max_rel=0.8, max_ulps=123456),
             Cell("obj", "ignored", 6, 0, decision_mismatches=2, max_abs=0.25, max_rel=0.0, max_ulps=999),
             Cell("x", "best", 2, 2, value_mismatches=1, max_abs=2e-3, max_rel=0.01, max_ulps=4000)]
    decision = Mismatch("decision", 0, 1, 1, 2, "obj", 4, 0.0, -0.25, "ignored", False,
                        context={"role": "ignored", "pred": [0.5, 0.4, 0.1, 0.2], "best_iou": 0.71,
                                 "best_truth": 0, "max_class_prob": None, "truths": [],
                                 "borderline": [], "path": ["best IoU 0.71 (truth 0 <x=0.5>)",
                                                            "IoU > ignore_thresh 0.7: ignored"]})
    value = Mismatch("value", 0, 0, 1, 1, "obj", 4, -0.4375, -0.4250, "negative", False, exact=-0.43750001,
                     closer="reference",
                     context={"role": "negative", "best_iou": 0.0, "best_truth": None, "truths": [2],
                              "path": ["IoU <= ignore_thresh 0.7: negative, objectness delta obj_normalizer*(0 - p)"],
                              "borderline": []})
    border = Mismatch("decision", 0, 1, 2, 3, "obj", 4, 0.0, 0.1, "ignored", True,
                      context={"borderline": ["best IoU 0.700001 is within tolerance of ignore_thresh 0.7"],
                               "path": ["[bracketed] step"]})
    causes = [{"term": "x", "cause": "scale_x_y", "message": "x ignores scale_x_y", "confidence": 0.3,
               "evidence": {"ratio": 1.05}},
              {"term": "obj", "cause": "sigmoid_prime", "message": OBJ_CAUSE, "confidence": 0.9,
               "evidence": "candidate/reference = p*(1-p) within 1e-6 at 5 of 5 slots"}]
    return CaseDiff("smoke#1", "alexeyab", (1, 18, 3, 4), _rule_dict(), cells=cells, decision_mismatches=2,
                    value_mismatches=6, borderline=1, mismatches=[decision, value, border],
                    needed={"obj": {"atol": 0.0125, "rtol": 0.79}, "x": {"atol": 2e-3, "rtol": None}},
                    heatmaps={"obj": OBJ_HEAT, "x": X_HEAT}, branches={"ignore": 1, "truth_thresh": 0},
                    causes=causes)


def error_case() -> CaseDiff:
    """The candidate raised; its message carries a control character illegal in XML and markup-like text."""
    broken = CaseDiff("smoke#2", "alexeyab", (1, 18, 3, 4), _rule_dict())
    broken.error = "candidate raised ValueError: bad \x1b[31mshape\x1b[0m <[1, 18]> & more"
    return broken


def make_result(cases: list[CaseDiff] | None = None) -> SuiteResult:
    """Three cases of one profile; the profile enables truth_thresh but no case hits it."""
    cases = cases if cases is not None else [passing_case(), failing_case(), error_case()]
    return SuiteResult(cases, coverage={"smoke": {"ignore": 2, "truth_thresh": 0}},
                       enabled={"smoke": ["ignore", "truth_thresh"]},
                       options={"candidate": "examples.port:loss", "reference": "c"}, rule=RULE, seconds=1.25)


def passing_result() -> SuiteResult:
    return SuiteResult([passing_case()], coverage={"smoke": {"ignore": 1}}, enabled={"smoke": ["ignore"]},
                       rule=RULE, seconds=0.5)


def render(result: SuiteResult, width: int = 120, verbose: bool = False) -> str:
    console = Console(record=True, width=width, file=io.StringIO(), color_system=None)
    render_text(result, console=console, verbose=verbose)
    return console.export_text()


def flat(text: str) -> str:
    """Whitespace collapsed, so words wrapped by the console still match."""
    return " ".join(text.split())


class TestText:
    def test_summary_line_counts_cases_and_borderline(self):
        line = summary_line(make_result())
        assert line.startswith("3 cases: 1 passed, 1 failed, 1 could not be compared")
        assert "2 borderline mismatches in 2 cases" in line
        assert "1.25 s" in line

    def test_shows_rule_and_needed_tolerance(self):
        text = flat(render(make_result()))
        assert RULE in text
        assert "Smallest tolerance" in text
        assert re.search(r"obj[\s│]+0\.0125[\s│]+0\.79", text)
        assert "none (a zero reference differs)" in text     # x: rtol alone cannot pass

    def test_term_role_rows_aggregate_over_cases(self):
        lines = render(make_result()).splitlines()
        # obj x ignored: 6 + 6 elements, 2 decision mismatches, 1 borderline, max abs 0.25, max ulps 999
        row = [ln for ln in lines if re.search(r"\bobj\s+\S\s+ignored\b|\bobj\s+ignored\b", ln)]
        assert row, "no obj/ignored row"
        assert re.search(r"ignored\s+\S?\s*12\s+\S?\s*2\s+\S?\s*0\s+\S?\s*1\s+\S?\s*0\.25\s+\S?\s*0\s+\S?\s*999",
                         row[0])
        assert any(re.search(r"\bx\b.*\bbest\b.*\b4\b.*\b0\b.*\b1\b", ln) for ln in lines)

    def test_failing_case_details_and_causes(self):
        text = render(make_result())
        words = flat(text)
        assert "smoke#1" in words and "smoke#2" in words
        assert OBJ_CAUSE in words
        assert words.index(OBJ_CAUSE) < words.index("x ignores scale_x_y")   # most confident first
        assert "cell (j=1, i=2)" in words and "role ignored" in words
        assert "float64 exact -0.43750001 (closer: reference)" in words
        assert "IoU > ignore_thresh 0.7: ignored" in words
        assert "assigned truth 2" in words
        assert "best IoU 0.700001 is within tolerance of ignore_thresh 0.7" in words
        assert "[bracketed] step" in words                                  # not eaten as markup
        assert "<[1, 18]> & more" in words
        assert "#x1B[31mshape" in words and "\x1b" not in text             # a raw ESC would restyle the terminal

    def test_coverage_marks_missing_branch(self):
        text = flat(render(make_result()))
        assert "truth_thresh" in text and "never hit" in text
        assert "enabled but never hit: smoke: truth_thresh" in text

    def test_verdict_lines(self):
        # a case that could not be compared makes the verdict an ERROR (the CLI exits 2)
        assert "ERROR: 2 of 3 cases failed (1 could not be compared)" in flat(render(make_result()))
        strict = make_result()
        strict.require_coverage = True       # missing coverage fails the verdict only where asked for
        assert "ERROR: 2 of 3 cases failed (1 could not be compared); 1 enabled branches never hit" in \
            flat(render(strict))
        assert "PARITY: all 1 compared cases match" in flat(render(passing_result()))

    @pytest.mark.parametrize("width", [80, 100, 200])
    def test_any_width_without_color(self, width):
        out = io.StringIO()
        render_text(make_result(), console=Console(file=out, width=width, no_color=True), verbose=True)
        text = out.getvalue()
        assert "\x1b" not in text              # no color codes, and the error message's ESC is made visible
        assert "#x1B[31mshape" in text
        assert max(map(len, text.splitlines())) <= width
        assert "ERROR: 2 of 3 cases failed" in text

    def test_cap_on_failing_cases(self):
        many = make_result([failing_case() for _ in range(4)])
        console = Console(record=True, width=120, file=io.StringIO())
        render_text(many, console=console, max_cases=2)
        assert "2 more failing cases not shown" in console.export_text()


class TestJson:
    def test_round_trip(self, tmp_path):
        result = make_result()
        back = SuiteResult.load(write_json(result, tmp_path / "out" / "result.json"))
        assert len(back.cases) == 3
        assert [c.passed for c in back.cases] == [True, False, False]
        assert [c.decision_mismatches for c in back.cases] == [0, 2, 0]
        assert back.cases[1].heatmaps == result.cases[1].heatmaps
        assert back.cases[1].mismatches[1].exact == pytest.approx(-0.43750001)
        assert back.cases[2].error == result.cases[2].error
        assert back.missing_branches == {"smoke": ["truth_thresh"]}
        assert back.rule == RULE and back.seconds == 1.25

    def test_stable_bytes(self, tmp_path):
        a = write_json(make_result(), tmp_path / "a.json").read_bytes()
        b = write_json(SuiteResult.load(tmp_path / "a.json"), tmp_path / "b.json").read_bytes()
        assert a == b
        assert json.loads(a)["passed"] is False


class TestJunit:
    @pytest.fixture()
    def root(self, tmp_path) -> ET.Element:
        result = make_result()
        result.require_coverage = True
        return ET.parse(write_junit(result, tmp_path / "junit.xml")).getroot()

    def test_coverage_not_required_is_a_skipped_testcase(self, tmp_path):
        root = ET.parse(write_junit(make_result(), tmp_path / "j.xml")).getroot()
        cases = {tc.get("name"): tc for tc in root.iter("testcase")}
        assert cases["branch-coverage"].find("failure") is None
        assert "never hit" in cases["branch-coverage"].find("skipped").get("message")
        assert root.find("testsuite").get("failures") == "1"

    def test_counts(self, root):
        suite = root.find("testsuite")
        assert suite.get("name") == "darknet-parity"
        # 3 cases + branch-coverage; failures: smoke#1 and coverage; errors: smoke#2
        assert (suite.get("tests"), suite.get("failures"), suite.get("errors"), suite.get("skipped")) == \
            ("4", "2", "1", "0")
        assert float(suite.get("time")) == 1.25
        assert len(suite.findall("testcase")) == 4

    def test_testcases_and_failure_message(self, root):
        cases = {tc.get("name"): tc for tc in root.iter("testcase")}
        assert cases["smoke#0"].get("classname") == "darknet-parity.smoke"
        assert cases["smoke#0"].find("failure") is None
        message = cases["smoke#1"].find("failure").get("message")
        assert "smoke#1" in message and "worst term obj" in message
        assert "2 decision mismatches, 6 value mismatches" in message and OBJ_CAUSE in message
        assert "IoU > ignore_thresh 0.7: ignored" in cases["smoke#1"].find("failure").text
        assert cases["smoke#2"].find("error") is not None and cases["smoke#2"].find("failure") is None
        coverage = cases["branch-coverage"].find("failure")
        assert coverage is not None and "truth_thresh" in coverage.get("message")

    def test_illegal_xml_characters_escaped(self, root, tmp_path):
        error = {tc.get("name"): tc for tc in root.iter("testcase")}["smoke#2"].find("error")
        assert "#x1B[31mshape" in error.get("message") and "<[1, 18]> & more" in error.get("message")
        assert "\x1b" not in (tmp_path / "junit.xml").read_text()
        assert bin_xml_escape("a\x00b\x0bc\ud800\tok") == "a#x00b#x0Bc#xD800\tok"

    def test_passing_suite_has_no_failures(self, tmp_path):
        suite = ET.parse(write_junit(passing_result(), tmp_path / "j.xml")).getroot().find("testsuite")
        assert (suite.get("tests"), suite.get("failures"), suite.get("errors")) == ("2", "0", "0")


class _Collect(HTMLParser):
    """Tags and attributes, to check the page is plain HTML too (not just XML)."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    handle_startendtag = handle_starttag


def _green(fill: str) -> int:
    assert re.fullmatch(r"#[0-9a-f]{6}", fill), fill
    return int(fill[3:5], 16)


class TestHtml:
    @pytest.fixture()
    def page(self, tmp_path) -> str:
        return write_html(make_result(), tmp_path / "report.html").read_text(encoding="utf-8")

    @pytest.fixture()
    def tree(self, page) -> ET.Element:
        assert page.startswith("<!DOCTYPE html>")
        return ET.fromstring(page.split("\n", 1)[1])

    def test_self_contained(self, page):
        for needle in ("http://", "https://", "src=", "url(", "@import", "<link", "<script", "<img"):
            assert needle not in page.lower()
        parser = _Collect()
        parser.feed(page)
        hrefs = [a["href"] for tag, a in parser.tags if "href" in a]
        assert hrefs and all(h.startswith("#") for h in hrefs)

    def test_summary_rule_tables(self, tree):
        text = flat(" ".join(tree.itertext()))
        assert "ERROR: 2 of 3 cases failed" in text and RULE in text
        assert "smoke: enabled but never hit: truth_thresh" in text
        assert OBJ_CAUSE in text and "x ignores scale_x_y" in text
        assert "could not be compared" in text and "#x1B[31mshape" in text
        rows = [[flat("".join(td.itertext())) for td in tr.findall("td")]
                for tr in tree.iter("tr") if tr.findall("td")]
        assert ["obj", "ignored", "12", "2", "0", "1", "0.25", "0", "999"] in rows
        missing = [td for td in tree.iter("td") if "missing" in td.get("class", "")]
        assert len(missing) == 1

    def test_one_heatmap_per_failing_term(self, tree):
        svgs = [s for s in tree.iter("svg") if s.get("class") == "heatmap"]
        assert sorted((s.get("data-case"), s.get("data-term")) for s in svgs) == [("smoke#1", "obj"),
                                                                                 ("smoke#1", "x")]
        for svg in svgs:
            rects = [r for r in svg.iter("rect") if r.get("data-count") is not None]
            assert len(rects) == 3 * 4 == len(list(svg.iter("rect")))
            assert any("(1, 1): " in (r.findtext("title") or "") for r in rects)
            assert "3×4" in "".join(svg.itertext())

    def test_heatmap_colors_follow_counts(self, tree):
        svg = next(s for s in tree.iter("svg") if s.get("data-term") == "obj")
        rects = list(svg.iter("rect"))
        counts = [[int(r.get("data-count")) for r in rects][k * 4:(k + 1) * 4] for k in range(3)]
        assert counts == OBJ_HEAT
        by_count = sorted((int(r.get("data-count")), _green(r.get("fill"))) for r in rects)
        greens = [g for _, g in by_count]
        assert greens == sorted(greens, reverse=True)                   # redder as the count grows
        assert dict(by_count)[0] == 255 and dict(by_count)[3] == 0
        assert next(r for r in rects if r.get("data-count") == "3").findtext("title") == "(1, 1): 3 mismatches"
        assert heat_color(1, 3) != heat_color(2, 3) != heat_color(3, 3)

    def test_case_cap_says_how_many_omitted(self):
        page = render_html(make_result([failing_case() for _ in range(5)]), max_cases=2)
        assert page.count('class="heatmap"') == 2 * 2
        assert "3 more failing cases omitted" in page

    def test_passing_suite(self, tmp_path):
        page = write_html(passing_result(), tmp_path / "p.html").read_text()
        ET.fromstring(page.split("\n", 1)[1])
        assert "PARITY" in page and 'class="heatmap"' not in page


def test_empty_result_renders_everywhere(tmp_path):
    """A suite with no cases (e.g. an empty shard) still gives a verdict in every view."""
    empty = SuiteResult(rule=RULE)
    assert "PARITY: all 0 compared cases" in flat(render(empty))
    written = write_reports(empty, json=tmp_path / "e.json", junit=tmp_path / "e.xml", html=tmp_path / "e.html")
    assert SuiteResult.load(written["json"]).cases == []
    assert ET.parse(written["junit"]).getroot().find("testsuite").get("tests") == "1"
    ET.fromstring(written["html"].read_text().split("\n", 1)[1])


def test_markup_in_case_ids_is_escaped(tmp_path):
    """A recorded case's path can hold <, &, quotes and rich markup; every view shows it verbatim."""
    odd = failing_case()
    odd.case = 'cases/[bold]a<b>&"c".npz'
    result = make_result([odd])
    assert odd.case in render(result)
    junit = ET.parse(write_junit(result, tmp_path / "j.xml")).getroot()
    assert [tc.get("name") for tc in junit.iter("testcase")] == [odd.case, "branch-coverage"]
    assert [tc.get("classname") for tc in junit.iter("testcase")][0] == "darknet-parity.cases"
    tree = ET.fromstring(write_html(result, tmp_path / "h.html").read_text().split("\n", 1)[1])
    assert {s.get("data-case") for s in tree.iter("svg")} == {odd.case}


def test_skipped_case_is_neither_passed_nor_failed(tmp_path):
    """A case the harness chose not to compare shows its reason and counts as skipped in every view."""
    skipped = CaseDiff("recorded/nan_input.npz", "alexeyab", (1, 18, 3, 4), _rule_dict())
    skipped.skipped = "recorded by darknet's -Ofast build on NaN input"     # set after construction on purpose
    result = SuiteResult([passing_case(), skipped], coverage={"smoke": {"ignore": 1}}, enabled={"smoke": ["ignore"]},
                         rule=RULE)
    assert summary_line(result).startswith("2 cases: 1 passed, 0 failed, 1 skipped")
    text = flat(render(result))
    assert "Skipped cases (1, not failures)" in text and "-Ofast build on NaN input" in text
    assert "PARITY: all 1 compared cases match darknet under the tolerance rule (1 skipped)" in text
    suite = ET.parse(write_junit(result, tmp_path / "j.xml")).getroot().find("testsuite")
    assert (suite.get("tests"), suite.get("failures"), suite.get("skipped")) == ("3", "0", "1")
    case = {tc.get("name"): tc for tc in suite.iter("testcase")}["recorded/nan_input.npz"]
    assert "-Ofast" in case.find("skipped").get("message")
    page = render_html(result)
    assert "Skipped cases (1, not failures)" in page and "-Ofast build on NaN input" in page


def test_write_reports_writes_each_requested_file(tmp_path):
    written = write_reports(make_result(), json=tmp_path / "r.json", html=tmp_path / "r.html")
    assert set(written) == {"json", "html"} and all(p.is_file() for p in written.values())
    assert not (tmp_path / "junit.xml").exists()


def _png_pixels(data: bytes) -> tuple[int, int, set]:
    """Distinct pixels of an 8-bit RGB(A) PNG (enough to tell a blank screenshot from a page)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, header = 8, b"", None
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    width, height, depth, color = header[:4]
    assert depth == 8 and color in (2, 6)
    bpp = 3 if color == 2 else 4
    raw, stride, prev, pixels = zlib.decompress(idat), width * bpp, bytearray(width * bpp), set()
    for y in range(height):
        kind, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for x in range(stride):
            a = line[x - bpp] if x >= bpp else 0
            b, c = prev[x], prev[x - bpp] if x >= bpp else 0
            if kind == 1:
                line[x] = (line[x] + a) & 255
            elif kind == 2:
                line[x] = (line[x] + b) & 255
            elif kind == 3:
                line[x] = (line[x] + (a + b) // 2) & 255
            elif kind == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[x] = (line[x] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        pixels.update(bytes(line[k:k + bpp]) for k in range(0, stride, bpp * 7))
        prev = line
    return width, height, pixels


def test_html_renders_in_headless_chromium(tmp_path):
    """Optional: a real browser draws the page (chromium is not installed in CI)."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("no chromium on PATH")
    page = write_html(make_result(), tmp_path / "report.html")
    shot = tmp_path / "shot.png"
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=1200,1600",
                    page.resolve().as_uri()], check=True, capture_output=True, timeout=120)
    width, height, pixels = _png_pixels(shot.read_bytes())
    assert (width, height) == (1200, 1600)
    assert len(pixels) > 20                                   # text, tables and red cells, not one flat color
    assert any(p[0] > 200 and p[1] < 60 and p[2] < 60 for p in pixels)   # a saturated red heatmap cell
