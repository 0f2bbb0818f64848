"""parity.torch against its oracles: the C reference (random cases) and real darknet (recordings).

Bar (issue 3): zero decision mismatches (delta zero vs nonzero, and the
per-cell roles: ignored, class-match blocked, truth_thresh, best/extra
anchor, rewritten, class shortcut, averaged), every element within
1e-5 + 1e-4*|reference|, counters equal and cost within the same rule.
All through the one comparator (``parity.compare.compare``); the port is
exact, so not even borderline mismatches are allowed here.
The CUDA class runs the same comparison on a GPU and skips without one.
The default run compares about a quarter of the random cases (spread, every
rarely reached branch kept); ``make fuzz`` compares all of them.
"""
from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest
import torch

from parity.case import Case, load_case
from parity.compare import compare
from parity.diff import Agreement
from parity.generate import random_case, random_config
from parity.reference import run_reference
from parity.replay import ofast_nonfinite, shared_recorded_dir
from parity.tolerance import ToleranceRule, build_of
from parity.torch import yolo_forward

from measured import record

RANDOM_CASES = 2000
# The default run compares a spread quarter of them plus every case a rarely reached branch needs
# (so each branch below is still compared at least twice); ``make fuzz`` sets this to compare all.
FULL_ENV = "PARITY_FULL_AGREEMENT"
DEFAULT_STRIDE = 4
BRANCHES = ("ignore", "classmatch_blocked", "objectness_smooth", "truth_thresh", "anchor_outside_mask",
            "iou_thresh_extra", "rewritten_bbox", "class_shortcut", "averaging_divides", "iou_loss_mse",
            "iou_loss_iou", "iou_loss_giou", "iou_loss_diou", "iou_loss_ciou", "max_delta_clip",
            "fix_nan_inf", "class_oob", "obj_nonfinite", "focal", "label_smooth")


def torch_agreement(case: Case, reference, device: str, label: str) -> Agreement:
    """The port on ``device`` against ``reference`` (a LayerRun), judged by the C reference's decisions."""
    judge = run_reference(case.config, case.input, case.truth, flavor=case.flavor, decisions=True)
    run = yolo_forward(torch.from_numpy(case.input).to(device), torch.from_numpy(case.truth).to(device),
                       case.config, case.flavor)
    # A recording of darknet's -Ofast build is judged with the -Ofast bound (its meta says so).
    rule = ToleranceRule().for_build(build_of(case.meta.get("build")) if reference is not None else "o2")
    agreement = Agreement.of(compare(reference or judge, run, rule, case=case, decisions=judge))
    record(f"PyTorch on {device} vs {label}", agreement.max_abs, agreement.max_rel)
    assert agreement.borderline == 0, f"{case.name}: {agreement.borderline} borderline mismatches"
    return agreement


@lru_cache(maxsize=None)
def random_cases(count: int = RANDOM_CASES) -> list[Case]:
    """Configs drawn across every option (both flavors), cases with planted overlaps; some NaN/Inf."""
    cases = []
    for k in range(count):
        flavor = "pjreddie" if k % 5 == 0 else "alexeyab"
        config = random_config(np.random.default_rng([2024, k]), flavor)
        cases.append(random_case(10_000 + k, config, flavor=flavor, nonfinite=3 if k % 9 == 0 else 0))
    return cases


@lru_cache(maxsize=None)
def compared_cases() -> tuple[Case, ...]:
    """Every case with PARITY_FULL_AGREEMENT=1; otherwise every DEFAULT_STRIDE-th plus those rare branches need."""
    cases = random_cases()
    if os.environ.get(FULL_ENV):
        return tuple(cases)
    reached = [{name for name, n in run_reference(c.config, c.input, c.truth, flavor=c.flavor).branches.items() if n}
               for c in cases]
    picked = set(range(0, len(cases), DEFAULT_STRIDE))
    seen = {name: sum(name in reached[k] for k in picked) for name in BRANCHES}
    for k, names in enumerate(reached):
        if k not in picked and any(seen[name] < 2 for name in names & seen.keys()):
            picked.add(k)
            for name in names & seen.keys():
                seen[name] += 1
    return tuple(cases[k] for k in sorted(picked))


CHUNKS = 8


def _check_random(device: str, chunk: int) -> None:
    failures = []
    for case in compared_cases()[chunk::CHUNKS]:
        agreement = torch_agreement(case, None, device, "C reference (random cases)")
        if not agreement:
            failures.append(f"{case.meta['generator']}: {agreement.decision_mismatches} decisions, "
                            f"{agreement.value_mismatches} values, stats {agreement.stats_mismatches}")
    assert not failures, "\n".join(failures[:10])


class TestTorchVsCReferenceCPU:
    @pytest.mark.parametrize("chunk", range(CHUNKS), ids=lambda k: f"chunk{k}")
    def test_random_cases_agree(self, chunk):
        _check_random("cpu", chunk)

    def test_random_cases_span_every_branch(self):
        # The comparison above means something only if the compared cases reach darknet's branches.
        seen: dict[str, int] = {}
        for case in compared_cases():
            for name, count in run_reference(case.config, case.input, case.truth, flavor=case.flavor).branches.items():
                seen[name] = seen.get(name, 0) + (count > 0)
        for name in BRANCHES:
            assert seen.get(name, 0) >= 2, f"only {seen.get(name, 0)} compared random cases reach {name!r}"
        if not os.environ.get(FULL_ENV):   # the default subset is a spread, not a prefix
            assert RANDOM_CASES // DEFAULT_STRIDE <= len(compared_cases()) < RANDOM_CASES


RECORDED = shared_recorded_dir()


def _recorded(subset: str) -> list:
    paths = sorted((RECORDED / subset).glob("*.npz")) if RECORDED else []
    if not paths:
        marks = [] if os.environ.get("CI") else [pytest.mark.skip(reason="../shared/recorded is absent")]
        return [pytest.param(None, id=f"{subset}-missing", marks=marks)]
    return [pytest.param(p, id=f"{subset}/{p.stem}") for p in paths]


class TestTorchVsRecordedDarknet:
    @pytest.mark.parametrize("path", _recorded("alexeyab-O2") + _recorded("alexeyab-extra-O2") + _recorded("alexeyab")
                             + _recorded("alexeyab-extra") + _recorded("pjreddie"))
    def test_recorded_case_agrees(self, path: Path | None):
        assert path is not None, "CI must have the recorded dev set (../shared/recorded)"
        case = load_case(path)
        if ofast_nonfinite(case):
            assert (path.parent.parent / f"{path.parent.name}-O2" / path.name).exists()  # its -O2 twin is compared
            return
        agreement = torch_agreement(case, case.recorded_run(), "cpu", f"recorded {path.parent.name}")
        assert agreement, agreement


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
class TestTorchVsCReferenceCUDA:
    @pytest.mark.parametrize("chunk", range(CHUNKS), ids=lambda k: f"chunk{k}")
    def test_random_cases_agree_on_cuda(self, chunk):
        _check_random("cuda", chunk)

    @pytest.mark.parametrize("path", _recorded("alexeyab-O2") + _recorded("pjreddie"))
    def test_recorded_case_agrees_on_cuda(self, path):
        assert path is not None
        case = load_case(path)
        assert torch_agreement(case, case.recorded_run(), "cuda", f"recorded {path.parent.name}")

