"""Whole-network candidates (issue 10): one loss over every head of a sample, checked head by head."""
from __future__ import annotations

import warnings

import pytest
import torch

from parity.candidates import Candidate, load_candidate
from parity.cases import shard, suite_refs
from parity.cli import main
from parity.suite import RunOptions, run_suite
from parity.targets import rows_from_targets
from parity.torch import DarknetYoloLoss


def darknet_network(inputs, truth, configs):
    """A port that gets it right: darknet's loss over all heads, from ultralytics-style rows."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rows = rows_from_targets(truth, configs[0])
    return DarknetYoloLoss(list(configs))(inputs, rows)


def balanced_network(inputs, truth, configs):
    """yolov5's habit: per-head balance weights on the objectness (here on the whole head loss)."""
    weights = (4.0, 1.0, 0.4)
    parts = [DarknetYoloLoss(c)(x, rows_from_targets(truth, c)) for x, c in zip(inputs, configs)]
    return sum(w * p for w, p in zip(weights, parts))


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _run(fn, profile="yolov4", cases=2, refs=None):
    refs = refs if refs is not None else suite_refs([profile], [], [], cases, 0)
    return run_suite(refs, RunOptions(), candidate=Candidate("net", fn, None, network=True))


def test_a_correct_whole_network_loss_passes_on_every_head():
    result = _run(darknet_network)
    assert len(result.cases) == 6 and result.passed, [c.causes or c.error for c in result.cases]
    assert {c.meta["convention"] for c in result.cases} == {"loss"}


def test_per_head_balance_weights_fail_per_head_with_the_factor_named():
    result = _run(balanced_network)
    head0 = [c for c in result.cases if c.case.endswith("/head0") and not c.passed]
    head1 = [c for c in result.cases if c.case.endswith("/head1")]
    assert head0 and all(c.passed for c in head1), "head 1 has weight 1: it agrees"
    causes = " ".join(str(cause["evidence"]) for c in head0 for cause in c.causes)
    assert "4" in causes, causes


def test_the_network_runs_once_per_sample():
    calls = []

    def counting(inputs, truth, configs):
        calls.append(len(inputs))
        return darknet_network(inputs, truth, configs)
    _run(counting, cases=3)
    assert calls == [3, 3, 3]


def test_a_shard_with_some_heads_still_gives_the_network_every_head():
    refs = shard(suite_refs(["yolov4"], [], [], 2, 0), "2/4")      # one head of each sample
    seen = []

    def counting(inputs, truth, configs):
        seen.append(len(inputs))
        return darknet_network(inputs, truth, configs)
    result = _run(counting, refs=refs)
    assert len(result.cases) == len(refs) and set(seen) == {3} and result.passed


def test_a_list_with_the_wrong_number_of_heads_is_an_error_naming_it():
    result = _run(lambda inputs, truth, configs: [torch.zeros_like(inputs[0])])
    assert all(c.error and "a list of 3 per-head" in c.error for c in result.cases)


def test_the_cli_runs_a_whole_network_spec(tmp_path, capsys):
    (tmp_path / "net.py").write_text(
        "from parity.candidates import parity_delta\n"
        "def deltas(inputs, truth, configs):\n"
        "    return [parity_delta(x, truth, c) for x, c in zip(inputs, configs)]\n")
    code = main(["run", "--candidate", f"{tmp_path}/net.py:deltas", "--whole-network", "--profile", "yolov3",
                 "--cases", "2", "--jobs", "1"])
    assert code == 0, capsys.readouterr()


def test_builtins_serve_as_whole_network_candidates():
    cand = load_candidate("parity", network=True)
    assert cand.network and _run(cand.fn, cases=1).passed
