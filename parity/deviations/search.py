"""The explanation search: the smallest set of catalogue deviations under which darknet reproduces a port.

Given cases and the candidate's delta on each (darknet's sign), find the
``Variant`` (darknet with a few named switches changed, parameters fitted)
whose delta equals the candidate's under the one tolerance rule on every
element, with as few deviations as possible, each one necessary:

1. **Greedy forward selection** on a few *screening* cases (the smallest
   failing ones, covering every failing term): each step tries every
   catalogue deviation that can touch a failing term (each decision value
   of its parameters, thresholds fitted as intervals from the candidate's
   own decisions) and keeps, among those that reduce the count of elements
   outside the rule (or keep it and clearly reduce the log-ratio distance),
   the closest. Every trial refits the per-term factors (reductions and
   weights, ``parity.deviations.fit``), so deviations that mask each other
   are judged as they combine.
2. **Backward elimination** by the same test, then **swaps** of a chosen
   deviation for another setting or a sibling; the passes repeat until
   nothing changes. What remains is necessary.
3. **Validation on the whole suite**: cases the result does not reproduce
   join the screening set and the search goes on from there (a few rounds).

The trials are ``parity.deviations.trials``; the cases, cached runs and the
count and distance of a variant are ``parity.deviations.runs``. Here: the
search's steps and the answer (``Explanation``).
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

from ..tolerance import TERMS
from .catalogue import BY_ID, Deviation
from .fit import DARKNET_FACTOR, TermFactor
from .runs import (GROUPS, NORMALIZERS, Score, SearchCase, Suite, apply_factors, evaluate, necessary_factors,
                   outside_mask, term_rows, without_factors)
from .trials import SIBLINGS, Item, compose, fitted_count, item, settings, trials_for
from .variant import DARKNET, Variant

__all__ = ["SearchCase", "Finding", "Explanation", "search"]

SCREEN_CASES = 6
PROXY_CASES = 1     # a greedy step first ranks every trial on the screening cases that differ most ...
SHORTLIST = 8       # ... and runs only this many closest ones on every screening case
ROUNDS = 3          # validations on the whole suite (cases it misses join the screening set)
PASSES = 4          # forward, backward and swap passes per round
# the catalogue entry of a term's normalizer left out
NORMALIZER_IDS = {"box": "iou_normalizer_ignored", "obj": "obj_normalizer_ignored"}


@dataclass(frozen=True)
class Finding:
    """One deviation of the explanation, with its fitted parameters."""

    id: str
    params: dict[str, Any]
    accounts_for: int          # elements outside the rule on the searched cases when it is taken out
    text: str                  # what the candidate does, parameters in words

    @property
    def deviation(self) -> Deviation:
        return BY_ID[self.id]


@dataclass
class Explanation:
    """The search's answer: the deviations, what they reproduce, and what remains."""

    findings: list[Finding]
    variant: Variant
    cases: int
    cases_reproduced: int
    elements: int
    elements_outside: int          # elements still outside the rule under ``variant``
    outside_before: int            # elements outside the rule under darknet's own semantics
    remains: dict[str, int] = field(default_factory=dict)    # term -> elements still outside
    first: str | None = None        # where the first remaining difference is
    seconds: float = 0.0
    screened: tuple[str, ...] = ()

    @property
    def exact(self) -> bool:
        return self.elements_outside == 0

    @property
    def ids(self) -> set[str]:
        return {f.id for f in self.findings}

    def as_dict(self) -> dict[str, Any]:
        return {"changes": [{"id": f.id, "family": f.deviation.family, "params": _plain_params(f.params),
                             "accounts_for": f.accounts_for, "text": f.text, "darknet_does": f.deviation.darknet_does,
                             "darknet_function": f.deviation.darknet_function, "fix": f.deviation.fix,
                             "snippet": f.deviation.snippet} for f in self.findings],
                "cases": self.cases, "cases_reproduced": self.cases_reproduced, "elements": self.elements,
                "elements_outside": self.elements_outside, "outside_before": self.outside_before,
                "remains": dict(self.remains), "first": self.first, "seconds": round(self.seconds, 3)}


def _plain_params(params: dict[str, Any]) -> dict[str, Any]:
    return {k: (float(v) if isinstance(v, (float, np.floating)) else v) for k, v in params.items()}


