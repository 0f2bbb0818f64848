"""Targets converters and darknet's reading rules (issue 10): the rows that reach darknet, no more."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from parity.config import YoloConfig
from parity.errors import DarknetInputWarning, InputError
from parity.reference import run_reference
from parity.targets import read_rows, rows_from_targets, targets_from_rows, truth_from_lists, truth_from_rows

CONFIG = YoloConfig(classes=3, max_boxes=4, mask=(0, 1, 2), num=3, anchors=(10.0, 14, 23, 27, 37, 58),
                    net_w=64, net_h=64)


def _truth(rows):
    t = torch.zeros(2, 6, 6)
    for b, r, vals in rows:
        t[b, r, :5] = torch.tensor(vals, dtype=torch.float32)
    return t


def test_read_rows_drops_what_darknet_drops_and_says_why():
    t = _truth([(0, 0, (0.2, 0.2, 0.1, 0.1, 1)), (0, 1, (0.3, 0.3, 0.1, 0.1, 7)),      # class out of range
                (0, 2, (0.0, 0.4, 0.1, 0.1, 0)), (0, 3, (0.5, 0.5, 0.1, 0.1, 2)),      # x == 0 ends the list
                (1, 0, (0.1, 0.1, 0.1, 0.1, 0)), (1, 1, (0.2, 0.1, 0.1, 0.1, 0)), (1, 2, (0.3, 0.1, 0.1, 0.1, 0)),
                (1, 3, (0.4, 0.1, 0.1, 0.1, 0)), (1, 4, (0.5, 0.1, 0.1, 0.1, 0))])     # the 5th is over max=4
    read = read_rows(t, CONFIG)
    assert read.rows[:, 0].tolist() == [0, 1, 1, 1, 1]
    assert {(d.image, d.row, d.reason) for d in read.dropped} == {
        (0, 1, "class_out_of_range"), (0, 2, "after_terminator"), (0, 3, "after_terminator"), (1, 4, "over_max")}
    # The same count darknet's own reference assigns (one truth each, all reach a best anchor in this mask).
    x = np.zeros((2, 3 * 8, 4, 4), np.float32)
    ref = run_reference(CONFIG, x, t.numpy())
    assert ref.stats.count_raw == read.rows.shape[0]


def test_pjreddie_reads_out_of_range_classes_so_they_are_not_dropped_as_such():
    t = _truth([(0, 0, (0.2, 0.2, 0.1, 0.1, 7))])
    assert not read_rows(t, CONFIG, "pjreddie").dropped


def test_rows_from_targets_warns_once_with_the_reasons():
    t = _truth([(0, 0, (0.2, 0.2, 0.1, 0.1, 1)), (0, 1, (0.3, 0.3, 0.1, 0.1, 9))])
    with pytest.warns(DarknetInputWarning, match="1 class out of range"):
        rows = rows_from_targets(t, CONFIG)
    assert rows.shape == (1, 6)


@pytest.mark.parametrize("layout", ["icxywh", "ixywhc"])
def test_row_layouts_round_trip_through_darknets_reading(layout):
    base = torch.tensor([[1, 2, 0.1, 0.2, 0.3, 0.4], [0, 1, 0.5, 0.6, 0.2, 0.2], [1, 0, 0.9, 0.8, 0.1, 0.1]])
    rows = base if layout == "icxywh" else base[:, [0, 2, 3, 4, 5, 1]]
    truth = truth_from_rows(rows, 2, CONFIG, layout=layout)
    back = rows_from_targets(truth, CONFIG)
    torch.testing.assert_close(back, targets_rows_sorted(base))


def targets_rows_sorted(rows):
    return rows[torch.argsort(rows[:, 0], stable=True)]


def test_xyxy_boxes_become_centre_and_size():
    rows = torch.tensor([[0, 1, 0.1, 0.2, 0.5, 0.6]])
    truth = truth_from_rows(rows, 1, CONFIG, xyxy=True)
    torch.testing.assert_close(truth[0, 0, :5], torch.tensor([0.3, 0.4, 0.4, 0.4, 1.0]))


@pytest.mark.parametrize("layout", ["cxywh", "xywhc"])
def test_per_image_lists(layout):
    img0 = torch.tensor([[2, 0.5, 0.5, 0.2, 0.2]])
    img1 = torch.tensor([[0, 0.1, 0.2, 0.1, 0.1], [1, 0.3, 0.4, 0.1, 0.1]])
    lists = [img0, img1] if layout == "cxywh" else [t[:, [1, 2, 3, 4, 0]] for t in (img0, img1)]
    truth = truth_from_lists(lists, CONFIG, layout=layout)
    assert truth.shape == (2, CONFIG.max_boxes, 6)
    torch.testing.assert_close(truth[1, 1, :5], torch.tensor([0.3, 0.4, 0.1, 0.1, 1.0]))
    assert float(truth[0, 1].abs().sum()) == 0


def test_more_boxes_than_max_are_dropped_with_a_darknet_warning():
    rows = torch.tensor([[0, 0, 0.1 * k + 0.05, 0.5, 0.1, 0.1] for k in range(6)])
    with pytest.warns(DarknetInputWarning, match="beyond max=4"):
        truth = targets_from_rows(rows, 1, 4)
    assert int((truth[0, :, 0] != 0).sum()) == 4


@pytest.mark.parametrize("rows,message", [
    (torch.tensor([[0.5, 0, 0.1, 0.1, 0.1, 0.1]]), "image index 0.5"),
    (torch.tensor([[3, 0, 0.1, 0.1, 0.1, 0.1]]), r"must lie in \[0, 2\)"),
    (torch.zeros(2, 5), r"expected \[N, 6\]"),
])
def test_bad_rows_are_refused(rows, message):
    with pytest.raises(InputError, match=message):
        truth_from_rows(rows, 2, CONFIG)
