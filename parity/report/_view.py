"""Aggregations and words shared by every report writer, so text, JUnit and HTML never disagree.

Nothing here compares numbers against a tolerance or diagnoses anything: it
only sums, takes maxima of and spells out what ``parity.diff`` and
``parity.suite`` already decided. Import-light on purpose (no torch at import).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import PurePath
from typing import TYPE_CHECKING, Any, Iterable, Mapping

from ..diff import TERMS, Cell
from ..roles import ROLES

if TYPE_CHECKING:  # the writers take result objects; only the table rows are built here
    from ..diff import CaseDiff, Mismatch
    from ..suite import SuiteResult

_CONFIDENCE_WORDS = {"high": 3, "medium": 2, "moderate": 2, "low": 1}
# Characters XML 1.0 allows: #x9 | #xA | #xD | [#x20-#xD7FF] | [#xE000-#xFFFD] | [#x10000-#x10FFFF].
_ILLEGAL_XML = re.compile("[^\u0009\u000a\u000d\u0020-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def bin_xml_escape(text: object) -> str:
    """``text`` with characters illegal in XML replaced by ``#xNN`` (as pytest's junitxml does)."""
    def repl(match: re.Match[str]) -> str:
        code = ord(match.group())
        return f"#x{code:02X}" if code <= 0xFF else f"#x{code:04X}"
    return _ILLEGAL_XML.sub(repl, str(text))


_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def printable(text: object) -> str:
    """``text`` with control characters (a stray ESC would restyle a terminal) spelled ``#xNN``."""
    return _CONTROL.sub(lambda m: f"#x{ord(m.group()):02X}", str(text))


@dataclass
class Counts:
    """Case tallies for the summary line and the JUnit header."""

    cases: int
    passed: int            # compared and matched (skipped cases excluded)
    failed: int            # failing cases without an error
    errors: int            # cases that could not be compared
    skipped: int           # cases not compared on purpose (not failures)
    borderline: int        # borderline mismatches over all cases (never failures)
    borderline_cases: int
    missing_branches: int
    ofast_drift: int = 0   # delta elements within -Ofast drift over all cases (an -Ofast reference; never failures)
    ofast_drift_cases: int = 0


def skip_reason(case: "CaseDiff") -> str | None:
    """Why the case was not compared (None: it was); read defensively, older results lack the field."""
    reason = getattr(case, "skipped", None)
    return None if reason is None or case.error is not None else str(reason)


def counts(result: "SuiteResult") -> Counts:
    cases = result.cases
    errors = sum(1 for c in cases if c.error is not None)
    skipped = sum(1 for c in cases if skip_reason(c) is not None)
    passed = sum(1 for c in cases if c.passed and skip_reason(c) is None)
    missing = sum(len(v) for v in result.missing_branches.values())
    return Counts(len(cases), passed, len(cases) - passed - errors - skipped, errors, skipped,
                  sum(c.borderline for c in cases), sum(1 for c in cases if c.borderline), missing,
                  sum(getattr(c, "ofast_drift", 0) for c in cases),
                  sum(1 for c in cases if getattr(c, "ofast_drift", 0)))


def term_key(term: str) -> tuple[int, int, str]:
    """darknet's entry order: x, y, w, h, obj, then classes (cls, cls0, cls1, ...)."""
    if term in TERMS:
        return (TERMS.index(term), -1, term)
    if term.startswith("cls") and term[3:].isdigit():
        return (len(TERMS) - 1, int(term[3:]), term)
    return (len(TERMS), 0, term)


def role_order() -> tuple[str, ...]:
    """The diff's role order (``parity.roles.ROLES``)."""
    return ROLES


def _role_key(role: str, order: tuple[str, ...]) -> tuple[int, str]:
    return (order.index(role) if role in order else len(order), role)


def term_role_rows(result: "SuiteResult") -> list["Cell"]:
    """The term x role table over all cases, in darknet's term order and the diff's role order."""
    rows: dict[tuple[str, str], Cell] = {}
    for case in result.cases:
        for cell in case.cells:
            rows.setdefault((cell.term, cell.role), Cell(cell.term, cell.role)).add(cell)
    order = role_order()
    return sorted(rows.values(), key=lambda r: (term_key(r.term), _role_key(r.role, order)))