def _screen(suite: Suite, baseline: dict[int, np.ndarray], limit: int) -> list[int]:
    """A few small failing cases that together show every failing term (and, where possible, two shapes)."""
    failing = [i for i, c in baseline.items() if c.sum()]
    failing.sort(key=lambda i: (suite.cases[i].case.input.size, i))
    chosen: list[int] = []
    for term in range(len(TERMS)):
        have = sum(1 for i in chosen if baseline[i][term])
        for i in failing:
            if have >= 2 or len(chosen) >= limit:
                break
            if baseline[i][term] and i not in chosen:
                chosen.append(i)
                have += 1
    batches = {suite.cases[i].case.input.shape[0] for i in chosen}
    for i in failing:
        if len(chosen) >= limit:
            break
        if i not in chosen and (suite.cases[i].case.input.shape[0] not in batches or len(chosen) < 3):
            chosen.append(i)
            batches.add(suite.cases[i].case.input.shape[0])
    return sorted(chosen)


def _better(new: Score, old: Score) -> bool:
    """Fewer elements outside the rule, or as many and clearly closer (a factor that fixes nothing alone)."""
    if new.total != old.total:
        return new.total < old.total
    return new.distance < old.distance * (1 - 1e-3)


def _forward(suite: Suite, chosen: list[Item], idx: Sequence[int], score: Score,
             budget: float) -> tuple[list[Item], Score]:
    """Greedy: add the deviation that brings the variant closest to the candidate, while one helps.

    Among the trials that help (fewer elements outside the rule, or as many
    and clearly closer), the one with the smallest summed distance wins, so
    each of several factors on the same elements counts on its own.
    """
    while score.total and time.perf_counter() < budget:
        best: tuple[tuple[float, int, int, int, int], list[Item], Score] | None = None
        shortlisted = _shortlist(suite, chosen, trials_for(suite, chosen, idx, score.terms()), score)
        for rank, trial in enumerate(shortlisted):
            s = evaluate(suite, compose(chosen + trial), idx)
            key = (s.distance, s.total, len(trial), fitted_count(trial), rank)
            if _better(s, score) and (best is None or key < best[0]):
                best = (key, trial, s)
        if best is None:
            break
        chosen = chosen + best[1]
        score = best[2]
    return chosen, score


def _shortlist(suite: Suite, chosen: list[Item], trials: list[list[Item]], score: Score) -> list[list[Item]]:
    """The trials worth a run on every screening case: the closest on the PROXY_CASES that differ most."""
    if len(trials) <= SHORTLIST or len(score.per_case) <= PROXY_CASES:
        return trials
    proxy = sorted(score.per_case, key=lambda i: (-int(score.per_case[i].sum()), i))[:PROXY_CASES]
    keyed = []
    for rank, trial in enumerate(trials):
        s = evaluate(suite, compose(chosen + trial), proxy)
        keyed.append(((s.distance, s.total, rank), trial))
    keyed.sort(key=lambda kt: kt[0])
    return [t for _, t in keyed[:SHORTLIST]]


def _backward(suite: Suite, chosen: list[Item], idx: Sequence[int], score: Score) -> tuple[list[Item], Score]:
    """Drop every deviation the others make unnecessary: without it the variant is no worse (the test
    ``_forward`` keeps a deviation by, so the two never undo each other's work)."""
    changed = True
    while changed and chosen:
        changed = False
        for it in reversed(chosen):
            rest = [c for c in chosen if c is not it]
            s = evaluate(suite, compose(rest), idx)
            if not _better(score, s):
                chosen, score, changed = rest, s, True
                break
    return chosen, score


def _refine(suite: Suite, chosen: list[Item], idx: Sequence[int], score: Score) -> tuple[list[Item], Score]:
    """Swap a chosen deviation for another setting of it (or a sibling) where that reproduces more."""
    improved = True
    while improved and score.total:
        improved = False
        for it in list(chosen):
            rest = [c for c in chosen if c is not it]
            current = compose(rest)
            taken = set(current.changes())
            names = set().union(*(g for g in SIBLINGS if it.id in g)) | {it.id}
            for name in sorted(names):
                for option in settings(suite, BY_ID[name], current, taken, idx):
                    swap = item(name, option)
                    if swap == it:
                        continue
                    s = evaluate(suite, compose(rest + [swap]), idx)
                    if _better(s, score):
                        chosen, score, improved = rest + [swap], s, True
                        break
                if improved:
                    break
            if improved:
                break
    return chosen, score


