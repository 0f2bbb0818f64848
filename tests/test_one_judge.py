"""One judge, one comparator, one suite runner (issue 8).

- The diagnosis has no tolerance of its own: a tighter rule that makes the
  comparison fail makes the diagnosis speak, naming the cause or at least
  "unexplained" with where.
- Borderline excuses come from the reference's decisions, never from the
  candidate's: a candidate whose own decisions are wrong cannot excuse itself.
- The CLI and the pytest plugin run the same suite function and reach the
  same verdict on the same run.
"""
from __future__ import annotations

import json

import numpy as np
import torch

import parity.suite as suite
from parity.candidates import Candidate, load_candidate
from parity.cases import suite_refs
from parity.cli import main as cli_main
from parity.compare import compare
from parity.generate import random_case, random_config
from parity.reference import run_reference
from parity.result import LayerRun
from parity.suite import RunOptions, compare_case, run_suite
from parity.tolerance import Tolerance, ToleranceRule
from parity.torch import yolo_forward

pytest_plugins = ["pytester"]

TIGHT = ToleranceRule(Tolerance(1e-7, 1e-7), source="test: tight")


def _case(seed: int = 3):
    config = random_config(np.random.default_rng([8, seed]), "alexeyab").replace(iou_thresh=1.0)
    return random_case(seed, config)


def _scaled_objectness(factor: float):
    def fn(x, t, c):
        d = yolo_forward(x, t, c).delta.clone()
        b, _, h, w = d.shape
        d.view(b, c.n, 5 + c.classes, h, w)[:, :, 4] *= factor
        return d
    return fn


def test_default_rule_passes_a_tiny_scale_the_tight_rule_fails_and_the_diagnosis_names_it():
    case = _case()
    candidate = Candidate("obj x 1.00002", _scaled_objectness(1.00002), "delta")
    loose = compare_case(case, RunOptions(), candidate=candidate)
    assert loose.passed, "1.00002 is within the default rule"
    tight = compare_case(case, RunOptions(), rule=TIGHT, candidate=candidate)
    assert not tight.passed and tight.value_mismatches > 0
    causes = {(c["term"], c["cause"]) for c in tight.causes}
    assert ("obj", "constant_factor") in causes, tight.causes


def test_a_tight_rule_with_patternless_noise_gets_unexplained_with_where():
    case = _case(5)

    def noisy(x, t, c):
        d = yolo_forward(x, t, c).delta.clone()
        g = torch.Generator().manual_seed(0)
        written = d != 0
        d[written] += 1e-6 * torch.randn(int(written.sum()), generator=g)
        return d
    res = compare_case(case, RunOptions(), rule=TIGHT, candidate=Candidate("noise", noisy, "delta"))
    assert not res.passed
    assert res.causes, "a failing comparison must get at least one cause"
    assert any(c["cause"] == "unexplained" and "first at image" in c["evidence"] for c in res.causes), res.causes


def test_borderline_flags_come_from_the_reference_not_the_candidate():
    case = _case(7)
    ref = run_reference(case.config, case.input, case.truth, flavor=case.flavor, decisions=True)
    port = yolo_forward(torch.from_numpy(case.input), torch.from_numpy(case.truth), case.config, case.flavor)
    # A candidate whose own decisions claim every slot sits on a threshold excuses nothing.
    lying = port.numpy()
    lying.decisions.best_iou[:] = case.config.ignore_thresh
    wrong_delta = lying.delta.copy()
    wrong_delta[wrong_delta != 0] *= 2
    cand = LayerRun(lying.output, wrong_delta, lying.stats, lying.roles, lying.decisions, backend="torch")
    diff = compare(ref, cand, case=case)
    assert not diff.passed and diff.value_mismatches > 0
    # Judged by the reference's decisions, the port itself agrees exactly.
    assert compare(ref, port, case=case).passed


def test_the_mask_marks_exactly_the_failing_elements():
    case = _case(9)
    ref = run_reference(case.config, case.input, case.truth, flavor=case.flavor, decisions=True)
    delta = ref.delta.copy()
    b, ch, j, i = (int(v) for v in np.argwhere(delta != 0)[0])
    delta[b, ch, j, i] *= 3
    diff = compare(ref, LayerRun(None, delta, None, backend="candidate"), case=case)
    assert int(diff.mask.sum()) == diff.value_mismatches + diff.decision_mismatches == 1
    E = 5 + case.config.classes
    assert diff.mask[b, ch // E, ch % E, j, i]


def test_cli_and_plugin_run_the_same_suite_function_with_the_same_verdict(pytester, monkeypatch, tmp_path):
    calls = []
    real = suite.run_suite

    def spy(*args, **kwargs):
        calls.append(kwargs.get("candidate"))
        return real(*args, **kwargs)
    monkeypatch.setattr(suite, "run_suite", spy)
    out = tmp_path / "cli.json"
    code = cli_main(["run", "--profile", "yolov3", "--cases", "2", "--candidate", "naive", "--json", str(out)])
    cli = json.loads(out.read_text())
    pytester.makepyfile(test_user="""
def test_naive(darknet_parity):
    darknet_parity.check("naive", profile="yolov3", cases=2)
""")
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    assert len(calls) == 2, "the CLI and the plugin must both call parity.suite.run_suite"
    plugin_failed = result.ret != 0
    assert code == 1 and not cli["passed"] and plugin_failed, "the naive loss fails through both"
    # The same cases, the same per-case verdicts, from the shared runner called in process.
    direct = run_suite(suite_refs(["yolov3"], [], [], 2, 0), RunOptions(candidate="naive"),
                       candidate=load_candidate("naive"))
    assert len(direct.cases) == len(cli["cases"])
    assert [c.passed for c in direct.cases] == [c["passed"] for c in cli["cases"]]


def test_coverage_is_reported_but_fails_only_when_required():
    refs = suite_refs(["yolov4"], [], [], 1, 0)
    plain = run_suite(refs, RunOptions())
    assert plain.missing_branches, "one sample cannot reach every branch yolov4 enables"
    assert plain.passed
    strict = run_suite(refs, RunOptions(require_coverage=True))
    assert not strict.passed


def test_required_coverage_never_fails_a_single_shard_only_the_merged_whole():
    from parity.cases import shard
    from parity.suite import merge

    refs = suite_refs(["yolov4"], [], [], 1, 0)
    opts = RunOptions(require_coverage=True)
    shards = [run_suite(shard(refs, f"{i}/2"), opts, shard_spec=f"{i}/2") for i in (1, 2)]
    assert all(s.missing_branches and s.passed for s in shards), "a shard alone is never judged on coverage"
    whole = merge(shards)
    assert whole.whole_suite and whole.missing_branches and not whole.passed