def needed_tolerances(result: "SuiteResult") -> dict[str, dict[str, float | None]]:
    """Per term, the smallest atol/rtol under which every failing case's values would pass.

    A case's ``needed`` rtol of None means no rtol alone suffices (a zero
    reference differs), so one None makes the suite's None too.
    """
    values: dict[str, dict[str, list[float | None]]] = {}
    for case in result.cases:
        for term, need in (case.needed or {}).items():
            need = need if isinstance(need, Mapping) else {}
            for key in ("atol", "rtol"):
                values.setdefault(term, {"atol": [], "rtol": []})[key].append(need.get(key))
    out = {term: {key: (None if not vs or None in vs else max(vs)) for key, vs in by_key.items()}
           for term, by_key in values.items()}
    return dict(sorted(out.items(), key=lambda kv: term_key(kv[0])))


@dataclass
class CoverageCell:
    count: int
    enabled: bool

    @property
    def missing(self) -> bool:
        return self.enabled and not self.count


def coverage_grid(result: "SuiteResult") -> tuple[list[str], list[str], dict[tuple[str, str], CoverageCell]]:
    """Branches (rows), groups (columns) and each (branch, group) cell."""
    groups = sorted(set(result.coverage) | set(result.enabled))
    branches = sorted({b for g in groups for b in result.coverage.get(g, {})}
                      | {b for g in groups for b in result.enabled.get(g, [])})
    grid = {}
    for g in groups:
        enabled = set(result.enabled.get(g, []))
        for b in branches:
            grid[(b, g)] = CoverageCell(int(result.coverage.get(g, {}).get(b, 0) or 0), b in enabled)
    return branches, groups, grid


def group_of_case(case: "CaseDiff", groups: Iterable[str]) -> str:
    """The coverage group a case id belongs to ("profile#3" -> "profile", a file -> its folder)."""
    known = set(groups)
    source, sep, index = case.case.rpartition("#")
    if sep and index.isdigit() and (source in known or not known):
        return source
    parent = str(PurePath(case.case).parent)
    if parent in known:
        return parent
    return source if sep and index.isdigit() else parent


def term_failures(case: "CaseDiff") -> dict[str, tuple[int, int, float]]:
    """Per term: (decision mismatches, value mismatches, max abs) of one case."""
    out: dict[str, tuple[int, int, float]] = {}
    for cell in case.cells:
        d, v, a = out.get(cell.term, (0, 0, 0.0))
        out[cell.term] = (d + cell.decision_mismatches, v + cell.value_mismatches, max(a, cell.max_abs))
    return dict(sorted(out.items(), key=lambda kv: term_key(kv[0])))


def worst_term(case: "CaseDiff") -> str | None:
    """The term with the most failing mismatches (ties: the larger max abs error)."""
    failing = {t: (d + v, a) for t, (d, v, a) in term_failures(case).items() if d + v}
    if not failing:
        sums = {t: sum(map(sum, grid)) for t, grid in (case.heatmaps or {}).items()}
        failing = {t: (s, 0.0) for t, s in sums.items() if s}
    if not failing:
        return None
    return max(failing, key=lambda t: failing[t])


def heatmap_terms(case: "CaseDiff") -> list[str]:
    """Terms with a heatmap that has at least one mismatch, in darknet's order."""
    return sorted((t for t, grid in (case.heatmaps or {}).items() if any(any(row) for row in grid)), key=term_key)


def grid_size(grid: list[list[int]]) -> tuple[int, int]:
    """(H, W) of a heatmap."""
    return len(grid), (len(grid[0]) if grid else 0)


def _confidence_rank(cause: Mapping[str, Any]) -> float:
    value = cause.get("confidence")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        return float(_CONFIDENCE_WORDS.get(value.lower(), 0))
    return 0.0


def ordered_causes(case: "CaseDiff") -> list[Mapping[str, Any]]:
    """The diagnosis's causes, most confident first (stable for equal confidence)."""
    causes = [c for c in (case.causes or []) if isinstance(c, Mapping)]
    return sorted(causes, key=lambda c: -_confidence_rank(c))


