"""The one comparator: a candidate's run against a reference's, term by term, with one excuse rule.

``compare(reference, candidate, rule, case=...)`` splits the delta into terms
(x, y, w, h, objectness, classes; per class on request) and gives every slot
a role from the reference's decisions (negative, ignored, best anchor, extra
anchor via iou_thresh, truth_thresh positive, written more than once). For
every term x role: element counts, decision mismatches (zero vs nonzero:
whether darknet writes the delta at all, never a tolerance question), value
mismatches under the tolerance rule, max abs/rel error and ulps. Where the
candidate is a whole layer run it also compares the output, the role bits and
darknet's counters.

The one excuse rule: a mismatch at a slot whose deciding quantity (in the
*reference's* decisions, never the candidate's) sits within tolerance of its
threshold is borderline: reported, not a failure; counters and the cost may
then differ too (a decision that went the other way changes them), and only
then.

The rule's one extension: against an -Ofast reference (``rule.reference_build``
"ofast"), a box element outside the rule but within the -Ofast bound is
*-Ofast drift*, counted (``CaseDiff.ofast_drift``, per cell) and not a
failure; a decision mismatch never is.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from .case import Case
from .diff import CaseDiff, Cell, Mismatch
from .errors import ParityError
from .facts import ROLES, SlotFacts, slot_facts, slot_path, slot_roles
from .result import LayerRun, LayerStats
from .roles import ROLE_AVERAGED, ROLE_CLASSMATCH_BLOCKED, ROLE_IGNORED
from .tolerance import TERMS, Tolerance, ToleranceRule

__all__ = ["add_exact", "compare", "ulps"]


def compare(reference: LayerRun, candidate: LayerRun, rule: ToleranceRule = ToleranceRule(), *, case: Case,
            decisions: LayerRun | None = None, name: str | None = None, per_class: bool = False, top_k: int = 10,
            facts: SlotFacts | None = None) -> CaseDiff:
    """Compare ``candidate`` with ``reference`` on ``case`` (deltas [B, n*(5+c), H, W], darknet's sign).

    ``decisions`` is the run whose decisions judge borderline slots and give
    roles and branch counts (default: ``reference``; a recording or a real
    libdarknet has none, so pass the C reference's run on the same input).
    ``facts`` may be given when already computed from that run. The
    candidate's output, roles and stats are compared where it reports them.
    """
    name = name or case.name
    ref = reference.numpy()
    cand = candidate.numpy()
    judge = decisions.numpy() if decisions is not None else ref
    if facts is None:
        facts = slot_facts(case, judge, rule.default.atol, rule.default.rtol)
    result = _compare_delta(name, case.flavor, ref.delta, cand.delta, facts, rule, per_class, top_k, judge.branches)
    if ref.output is not None and cand.output is not None:
        _compare_output(result, ref.output, cand.output, rule.default)
    if cand.roles is not None:
        _compare_roles(result, facts, np.asarray(cand.roles))
    if ref.stats is not None and cand.stats is not None:
        _compare_stats(result, ref.stats, cand.stats, rule.default)
    return result


def _finite_errors(cand: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    """Largest absolute and relative error where both are finite (relative where ref != 0)."""
    finite = np.isfinite(cand) & np.isfinite(ref)
    if not finite.any():
        return 0.0, 0.0
    c, r = cand[finite].astype(np.float64), ref[finite].astype(np.float64)
    err = np.abs(c - r)
    nonzero = r != 0
    rel = float((err[nonzero] / np.abs(r[nonzero])).max()) if nonzero.any() else 0.0
    return float(err.max()), rel


def _compare_output(result: CaseDiff, ref: np.ndarray, cand: np.ndarray, tol: Tolerance) -> None:
    if cand.shape != ref.shape:
        raise ParityError(f"{result.case}: candidate output shape {cand.shape} differs from the reference's "
                          f"{ref.shape}")
    result.output_mask = ~tol.within(cand, ref)
    result.output_mismatches = int(result.output_mask.sum())
    abs_err, rel_err = _finite_errors(cand, ref)
    result.max_abs, result.max_rel = max(result.max_abs, abs_err), max(result.max_rel, rel_err)


# Role bits an objectness-only borderline decision (ignore, class match) can flip.
_OBJ_ONLY = ROLE_IGNORED | ROLE_CLASSMATCH_BLOCKED | ROLE_AVERAGED


def _compare_roles(result: CaseDiff, facts: SlotFacts, cand_roles: np.ndarray) -> None:
    """Slots whose decision bits differ; borderline where the reference's decision was.

    A slot borderline for objectness only excuses differences in the bits
    that decision sets, nothing else.
    """
    differing = cand_roles ^ facts.roles
    excused = facts.borderline | (facts.borderline_obj & ((differing & ~_OBJ_ONLY) == 0))
    result.role_mismatches = int(((differing != 0) & ~excused).sum())
    result.role_mask = (differing != 0) & ~excused
    result.borderline += int(((differing != 0) & excused).sum())


def _compare_stats(result: CaseDiff, ref: LayerStats, cand: LayerStats, tol: Tolerance) -> None:
    """darknet's counters must be equal and the cost close, unless a borderline decision changed them."""
    excused = result.borderline > 0
    for key in LayerStats.EXACT:
        r, c = getattr(ref, key), getattr(cand, key)
        if r is None or c is None or r < 0 or c < 0:      # not reported (recordings may lack a counter)
            continue
        if int(r) != int(c) and not excused:
            result.stats_mismatches[key] = [int(c), int(r)]
    for key in LayerStats.CLOSE:
        r, c = getattr(ref, key), getattr(cand, key)
        if r is None or c is None:
            continue
        if not bool(tol.within(np.float64(c), np.float64(r))) and not excused:
            result.stats_mismatches[key] = [float(c), float(r)]


def ulps(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distance in float32 units in the last place (NaN or inf pairs: 0 if equal)."""
    def ordered(v: np.ndarray) -> np.ndarray:
        bits = np.ascontiguousarray(v, dtype=np.float32).view(np.int32).astype(np.int64)
        return np.where(bits < 0, -(bits & 0x7FFFFFFF), bits)
    return np.abs(ordered(a) - ordered(b))


def _term_index(classes: int, per_class: bool) -> tuple[tuple[str, ...], np.ndarray]:
    """Term names and, per entry of an anchor block, the index of its term."""
    if per_class:
        names = TERMS[:5] + tuple(f"cls{k}" for k in range(classes))
        return names, np.arange(5 + classes)
    return TERMS, np.minimum(np.arange(5 + classes), 5)


def _needed(cand: np.ndarray, ref: np.ndarray, tol: Tolerance) -> dict[str, float | None]:
    """Smallest atol (rtol as set) and rtol (atol as set) under which these values pass."""
    finite = np.isfinite(cand) & np.isfinite(ref)
    c, r = cand[finite].astype(np.float64), ref[finite].astype(np.float64)
    if c.size == 0:
        return {"atol": None, "rtol": None}
    err = np.abs(c - r)
    atol = float(np.max(err - tol.rtol * np.abs(r)))
    rtol: float | None = None
    if np.all(r != 0):
        rtol = float(np.max((err - tol.atol) / np.abs(r)))
    elif np.all(err[r == 0] <= tol.atol):
        rtol = float(np.max((err[r != 0] - tol.atol) / np.abs(r[r != 0]))) if np.any(r != 0) else None
    return {"atol": max(atol, 0.0), "rtol": None if rtol is None else max(rtol, 0.0)}


def _compare_delta(name: str, flavor: str, ref_delta: np.ndarray, cand_delta: np.ndarray, facts: SlotFacts,
                   rule: ToleranceRule, per_class: bool, top_k: int, branches: dict[str, int]) -> CaseDiff:
    """The term x role cells, the per-element masks and the first mismatches of the delta."""
    config = facts.config
    B, _, H, W = ref_delta.shape
    n, C = config.n, config.classes
    E = 5 + C
    if cand_delta.shape != ref_delta.shape:
        raise ParityError(f"{name}: candidate delta shape {cand_delta.shape} differs from the reference's "
                          f"{ref_delta.shape}")
    ref = ref_delta.reshape(B, n, E, H, W)
    cand = cand_delta.reshape(B, n, E, H, W)
    term_names, term_of_entry = _term_index(C, per_class)
    roles = slot_roles(facts.roles)
    border = np.repeat(facts.borderline[:, :, None], E, axis=2)
    border[:, :, 4] |= facts.borderline_obj
    decision = (ref != 0) != (cand != 0)
    value = np.zeros(ref.shape, bool)
    drift = np.zeros(ref.shape, bool)
    result = CaseDiff(name, flavor, tuple(ref_delta.shape), rule.as_dict(), branches=dict(branches or {}))
    for t, term in enumerate(term_names):
        entries = np.nonzero(term_of_entry == t)[0]
        part = slice(int(entries[0]), int(entries[-1]) + 1)      # a term's entries are contiguous
        tol = rule.for_term(term)
        r, c = ref[:, :, part], cand[:, :, part]
        value[:, :, part] = ~decision[:, :, part] & ~tol.within(c, r)
        drift_tol = rule.drift_for_term(term)
        if drift_tol is not None:
            drift[:, :, part] = value[:, :, part] & ~border[:, :, part] & drift_tol.within(c, r)
            value[:, :, part] &= ~drift[:, :, part]
        _fill_term(result, term, r, c, roles, decision[:, :, part], value[:, :, part], border[:, :, part],
                   drift[:, :, part])
        failing_value = value[:, :, part] & ~border[:, :, part]
        if failing_value.any():
            result.needed[term] = _needed(c[failing_value], r[failing_value], tol)
        bad = (decision[:, :, part] | value[:, :, part]) & ~border[:, :, part]
        if bad.any():
            result.heatmaps[term] = bad.sum(axis=(0, 1, 2)).astype(int).tolist()
    failing_decision, failing_value = decision & ~border, value & ~border
    result.decision_mismatches = int(failing_decision.sum())
    result.value_mismatches = int(failing_value.sum())
    result.mask = failing_decision | failing_value
    result.borderline_mask = (decision | value) & border
    result.borderline = int(result.borderline_mask.sum())
    result.ofast_drift = int(drift.sum())
    result.max_abs, result.max_rel = _finite_errors(cand, ref)
    result.mismatches = _first_mismatches(ref, cand, facts, failing_decision, failing_value,
                                          result.borderline_mask, term_names, term_of_entry, top_k)
    return result


def add_exact(result: CaseDiff, exact_delta: np.ndarray, entries: int) -> None:
    """Give each listed value mismatch the float64 value and which side is closer to it.

    ``exact_delta`` is darknet's semantics computed in float64 (the PyTorch port's float64 mode) ([B, n*entries, H, W],
    ``entries`` = 5 + classes); only listed value mismatches read it, so a
    caller need compute it only when ``result`` lists one.
    """
    for m in result.mismatches:
        if m.kind != "value":
            continue
        m.exact = x = float(exact_delta[m.image, m.anchor * entries + m.entry, m.j, m.i])
        dr, dc = abs(m.reference - x), abs(m.candidate - x)
        m.closer = "tie" if dr == dc else ("reference" if dr < dc else "candidate")


def _fill_term(result: CaseDiff, term: str, ref: np.ndarray, cand: np.ndarray, roles: np.ndarray,
               decision: np.ndarray, value: np.ndarray, border: np.ndarray, drift: np.ndarray) -> None:
    """The Cells of one term: per-slot sums and maxima over its entries, grouped by role."""
    both = np.isfinite(ref) & np.isfinite(cand)
    with np.errstate(invalid="ignore"):
        err = np.where(both, np.abs(cand.astype(np.float64) - ref), 0.0)
        rel = np.where(both & (ref != 0), err / np.where(ref != 0, np.abs(ref.astype(np.float64)), 1.0), 0.0)
    ulp = np.where(both, ulps(cand, ref), 0)
    per_slot = {
        "written": (ref != 0).sum(axis=2), "value": (value & ~border).sum(axis=2),
        "decision": (decision & ~border).sum(axis=2), "border": ((decision | value) & border).sum(axis=2),
        "abs": err.max(axis=2), "rel": rel.max(axis=2), "ulps": ulp.max(axis=2), "drift": drift.sum(axis=2),
    }
    width = ref.shape[2]
    for r, role in enumerate(ROLES):
        sel = roles == r
        slots = int(sel.sum())
        if slots == 0:
            continue
        result.cells.append(Cell(
            term, role, slots * width, int(per_slot["written"][sel].sum()), int(per_slot["value"][sel].sum()),
            int(per_slot["decision"][sel].sum()), int(per_slot["border"][sel].sum()),
            float(per_slot["abs"][sel].max()), float(per_slot["rel"][sel].max()), int(per_slot["ulps"][sel].max()),
            int(per_slot["drift"][sel].sum())))


def _first_mismatches(ref, cand, facts, failing_decision, failing_value, borderline, term_names, term_of_entry,
                      top_k: int) -> list[Mismatch]:
    """Up to ``top_k`` failures (decisions first), then borderline ones, with context."""
    picked: list[tuple[str, tuple[int, ...], bool]] = []
    for mask, kind, is_border in ((failing_decision, "decision", False), (failing_value, "value", False),
                                  (borderline, "borderline", True)):
        for idx in map(tuple, np.argwhere(mask)[: max(0, top_k - len(picked))]):
            picked.append((kind, idx, is_border))
    out = []
    paths: dict[tuple[int, int, int, int], dict[str, Any]] = {}
    for kind, (b, a, e, j, i), is_border in picked:
        slot = (int(b), int(a), int(j), int(i))
        if slot not in paths:
            paths[slot] = slot_path(facts, *slot)
        r, c = float(ref[b, a, e, j, i]), float(cand[b, a, e, j, i])
        if kind == "borderline":
            kind = "decision" if (r != 0) != (c != 0) else "value"
        out.append(Mismatch(kind, *slot[:2], slot[2], slot[3], term_names[term_of_entry[e]], int(e), r, c,
                            paths[slot]["role"], is_border, context=paths[slot]))
    return out