def search(cases: Sequence[SearchCase], *, screen: int = SCREEN_CASES, rounds: int = ROUNDS,
           time_limit: float = 600.0) -> Explanation:
    """The smallest set of catalogue deviations (parameters fitted) that reproduces the candidate on ``cases``."""
    start = time.perf_counter()
    budget = start + time_limit
    suite = Suite(cases)
    everything = list(range(len(cases)))
    with torch.no_grad():
        baseline = evaluate(suite, DARKNET, everything, fixed={n: DARKNET_FACTOR for n, *_ in GROUPS})
        idx = _screen(suite, baseline.per_case, screen)
        chosen: list[Item] = []
        final = baseline
        for _ in range(max(1, rounds)):
            if not idx:
                break
            score = evaluate(suite, compose(chosen), idx)
            for _ in range(PASSES):     # elimination and swaps may open a better path for the next step
                before = (list(chosen), score.total)
                chosen, score = _forward(suite, chosen, idx, score, budget)
                chosen, score = _backward(suite, chosen, idx, score)
                chosen, score = _refine(suite, chosen, idx, score)
                if not score.total or (chosen, score.total) == before or time.perf_counter() >= budget:
                    break
            structure = compose(chosen)
            final = necessary_factors(suite, structure, everything, evaluate(suite, structure, everything))
            missed = [i for i in everything if final.per_case[i].sum() and i not in idx]
            if not missed or time.perf_counter() >= budget:
                break
            missed.sort(key=lambda i: (-int(final.per_case[i].sum()), i))
            idx = sorted(set(idx) | set(missed[:max(2, screen // 2)]))
        findings = _findings(suite, chosen, final, idx)
    return _explanation(suite, findings, final, baseline, idx, time.perf_counter() - start)


def _findings(suite: Suite, chosen: list[Item], final: Score, idx: Sequence[int]) -> list[Finding]:
    """The chosen deviations and the fitted factors as findings, ranked by the elements each accounts for."""
    structure = compose(chosen)
    found: list[Finding] = []
    base = evaluate(suite, structure, idx, fixed=final.factors).total
    fitted = {name: f for name, f in final.factors.items() if not f.is_darknet}
    flipped = bool(fitted) and len(fitted) == len(GROUPS) and all(f.weight < 0 for f in fitted.values())
    if flipped:     # one sign convention, not three negative weights
        unsigned = {name: dataclasses.replace(f, weight=-f.weight) for name, f in final.factors.items()}
        accounts = max(0, evaluate(suite, structure, idx, fixed=unsigned).total - base)
        found.append(Finding("sign_flipped", dict(BY_ID["sign_flipped"].switch or {}), accounts,
                             BY_ID["sign_flipped"].port_does))
    signed = final.factors
    neutral = TermFactor(weight=-1.0) if flipped else DARKNET_FACTOR
    for it in chosen:
        rest = compose([c for c in chosen if c is not it])
        without = evaluate(suite, rest, idx, fixed=final.factors).total
        found.append(Finding(it.id, it.fields, max(0, without - base), _describe(it.id, it.fields)))
    for name, rows, reduce_field, weight_field in GROUPS:
        f = signed.get(name, DARKNET_FACTOR)
        if flipped:
            f = dataclasses.replace(f, weight=-f.weight)
        if f.is_darknet:
            continue
        fixed = dict(signed)
        fixed[name] = neutral
        accounts = max(0, evaluate(suite, structure, idx, fixed=fixed).total - base)
        parts = []
        if f.normalizer_ignored and NORMALIZERS[name]:
            left_out = NORMALIZER_IDS[name]
            parts.append(Finding(left_out, {NORMALIZERS[name]: "ignored"}, 0, BY_ID[left_out].port_does))
        if f.reduction != "sum":
            parts.append(Finding(f"{name}_mean_over_{f.reduction}", {reduce_field: f.reduction}, 0,
                                 _describe_factor(name, dataclasses.replace(f, weight=1.0),
                                                  _example(suite, structure, idx, name, f.reduction))))
        if f.weight != 1.0 or not f.factored:
            parts.append(Finding("term_weight", {weight_field: f.weight}, 0,
                                 _describe_factor(name, dataclasses.replace(f, reduction="sum"))
                                 if f.factored else _describe_factor(name, f)))
        # the elements the whole factor accounts for, shared out among its parts
        for k, part in enumerate(parts):
            share = accounts // len(parts) + (1 if k < accounts % len(parts) else 0)
            found.append(dataclasses.replace(part, accounts_for=share))
    _merge_weights(found)
    found.sort(key=lambda f: -f.accounts_for)
    return found


def _merge_weights(found: list[Finding]) -> None:
    """One ``term_weight`` finding holding every term's weight (the catalogue has one entry for it)."""
    weights = [f for f in found if f.id == "term_weight"]
    if len(weights) < 2:
        return
    params: dict[str, Any] = {}
    for f in weights:
        params.update(f.params)
        found.remove(f)
    found.append(Finding("term_weight", params, sum(f.accounts_for for f in weights),
                         "; ".join(f.text for f in weights)))


QUANTITY_WORDS = {"batch": "the batch size", "slots": "b*n*h*w (every slot)",
                  "positives": "the number of truth-anchor pairs", "positives_classes": "truth-anchor pairs x classes",
                  "positive_slots": "the number of slots a truth writes (a mean over a masked target tensor)",
                  "positive_slots_classes": "written slots x classes",
                  "heads": "the number of heads"}


def _describe_factor(term: str, f: TermFactor, example: str = "") -> str:
    """A fitted factor in words: the quantity it divides by (with an example count), the plain weight."""
    if not f.factored:
        return (f"scales the {term} term by a factor near {f.weight:.6g}/{f.reduction} that no known count "
                f"(batch, slots, truth-anchor pairs, classes, heads) and plain constant explains in every case")
    parts = []
    if f.reduction != "sum":
        parts.append(f"divides the {term} term by {QUANTITY_WORDS[f.reduction]} (a mean{example})")
    if f.weight != 1.0:
        parts.append(f"multiplies the {term} term by {f.weight:g}")
    return " and ".join(parts)


def _example(suite: Suite, structure: Variant, idx: Sequence[int], group: str, reduction: str) -> str:
    """", 6144 in yolov4#3": the quantity's value in the first searched case."""
    if not idx:
        return ""
    value = suite.quantities(idx[0], structure, group).get(reduction)
    return f", {value:g} in {suite.cases[idx[0]].name}" if value is not None else ""


def _describe(deviation_id: str, params: dict[str, Any]) -> str:
    dev = BY_ID[deviation_id]
    extra = [f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items()
             if (k not in (dev.switch or {}) or k in dev.params) and v != getattr(DARKNET, k)]
    return dev.port_does + (f" ({', '.join(extra)})" if extra else "")


def _explanation(suite: Suite, findings: list[Finding], final: Score, baseline: Score, idx: Sequence[int],
                 seconds: float) -> Explanation:
    remains = {t: int(sum(int(c[k]) for c in final.per_case.values())) for k, t in enumerate(TERMS)}
    reproduced = sum(1 for c in final.per_case.values() if not c.sum())
    elements = sum(int(c.case.input.size) for c in suite.cases)
    first = _first_difference(suite, final) if final.total else None
    return Explanation(findings, final.variant, len(suite.cases), reproduced, elements, final.total, baseline.total,
                       {t: n for t, n in remains.items() if n}, first, seconds,
                       tuple(suite.cases[i].name for i in idx))


def _first_difference(suite: Suite, score: Score) -> str | None:
    """Where the first element still outside the rule is, with both values."""
    for i, counts in score.per_case.items():
        if not counts.sum():
            continue
        base = without_factors(score.variant)
        model = apply_factors(suite.chained(i, base), score.factors,
                       {name: suite.quantities(i, base, name) for name, *_ in GROUPS})
        cand = suite.cand[i]
        rule = suite.cases[i].rule
        for k, term in enumerate(TERMS):
            if not counts[k]:
                continue
            c, m = cand[:, :, term_rows(k)], model[:, :, term_rows(k)]
            b, a, e, j, ii = (int(v[0]) for v in np.nonzero(outside_mask(c, m, rule.for_term(term))))
            entry = k if k < 5 else 5 + e
            return (f"{suite.cases[i].name}: {term} at image {b}, anchor {a}, cell (j={j}, i={ii}): yours "
                    f"{c[b, a, e, j, ii]:.6g}, the variant's {m[b, a, e, j, ii]:.6g}"
                    + (f" (class {entry - 5})" if k == 5 else ""))
    return None
