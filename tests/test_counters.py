"""darknet's two counts (issue 11, point 7): the printed ``count`` and the raw ``count_raw``.

AlexeyAB prints ``count`` after ``if (count == 0) count = 1``; pjreddie prints
the raw number. Every backend that knows the number reports both, recordings
carry both (``stats.count`` printed, ``stats.count_raw`` raw where present),
and reading a recording that lacks ``count_raw`` recovers it only where the
printed value says it unambiguously.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from parity.config import YoloConfig
from parity.reference import run_reference
from parity.result import LayerStats
from parity.torch import yolo_forward

EMPTY_TRUTH = np.zeros((1, 4, 6), np.float32)


def _runs(flavor: str, truth: np.ndarray) -> tuple[LayerStats, LayerStats]:
    config = YoloConfig(classes=2, num=1, mask=(0,), anchors=(10.0, 12.0), net_w=64, net_h=64, flavor=flavor)
    x = np.random.default_rng(11).normal(size=(1, 7, 2, 2)).astype(np.float32)
    c = run_reference(config, x, truth, flavor=flavor).stats
    t = yolo_forward(torch.from_numpy(x), torch.from_numpy(truth), config, flavor).numpy().stats.host()
    return c, t


@pytest.mark.parametrize("flavor,printed", [("alexeyab", 1), ("pjreddie", 0)])
def test_no_assignment_prints_each_flavors_count_and_raw_zero(flavor, printed):
    for stats in _runs(flavor, EMPTY_TRUTH):
        assert (stats.count, stats.count_raw) == (printed, 0)
        assert stats.as_dict()["count"] == printed and stats.as_dict()["count_raw"] == 0


@pytest.mark.parametrize("flavor", ["alexeyab", "pjreddie"])
def test_assigned_truths_are_counted_alike_in_both_fields(flavor):
    truth = EMPTY_TRUTH.copy()
    truth[0, 0, :5] = (0.3, 0.3, 0.2, 0.2, 1)
    truth[0, 1, :5] = (0.7, 0.7, 0.25, 0.3, 0)
    for stats in _runs(flavor, truth):
        assert stats.count == stats.count_raw == 2


@pytest.mark.parametrize("recorded,expected", [
    ({"count": 1, "count_raw": 0}, (1, 0)),
    ({"count": 3}, (3, 3)),           # printed 3: the clamp did nothing
    ({"count": 0}, (0, 0)),           # pjreddie prints the raw 0
    ({"count": 1}, (1, -1)),          # 1 printed: 0 or 1 assigned, unknown
    ({"assigned": 4, "count": 4}, (4, 4)),
    ({}, (-1, -1)),
])
def test_recorded_counts_read_as_printed_and_raw(recorded, expected):
    stats = LayerStats.from_mapping(recorded)
    assert (stats.count, stats.count_raw) == expected