@dataclass
class CauseGroup:
    """One (term, cause) found in several failing cases: how many, and its words from the first."""

    term: str
    cause: str
    cases: int
    message: str
    first_case: str
    rank: float = 0.0        # the highest confidence any case gave it (ties between equally common causes)


def cause_groups(result: "SuiteResult") -> list[CauseGroup]:
    """The diagnosis over the whole run: each (term, cause) with the number of failing cases naming it."""
    groups: dict[tuple[str, str], CauseGroup] = {}
    for case in result.failed:
        for cause in ordered_causes(case):
            key = (str(cause.get("term", "")), str(cause.get("cause", "")))
            if key in groups:
                groups[key].cases += 1
                groups[key].rank = max(groups[key].rank, _confidence_rank(cause))
            else:
                groups[key] = CauseGroup(key[0], key[1], 1, str(cause.get("message") or key[1]), case.case,
                                         _confidence_rank(cause))
    return sorted(groups.values(), key=lambda g: (-g.cases, -g.rank, term_key(g.term), g.cause))


def distinct_errors(result: "SuiteResult") -> list[tuple[str, list[str]]]:
    """Each distinct error message with the cases it hit, most frequent first."""
    by_message: dict[str, list[str]] = {}
    for case in result.cases:
        if case.error is not None:
            by_message.setdefault(case.error, []).append(case.case)
    return sorted(by_message.items(), key=lambda kv: -len(kv[1]))


def top_cause(case: "CaseDiff") -> Mapping[str, Any] | None:
    causes = ordered_causes(case)
    return causes[0] if causes else None


def fmt_num(value: Any, spec: str = ".3g") -> str:
    """A number for a table cell; None and non-numbers as they are."""
    if value is None:
        return "n/a"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    return format(value, spec)


def fmt_value(value: Any) -> str:
    """A delta value with every float32 digit."""
    return fmt_num(value, ".9g")


def fmt_evidence(evidence: Any, limit: int = 400) -> str:
    """Evidence of a cause in one line, whatever shape the diagnosis gave it."""
    if evidence is None or evidence == "" or evidence == {} or evidence == []:
        return ""
    if isinstance(evidence, Mapping):
        text = ", ".join(f"{k}={fmt_num(v, '.6g')}" for k, v in evidence.items())
    elif isinstance(evidence, (list, tuple)):
        text = "; ".join(fmt_num(v, ".6g") for v in evidence)
    else:
        text = fmt_num(evidence, ".6g")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def cause_headline(cause: Mapping[str, Any]) -> str:
    """"term: message" for one cause."""
    term = cause.get("term")
    message = str(cause.get("message") or cause.get("cause") or "(no message)")
    return f"{term}: {message}" if term not in (None, "") else message


def cause_detail(cause: Mapping[str, Any]) -> str:
    """The cause's name, confidence and evidence in words."""
    parts = []
    if cause.get("cause"):
        parts.append(f"cause {cause['cause']}")
    if cause.get("confidence") is not None:
        parts.append(f"confidence {fmt_num(cause['confidence'], '.2g')}")
    evidence = fmt_evidence(cause.get("evidence"))
    if evidence:
        parts.append(f"evidence: {evidence}")
    return "; ".join(parts)


def mismatch_where(m: "Mismatch") -> str:
    return f"image {m.image}, anchor {m.anchor}, cell (j={m.j}, i={m.i}), term {m.term} (entry {m.entry})"


def mismatch_label(m: "Mismatch") -> str:
    """"decision mismatch", "value mismatch" or the borderline variant (reported, not a failure)."""
    return f"borderline {m.kind} mismatch (not a failure)" if m.borderline else f"{m.kind} mismatch"


def mismatch_exact(m: "Mismatch") -> str:
    if m.exact is None:
        return "not computed" if m.kind == "value" else "n/a (a decision, not a value)"
    return f"{m.exact:.12g} (closer: {m.closer or 'unknown'})"


def _context(m: "Mismatch") -> Mapping[str, Any]:
    return m.context if isinstance(m.context, Mapping) else {}


