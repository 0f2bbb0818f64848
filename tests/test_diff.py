"""The term-by-term diff: decisions vs values, borderline scope, tolerance reporting."""
from __future__ import annotations

import numpy as np
import pytest

from parity.compare import add_exact, compare, ulps
from parity.result import LayerRun
from parity.tolerance import Tolerance, ToleranceRule, load_tolerances
from parity.errors import ParityError
from parity.facts import slot_facts
from parity.generate import random_case, random_config
from parity.reference import run_reference
from parity.roles import ROLE_BEST_ANCHOR

def diff_case(name, case, ref, cand_delta, facts, *, rule=ToleranceRule(), exact_delta=None, per_class=False):
    """The one comparator on a candidate delta, with these facts (which the tests may edit)."""
    res = compare(ref, LayerRun(None, cand_delta, None, backend="candidate"), rule, case=case, name=name,
                  facts=facts, per_class=per_class)
    if exact_delta is not None:
        add_exact(res, exact_delta, 5 + facts.config.classes)
    return res


@pytest.fixture(scope="module")
def base():
    config = random_config(np.random.default_rng([4, 2]), "alexeyab").replace(iou_thresh=1.0)
    for seed in range(50):
        case = random_case(seed, config)
        ref = run_reference(case.config, case.input, case.truth, decisions=True)
        if ((ref.roles & ROLE_BEST_ANCHOR) != 0).any():
            facts = slot_facts(case, ref)
            return case, ref, facts
    raise AssertionError("no case with an assigned slot")


def _view(d, config):
    b, _, h, w = d.shape
    return d.reshape(b, config.n, 5 + config.classes, h, w)


def _positive_slot(ref):
    return tuple(int(v) for v in np.argwhere((ref.roles & ROLE_BEST_ANCHOR) != 0)[0])


class TestDecisionsAndValues:
    def test_identical_delta_passes_and_cells_cover_every_element(self, base):
        case, ref, facts = base
        res = diff_case("same", case, ref, ref.delta.copy(), facts)
        assert res.passed and res.decision_mismatches == res.value_mismatches == 0
        assert sum(c.elements for c in res.cells) == ref.delta.size
        assert sum(c.written for c in res.cells) == int((ref.delta != 0).sum())

    def test_a_dropped_delta_is_a_decision_not_a_value(self, base):
        case, ref, facts = base
        b, a, j, i = _positive_slot(ref)
        cand = ref.delta.copy()
        _view(cand, case.config)[b, a, 0, j, i] = 0.0
        res = diff_case("drop", case, ref, cand, facts)
        assert (res.decision_mismatches, res.value_mismatches) == (1, 0)
        m = res.mismatches[0]
        assert (m.kind, m.term, m.image, m.anchor, m.j, m.i, m.role) == ("decision", "x", b, a, j, i, "best")
        assert m.context["path"] and "assigned" in " ".join(m.context["path"])

    def test_value_error_and_smallest_passing_tolerance(self, base):
        case, ref, facts = base
        b, a, j, i = _positive_slot(ref)
        cand = ref.delta.copy()
        r = float(_view(ref.delta, case.config)[b, a, 2, j, i])
        _view(cand, case.config)[b, a, 2, j, i] = np.float32(r + 1e-3 * abs(r) + 1e-4)
        res = diff_case("value", case, ref, cand, facts)
        assert (res.decision_mismatches, res.value_mismatches) == (0, 1)
        err = abs(float(np.float32(r + 1e-3 * abs(r) + 1e-4)) - r)
        # atol needed at rtol 1e-4: err - 1e-4*|r|; rtol needed at atol 1e-5: (err - 1e-5)/|r|
        assert res.needed["w"]["atol"] == pytest.approx(err - 1e-4 * abs(r), rel=1e-6)
        assert res.needed["w"]["rtol"] == pytest.approx((err - 1e-5) / abs(r), rel=1e-6)
        assert res.heatmaps["w"][j][i] == 1

    def test_within_tolerance_passes(self, base):
        case, ref, facts = base
        b, a, j, i = _positive_slot(ref)
        cand = ref.delta.copy()
        r = float(_view(ref.delta, case.config)[b, a, 2, j, i])
        _view(cand, case.config)[b, a, 2, j, i] = np.float32(r + 0.5e-5)
        assert diff_case("close", case, ref, cand, facts).passed

    def test_nan_agrees_only_with_nan(self, base):
        case, ref, facts = base
        b, a, j, i = _positive_slot(ref)
        cand = ref.delta.copy()
        _view(cand, case.config)[b, a, 0, j, i] = np.nan
        res = diff_case("nan", case, ref, cand, facts)
        assert res.value_mismatches == 1
        both = ref.delta.copy()
        _view(both, case.config)[b, a, 0, j, i] = np.nan
        assert diff_case("nan2", case, LayerRun(ref.output, both, ref.stats, ref.roles, ref.decisions), both.copy(),
                         facts).passed

    def test_exact_value_says_which_side_is_closer(self, base):
        case, ref, facts = base
        b, a, j, i = _positive_slot(ref)
        cand = ref.delta.copy()
        _view(cand, case.config)[b, a, 1, j, i] += 1.0
        res = diff_case("closer", case, ref, cand, facts, exact_delta=ref.delta.astype(np.float64))
        assert res.mismatches[0].closer == "reference" and res.mismatches[0].exact is not None


