"""The explanation search (parity.deviations.search): it names exactly the deviations a port has.

Independent evidence first: twelve porter-style losses written the way
porters write them (tests/porters, never assembled from the switches) must be
explained by exactly their documented sets. Then random combinations of the
switches (the full 200 run in ``make search-proof``), this project's own port
(no deviation), the fitting rules, and the report that leads with the answer.
"""
from __future__ import annotations

import dataclasses
import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from parity.cases import suite_refs
from parity.deviations.fit import TermFactor, fit_factor, fit_ratio_limit, fit_threshold, plain, plainest_in
from parity.deviations.proof import check_combination, dense_cases, draw, variant_cases
from parity.deviations.search import SearchCase, search
from parity.deviations.variant import Variant
from parity.suite import RunOptions, run_suite
from porters import PORTERS, porter_cases, porter_delta

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]


def _same_switches(found: Variant, documented: Variant) -> list[str]:
    """Fields where the search's variant and the documented one differ (floats to 1e-4 relative)."""
    out = []
    for f in dataclasses.fields(Variant):
        a, b = getattr(found, f.name), getattr(documented, f.name)
        if isinstance(a, float) and isinstance(b, float):
            if not np.isclose(a, b, rtol=1e-4, atol=0):
                out.append(f"{f.name}: {a} vs {b}")
        elif a != b and f.name != "heads":
            out.append(f"{f.name}: {a!r} vs {b!r}")
    return out


@pytest.mark.parametrize("porter", PORTERS, ids=[p.name for p in PORTERS])
def test_an_independent_porter_loss_is_explained_by_exactly_its_documented_set(porter):
    cases = [SearchCase(f"{porter.profile}-{k}", c, porter_delta(porter.loss, c))
             for k, c in enumerate(porter_cases(porter.profile))]
    found = search(cases)
    documented = set(porter.documented)
    assert found.ids == documented, (f"missing {sorted(documented - found.ids)}, "
                                     f"extra {sorted(found.ids - documented)}")
    assert found.exact and found.cases_reproduced == len(cases)
    assert not _same_switches(found.variant, porter.variant), _same_switches(found.variant, porter.variant)
    assert all(f.accounts_for > 0 for f in found.findings), [(f.id, f.accounts_for) for f in found.findings]


def test_the_porter_losses_span_both_profiles_and_at_least_five_families():
    from parity.deviations.catalogue import BY_ID
    assert len(PORTERS) >= 12
    assert {p.profile for p in PORTERS} == {"yolov3", "yolov4"}
    families = {BY_ID[d].family for p in PORTERS for d in p.documented}
    assert len(families) >= 5, families
    assert all(2 <= len(p.documented) <= 8 for p in PORTERS)


@pytest.mark.parametrize("seed", range(6))
def test_a_random_combination_of_switches_is_recovered_without_false_names(seed):
    profile = ("yolov3", "yolov4")[seed % 2]
    cases = dense_cases(profile)
    combination = draw(random.Random(1000 + seed), profile, cases)
    outcome = check_combination(combination, cases)
    assert not outcome.false_names, (sorted(combination.ids), sorted(outcome.explanation.ids))
    assert outcome.exact, (sorted(combination.ids), sorted(outcome.explanation.ids),
                           outcome.explanation.elements_outside)


def test_this_projects_own_port_gets_no_deviation():
    cases = variant_cases(dense_cases("yolov4"), Variant())
    found = search(cases)
    assert found.findings == [] and found.exact and found.outside_before == 0


def test_a_passing_run_has_no_explanation_and_a_failing_one_has_it_in_every_report():
    from parity.report.html import render_html
    refs = suite_refs(["yolov3"], [], [], 2, 0)
    passing = run_suite(refs, RunOptions(search=True))
    assert passing.passed and passing.explanation is None
    failing = run_suite(refs, RunOptions(candidate="naive", search=True, finite_only=True))
    assert not failing.passed
    changes = {c["id"] for c in failing.explanation["changes"]}
    assert "xy_logistic_derivative" in changes, changes
    assert all(c.candidate_delta is None for c in failing.cases)     # the deltas are not kept
    page = render_html(failing)
    assert page.index("layer with these") < page.index("Failing cases") and all(c in page for c in changes)
    assert json.loads(json.dumps(failing.to_json(), default=float))["explanation"]["changes"]


def test_an_explanation_that_does_not_reproduce_everything_says_what_remains():
    cases = variant_cases(dense_cases("yolov3", count=3), Variant(xy_logistic_grad=True))
    broken = [dataclasses.replace(c, candidate=c.candidate * np.where(np.arange(c.candidate.size).reshape(
        c.candidate.shape) % 7 == 0, np.float32(1.37), np.float32(1))) for c in cases]
    found = search(broken)
    assert not found.exact and found.elements_outside > 0
    assert found.first is not None and "case" in found.first
    assert sum(found.remains.values()) == found.elements_outside