def mismatch_path(m: "Mismatch") -> list[str]:
    """darknet's path at the slot, step by step."""
    path = _context(m).get("path") or []
    return [str(p) for p in path] if isinstance(path, (list, tuple)) else [str(path)]


def mismatch_truths(m: "Mismatch") -> str:
    """The truths assigned at the slot and the best-IoU truth, in words."""
    ctx = _context(m)
    parts = []
    truths = ctx.get("truths") or []
    if truths:
        parts.append("assigned truth" + ("s " if len(truths) > 1 else " ") + ", ".join(map(str, truths)))
    if ctx.get("best_truth") is not None:
        parts.append(f"best IoU {fmt_num(ctx.get('best_iou'), '.6g')} with truth {ctx['best_truth']}")
    elif ctx.get("best_iou") is not None:
        parts.append(f"best IoU {fmt_num(ctx.get('best_iou'), '.6g')} (no overlapping truth)")
    if ctx.get("max_class_prob") is not None:
        parts.append(f"largest class probability {fmt_num(ctx['max_class_prob'], '.6g')}")
    if ctx.get("pred"):
        parts.append("predicted box (" + ", ".join(fmt_num(v, ".6g") for v in ctx["pred"]) + ")")
    return "; ".join(parts) or "none"


def mismatch_reasons(m: "Mismatch") -> list[str]:
    """Why the slot is borderline (empty when it is not)."""
    reasons = _context(m).get("borderline") or []
    return [str(r) for r in reasons] if isinstance(reasons, (list, tuple)) else [str(reasons)]


def case_summary(case: "CaseDiff") -> str:
    """One line on a failing case: counts, worst term, top cause."""
    if case.error is not None:
        return f"{case.case}: could not be compared: {case.error}"
    text = f"{case.case}: {case.decision_mismatches} decision mismatches, {case.value_mismatches} value mismatches"
    worst = worst_term(case)
    if worst is not None:
        text += f"; worst term {worst}"
    cause = top_cause(case)
    if cause is not None:
        text += f"; top cause: {cause_headline(cause)}"
    return text


def case_detail_lines(case: "CaseDiff", max_mismatches: int | None = None) -> list[str]:
    """A failing case in plain text (JUnit bodies): per-term counts, first mismatches, causes."""
    lines = [case_summary(case), f"flavor {case.flavor or '?'}, delta shape {tuple(case.shape)}, "
                                 f"{case.borderline} borderline mismatches"
                                 + (f", {case.ofast_drift} elements within -Ofast drift" if case.ofast_drift else "")]
    failures = {t: f for t, f in term_failures(case).items() if f[0] or f[1]}
    if failures:
        lines.append("per term (decision / value mismatches, max abs):")
        lines += [f"  {t}: {d} / {v}, {a:.3g}" for t, (d, v, a) in failures.items()]
    shown = case.mismatches if max_mismatches is None else case.mismatches[:max_mismatches]
    if shown:
        lines.append(f"first mismatches ({len(shown)} of {len(case.mismatches)} listed):")
    for m in shown:
        lines += mismatch_lines(m, indent="  ")
    causes = ordered_causes(case)
    if causes:
        lines.append("diagnosis:")
    for cause in causes:
        lines.append(f"  - {cause_headline(cause)}")
        detail = cause_detail(cause)
        if detail:
            lines.append(f"    ({detail})")
    return lines


def mismatch_lines(m: "Mismatch", indent: str = "") -> list[str]:
    """One mismatch with its full context in plain text."""
    lines = [f"{indent}{mismatch_label(m)} at {mismatch_where(m)}, role {m.role}",
             f"{indent}  reference {fmt_value(m.reference)}, candidate {fmt_value(m.candidate)}, "
             f"float64 exact {mismatch_exact(m)}",
             f"{indent}  truths: {mismatch_truths(m)}"]
    lines += [f"{indent}  darknet: {step}" for step in mismatch_path(m)]
    lines += [f"{indent}  borderline: {reason}" for reason in mismatch_reasons(m)]
    return lines