class TestBorderline:
    def test_objectness_borderline_excuses_only_objectness(self, base):
        case, ref, facts = base
        b, a, j, i = _positive_slot(ref)
        facts.borderline_obj = np.zeros_like(facts.borderline)
        facts.borderline_obj[b, a, j, i] = True
        try:
            cand = ref.delta.copy()
            v = _view(cand, case.config)
            v[b, a, 4, j, i] = 0.0            # the objectness decision flips: borderline
            v[b, a, 0, j, i] += 1.0           # x is still wrong: a failure
            res = diff_case("border", case, ref, cand, facts)
            assert res.borderline == 1 and res.decision_mismatches == 0 and res.value_mismatches == 1
            assert not res.passed
        finally:
            facts.borderline_obj[b, a, j, i] = False

    def test_all_terms_borderline_is_not_a_failure(self, base):
        case, ref, facts = base
        b, a, j, i = _positive_slot(ref)
        facts.borderline[b, a, j, i] = True
        try:
            cand = ref.delta.copy()
            _view(cand, case.config)[b, a, :4, j, i] += 1.0
            res = diff_case("border-all", case, ref, cand, facts)
            assert res.passed and res.borderline == 4
        finally:
            facts.borderline[b, a, j, i] = False


class TestTolerances:
    def test_ulps(self):
        one = np.float32(1.0)
        assert ulps(np.array([one]), np.array([np.nextafter(one, np.float32(2))]))[0] == 1
        assert ulps(np.array([np.float32(-0.0)]), np.array([np.float32(0.0)]))[0] == 0

    def test_per_term_override_from_a_file(self, base, tmp_path):
        case, ref, facts = base
        b, a, j, i = _positive_slot(ref)
        cand = ref.delta.copy()
        _view(cand, case.config)[b, a, 0, j, i] += 0.01
        path = tmp_path / "tol.yaml"
        path.write_text("default: {atol: 1.0e-5, rtol: 1.0e-4}\nterms:\n  x: {atol: 0.1}\n")
        rule = load_tolerances(path)
        assert rule.for_term("x") == Tolerance(0.1, 1e-4) and "x: 0.1" in rule.describe()
        assert diff_case("loose", case, ref, cand, facts, rule=rule).passed
        assert not diff_case("strict", case, ref, cand, facts, rule=ToleranceRule()).passed

    @pytest.mark.parametrize("text,message", [
        ("terms:\n  q: {atol: 1}\n", "unknown term 'q'"),
        ("default: {atol: -1}\n", "must be finite numbers >= 0"),
        ("other: 1\n", "expected keys"),
        ("default: {atol: .nan}\n", "must be finite numbers >= 0"),
    ])
    def test_bad_tolerance_files_are_named(self, tmp_path, text, message):
        path = tmp_path / "bad.yaml"
        path.write_text(text)
        with pytest.raises(ParityError, match=message):
            load_tolerances(path)

    def test_per_class_terms(self, base):
        case, ref, facts = base
        res = diff_case("pc", case, ref, ref.delta.copy(), facts, per_class=True)
        terms = {c.term for c in res.cells}
        assert {"x", "obj", "cls0", f"cls{case.config.classes - 1}"} <= terms and "cls" not in terms
