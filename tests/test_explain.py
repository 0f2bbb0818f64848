"""parity.explain: one slot's reasoning as data, every number from the C reference."""
from __future__ import annotations

import numpy as np
import pytest

from parity.errors import ParityError
from parity.explain import explain_slot
from parity.generate import random_case, random_config
from parity.reference import run_reference
from parity.roles import ROLE_BEST_ANCHOR, ROLE_EXTRA_ANCHOR, ROLE_IGNORED


def _case_with(bit: int, flavor: str = "alexeyab"):
    for seed in range(60):
        config = random_config(np.random.default_rng([31, seed]), flavor)
        case = random_case(seed, config, flavor=flavor)
        ref = run_reference(case.config, case.input, case.truth, flavor=flavor, decisions=True)
        hits = np.argwhere((ref.roles & bit) != 0)
        if hits.size:
            return case, ref, tuple(int(v) for v in hits[0])
    raise AssertionError("no case reaches the role")


@pytest.mark.parametrize("bit", [ROLE_BEST_ANCHOR, ROLE_EXTRA_ANCHOR, ROLE_IGNORED])
def test_the_best_truths_iou_is_the_decisions_best_iou(bit):
    case, ref, slot = _case_with(bit)
    view = explain_slot(case, slot, all_truths=True)
    assert view.best_iou == pytest.approx(float(ref.decisions.best_iou[slot]), abs=0)
    best = [t for t in view.truths if t.best]
    if view.best_truth is None:
        assert not best and view.best_iou == 0
    else:
        assert len(best) == 1 and best[0].index == view.best_truth
        assert best[0].iou == view.best_iou          # the C's box_iou, the number the pass compared
        assert max(t.iou for t in view.truths) == view.best_iou


def test_assigned_truths_are_the_reference_writes_at_the_slot():
    case, ref, slot = _case_with(ROLE_EXTRA_ANCHOR)
    view = explain_slot(case, slot)
    asg = ref.decisions.assignments
    k = asg.at(*slot)
    got = [(a.truth, a.through == "extra", a.anchor) for a in view.assigned if a.through != "truth_thresh"]
    assert got == [(int(asg.t[q]), bool(asg.extra[q]), int(asg.anchor[q])) for q in k]
    extra = [a for a in view.assigned if a.through == "extra"]
    assert extra and all(a.thresh_iou is not None and a.thresh_iou > case.config.iou_thresh for a in extra)


def test_a_slot_outside_the_case_is_refused_with_the_sizes():
    case, _, _ = _case_with(ROLE_BEST_ANCHOR)
    b = case.input.shape[0]
    with pytest.raises(ParityError, match=f"image index b={b} is outside the valid range"):
        explain_slot(case, (b, 0, 0, 0))