class TestFit:
    def test_plain_constants_have_one_or_two_significant_digits(self):
        assert plain(0.05) == 0.05 and plain(0.5000001) == 0.5 and plain(2.0) == 2.0
        assert plain(0.8889) is None and plain(1 / 3) is None and plain(0.0) is None

    def test_the_plainest_number_in_an_interval(self):
        assert plainest_in(0.41, 0.62, closed_lo=True, closed_hi=False) == 0.5
        assert plainest_in(0.7, 0.71, closed_lo=False, closed_hi=True) == 0.71
        assert plainest_in(0.5, 0.5, closed_lo=True, closed_hi=False) is None

    def test_a_mean_over_the_batch_is_told_from_a_constant_by_varying_batches(self):
        q = [{"sum": 1, "batch": b, "slots": b * 192, "positives": p, "positives_classes": p * 20}
             for b, p in ((1, 5), (2, 9), (3, 14))]
        assert fit_factor([0.5 / 1, 0.5 / 2, 0.5 / 3], q) == TermFactor("batch", 0.5)
        assert fit_factor([1 / 5, 1 / 9, 1 / 14], q) == TermFactor("positives", 1.0)
        assert fit_factor([0.05, 0.05, 0.05], q) == TermFactor("sum", 0.05)

    def test_a_left_out_normalizer_is_a_factor_of_its_own(self):
        q = [{"sum": 1, "batch": b, "normalizer": 0.75} for b in (1, 2)]
        got = fit_factor([2.0 / 0.75, 2.0 / 0.75], q)
        assert got == TermFactor("sum", 2.0, normalizer_ignored=True)

    def test_factors_no_count_explains_are_marked_unfactored(self):
        q = [{"sum": 1, "batch": b} for b in (1, 2, 3)]
        assert not fit_factor([0.123, 0.77, 0.31], q).factored

    def test_thresholds_are_fitted_as_intervals(self):
        assert fit_threshold(np.array([0.2, 0.44]), np.array([0.52, 0.9])) == 0.5
        assert fit_threshold(np.array([0.6]), np.array([0.5])) is None
        assert fit_ratio_limit(np.array([1.5, 3.9]), np.array([4.0, 7.0])) == 4.0


def test_the_text_report_leads_with_the_changes_and_the_json_holds_them(tmp_path):
    out = tmp_path / "run.json"
    env_path = f"{ROOT / 'tests'}{__import__('os').pathsep}{ROOT}"
    proc = subprocess.run([sys.executable, "-m", "parity.cli", "run", "--profile", "yolov3", "--cases", "2",
                           "--candidate", "porters.yolov3_style:keras_yolo3", "--convention", "loss",
                           "--finite-only", "--json", str(out)],
                          capture_output=True, text=True, cwd=tmp_path, timeout=600,
                          env={**__import__("os").environ, "PYTHONPATH": env_path, "COLUMNS": "100"})
    assert proc.returncode == 1, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    lead = next(k for k, line in enumerate(lines) if "Your loss = darknet's [yolo] layer with these" in line)
    first_table = next((k for k, line in enumerate(lines) if line.startswith(("┌", "+", "Term x role"))), len(lines))
    assert lead < first_table
    assert "fix:" in proc.stdout and "darknet instead" in proc.stdout
    data = json.loads(out.read_text())
    changes = {c["id"] for c in data["explanation"]["changes"]}
    assert {"box_last_writer", "ignore_threshold"} <= changes, changes


def test_no_search_leaves_the_explanation_out(tmp_path):
    out = tmp_path / "run.json"
    proc = subprocess.run([sys.executable, "-m", "parity.cli", "run", "--profile", "yolov3", "--cases", "3",
                           "--candidate", "naive", "--finite-only", "--no-search", "--json", str(out)],
                          capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "Your loss = darknet's" not in proc.stdout
    assert json.loads(out.read_text())["explanation"] is None


def test_the_box_gradient_fix_snippet_runs_and_gives_darknets_box_delta():
    """The fix the report prints for an autograd box loss is code that works, not a sketch."""
    from parity.cases import case_from_spec
    from parity.deviations.catalogue import BY_ID
    from parity.torch import yolo_forward
    namespace = {"torch": torch}
    exec(BY_ID["box_grad_autograd"].snippet, namespace)
    case = case_from_spec("yolov3#2")
    head = torch.tensor(case.input).requires_grad_(True)
    truth = torch.tensor(case.truth)
    namespace["DarknetBoxGrad"].apply(head, truth, case.config, (head ** 2).sum()).backward()
    delta = yolo_forward(torch.tensor(case.input), truth, case.config).delta
    B, _, H, W = delta.shape
    grad, want = head.grad.view(B, case.config.n, -1, H, W), delta.view(B, case.config.n, -1, H, W)
    assert torch.equal(grad[:, :, 0:4], -want[:, :, 0:4]) and not grad[:, :, 4:].any()


def test_every_factor_the_search_can_name_is_a_catalogue_entry():
    from parity.deviations.catalogue import BY_ID
    from parity.deviations.runs import GROUPS, NORMALIZERS
    from parity.deviations.search import NORMALIZER_IDS
    from parity.deviations.variant import REDUCTIONS
    for group, *_ in GROUPS:
        for q in REDUCTIONS:
            if q != "sum" and (group == "cls" or not q.endswith("_classes")):
                assert f"{group}_mean_over_{q}" in BY_ID, (group, q)
        if NORMALIZERS[group]:
            assert NORMALIZER_IDS[group] in BY_ID
    assert {"term_weight", "sign_flipped"} <= set(BY_ID)


def test_option_switches_leave_a_pjreddie_config_as_darknet_reads_it():
    """pjreddie reads none of AlexeyAB's options: a mixed run's search may try them on its cases."""
    from parity.cases import case_from_spec
    from parity.deviations.variant_forward import variant_forward
    from parity.torch import yolo_forward
    case = case_from_spec("yolov3-pjreddie#0")
    x, t = torch.tensor(case.input), torch.tensor(case.truth)
    changed = Variant(box_kind="ciou", max_delta="ignored", objectness_smooth="ignored", cls_focal="ignored",
                      cls_multipliers="ignored")
    assert torch.equal(variant_forward(x, t, case.config, changed).delta, yolo_forward(x, t, case.config).delta)