def summary_text(result: "SuiteResult") -> str:
    """"N cases: P passed, F failed, ..." with the run time."""
    c = counts(result)
    text = f"{c.cases} cases: {c.passed} passed, {c.failed} failed"
    if c.errors:
        text += f", {c.errors} could not be compared"
    if c.skipped:
        text += f", {c.skipped} skipped"
    text += f"; {c.borderline} borderline mismatches"
    if c.borderline:
        text += f" in {c.borderline_cases} cases (reported, not failures)"
    if c.ofast_drift:
        text += (f"; {c.ofast_drift} elements within -Ofast drift in {c.ofast_drift_cases} cases "
                 "(an -Ofast reference: reported, not failures)")
    if c.missing_branches:
        text += f"; {c.missing_branches} enabled branches never hit"
    return text + f"; {result.seconds:.2f} s"


def verdict_text(result: "SuiteResult") -> str:
    """The one-line verdict every report ends with."""
    c = counts(result)
    if result.passed:
        skipped = f" ({c.skipped} skipped)" if c.skipped else ""
        coverage = ("every enabled branch was hit" if not c.missing_branches else
                    f"{c.missing_branches} enabled branches never hit (reported; --require-coverage makes it fail)")
        return (f"PARITY: all {c.cases - c.skipped} compared cases match darknet under the tolerance rule{skipped}; "
                + coverage)
    parts = []
    if c.failed or c.errors:
        parts.append(f"{c.failed + c.errors} of {c.cases} cases failed"
                     + (f" ({c.errors} could not be compared)" if c.errors else ""))
    if getattr(result, "incomplete", ""):
        parts.append(f"incomplete: {result.incomplete}")
    if result.coverage_fails:
        parts.append(f"{c.missing_branches} enabled branches never hit")
    return ("ERROR: " if c.errors else "MISMATCH: ") + "; ".join(parts)


def run_description(result: "SuiteResult") -> str:
    """Candidate, reference and shards, as recorded in the options."""
    opts = result.options or {}
    parts = []
    for key in ("candidate", "convention", "reference", "device"):
        if opts.get(key) not in (None, ""):
            parts.append(f"{key} {opts[key]}")
    if result.shards:
        parts.append("shards " + ", ".join(map(str, result.shards)))
    return ", ".join(parts)


def explanation_headline(explanation: Mapping[str, Any]) -> str:
    """The search's first line: how many catalogue changes turn darknet into the candidate."""
    n = len(explanation.get("changes", []))
    if not n:
        return "No catalogued deviation brings darknet's [yolo] layer closer to your loss."
    return f"Your loss = darknet's [yolo] layer with {'these' if n != 1 else 'this'} {n} change{'s' if n != 1 else ''}:"


def explanation_change_lines(change: Mapping[str, Any]) -> list[str]:
    """One change: what the candidate does, what darknet does instead, the fix (and a snippet)."""
    lines = [f"{change['text']}  [{change['id']}; accounts for {change['accounts_for']} differing element(s)]",
             f"darknet instead {change['darknet_does']} ({change['darknet_function']})",
             f"fix: {change['fix']}"]
    lines += [f"    {line}" for line in str(change.get("snippet") or "").splitlines()]
    return lines


def explanation_residual(explanation: Mapping[str, Any]) -> str:
    """What the changes reproduce, on how many cases and elements, and what remains."""
    n = len(explanation.get("changes", []))
    cases, reproduced = explanation["cases"], explanation["cases_reproduced"]
    elements, outside = explanation["elements"], explanation["elements_outside"]
    share = 100.0 * (1 - outside / elements) if elements else 100.0
    digits = 2
    while outside and round(share, digits) >= 100.0 and digits < 8:    # never print 100% of a residual
        digits += 1
    subject = (f"after {'these' if n != 1 else 'this'} {n} change{'s' if n != 1 else ''} darknet's semantics" if n
               else "darknet's semantics")
    where = f"all {cases} cases" if reproduced == cases else f"{reproduced} of {cases} cases"
    text = f"{subject} reproduce your loss on {where}, {share:.{digits}f}% of elements"
    if outside:
        remains = ", ".join(f"{term} {count}" for term, count in explanation.get("remains", {}).items())
        text += f"; what remains: {outside} element(s) ({remains}), first at {explanation.get('first')}"
    return text[0].upper() + text[1:] + "."
