"""Hand-checkable pins of darknet's [yolo] training semantics on the C reference.

Each class pins one behaviour of ``forward_yolo_layer``/``process_batch``
(AlexeyAB unless the class says pjreddie) on a 1x1, 2x1 or 2x2 grid with one
to three truths. Expected values are derived here, from the rule being
pinned, in numpy float64 (or as literals) with the reasoning in a comment;
the C reference computes in float32, so comparisons allow a few float32 ulps
(``close``) unless the value is exact by construction.

Conventions used throughout:
  * net 100x100 unless stated, so an anchor of 50 px is 0.5 of the image;
  * a logit of 0 activates to exactly 0.5, ln(3) to 0.75, ln(1/4) to 0.2;
  * a logit of -200 activates to exactly 0 (expf(200) overflows to inf);
  * input channels are anchor-major: slot ``a`` entry ``e`` is channel
    ``a*(5+classes) + e`` with e = x, y, w, h, obj, class0, class1, ...
"""
from __future__ import annotations

import math

import numpy as np
import pytest

from parity.config import YoloConfig
from parity.errors import InputError
from parity.reference import run_reference
from parity.roles import (ROLE_AVERAGED, ROLE_BEST_ANCHOR, ROLE_CLASS_SHORTCUT, ROLE_CLASSMATCH_BLOCKED,
                          ROLE_EXTRA_ANCHOR, ROLE_IGNORED, ROLE_OBJ_NONFINITE, ROLE_REWRITTEN, ROLE_TRUTH_THRESH)

X, Y, W, H, OBJ = range(5)


def CLS(k: int) -> int:
    return 5 + k


LN3 = math.log(3.0)          # sigmoid -> 0.75
LN_QUARTER = math.log(0.25)  # sigmoid -> 0.2
P_ZERO = -200.0              # sigmoid -> exactly 0 in float32


def logit(p: float) -> float:
    return math.log(p / (1.0 - p))


def sig(v: float) -> float:
    """The logistic in float64 of the float32 value the layer receives."""
    return 1.0 / (1.0 + math.exp(-float(np.float32(v))))


def f32(v: float) -> float:
    return float(np.float32(v))


def cfg(**changes: object) -> YoloConfig:
    base: dict[str, object] = dict(classes=1, num=1, mask=(0,), anchors=(50.0, 50.0),
                                   net_w=100, net_h=100)
    base.update(changes)
    return YoloConfig(**base)  # type: ignore[arg-type]


class Head:
    """The raw tensor entering the layer, filled entry by entry."""

    def __init__(self, config: YoloConfig, h: int = 1, w: int = 1, batch: int = 1, fill: float = 0.0):
        self.config = config
        self.x = np.full((batch, config.channels, h, w), fill, dtype=np.float32)

    def set(self, entry: int, value: float, a: int = 0, j: int = 0, i: int = 0, b: int = 0) -> "Head":
        self.x[b, a * (5 + self.config.classes) + entry, j, i] = value
        return self


def truths(*rows: tuple, batch: int = 1) -> np.ndarray:
    """Truth array [batch, rows, 6]; the same rows for every image; no rows -> one zero row."""
    if not rows:
        return np.zeros((batch, 1, 6), dtype=np.float32)
    padded = [tuple(r) + (0.0,) * (6 - len(r)) for r in rows]
    t = np.array(padded, dtype=np.float32)
    return np.repeat(t[None], batch, axis=0)


def at(arr: np.ndarray, config: YoloConfig, entry: int, a: int = 0, j: int = 0, i: int = 0, b: int = 0) -> float:
    return float(arr[b, a * (5 + config.classes) + entry, j, i])


def role(res, a: int = 0, j: int = 0, i: int = 0, b: int = 0) -> int:
    return int(res.roles[b, a, j, i])


def close(actual: float, expected: float, rel: float = 1e-5, abs_: float = 2e-6) -> None:
    assert actual == pytest.approx(expected, rel=rel, abs=abs_), f"{actual!r} != {expected!r}"


def box_iou64(a: tuple, b: tuple) -> float:
    """IoU of centre/size boxes in float64 (the plain definition)."""
    iw = min(a[0] + a[2] / 2, b[0] + b[2] / 2) - max(a[0] - a[2] / 2, b[0] - b[2] / 2)
    ih = min(a[1] + a[3] / 2, b[1] + b[3] / 2) - max(a[1] - a[3] / 2, b[1] - b[3] / 2)
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


def run(config: YoloConfig, head: Head, t: np.ndarray, **kw):
    return run_reference(config, head.x, t, **kw)


# Shared two-anchor scene used by the per-cell and truth_thresh tests:
# 1x1 grid, anchors 40 and 80 px, truth 0.4x0.4 at the centre. Shape IoU of the
# truth with anchor 40 is 1, with anchor 80 is 0.16/0.64 = 0.25, so the truth is
# assigned to slot 0 and slot 1 is only ever seen by the per-cell pass.
TWO_ANCHORS = dict(classes=2, num=2, mask=(0, 1), anchors=(40.0, 40.0, 80.0, 80.0))
TRUTH_CENTRE = (0.5, 0.5, 0.4, 0.4, 0.0)
# Slot 1 predicts a concentric square of side 0.4/sqrt(0.9), so IoU = 0.4^2/side^2 = 0.9:
# side = exp(t) * 80/100  =>  t = ln(side * 100/80).
SIDE_IOU09 = 0.4 / math.sqrt(0.9)
T_IOU09 = math.log(SIDE_IOU09 * 100.0 / 80.0)


def slot1_head(config: YoloConfig, cls_probs: tuple[float, float], obj_logit: float = 0.0) -> Head:
    head = Head(config)
    head.set(W, T_IOU09, a=1).set(H, T_IOU09, a=1).set(OBJ, obj_logit, a=1)
    head.set(CLS(0), logit(cls_probs[0]), a=1).set(CLS(1), logit(cls_probs[1]), a=1)
    return head


# ---------------------------------------------------------------------------
# 1. Activation


class TestActivation:
    def test_logistic_applies_to_xy_objectness_and_classes_but_not_wh(self):
        c = cfg(classes=2)
        raw = {X: 1.0, Y: -2.0, W: 0.7, H: -0.3, OBJ: 0.4, CLS(0): 3.0, CLS(1): -1.5}
        head = Head(c)
        for e, v in raw.items():
            head.set(e, v)
        res = run(c, head, truths())
        for e in (X, Y, OBJ, CLS(0), CLS(1)):
            close(at(res.output, c, e), sig(raw[e]), abs_=1e-7)
        # w, h pass through untouched: they are exponents decoded only in get_yolo_box.
        assert at(res.output, c, W) == f32(0.7)
        assert at(res.output, c, H) == f32(-0.3)

    @pytest.mark.parametrize("scale, x_logit, expected", [
        (2.0, 0.0, 0.5),            # 0.5*2 - 0.5*(2-1) = 0.5 (the fixed point)
        (2.0, LN3, 1.0),            # 0.75*2 - 0.5 = 1.0
        (1.2, LN3, 0.8),            # 0.75*1.2 - 0.1 = 0.8
        (1.05, -LN3, 0.2375),       # 0.25*1.05 - 0.025 = 0.2375
    ])
    def test_scale_x_y_maps_x_and_y_as_p_times_s_minus_half_s_minus_1(self, scale, x_logit, expected):
        c = cfg(scale_x_y=scale)
        head = Head(c).set(X, x_logit).set(Y, x_logit).set(OBJ, LN3)
        res = run(c, head, truths())
        close(at(res.output, c, X), expected, abs_=1e-6)
        close(at(res.output, c, Y), expected, abs_=1e-6)
        # objectness is not scaled: sigmoid(ln 3) = 0.75
        close(at(res.output, c, OBJ), 0.75, abs_=1e-7)

    def test_new_coords_skips_every_logistic_but_still_scales_xy(self):
        c = cfg(classes=1, new_coords=1, scale_x_y=2.0)
        raw = {X: 0.3, Y: 0.8, W: 0.7, H: -0.3, OBJ: 0.4, CLS(0): 3.0}
        head = Head(c)
        for e, v in raw.items():
            head.set(e, v)
        res = run(c, head, truths())
        close(at(res.output, c, X), 0.1, abs_=1e-6)   # 0.3*2 - 0.5 = 0.1 (no logistic first)
        close(at(res.output, c, Y), 1.1, abs_=1e-6)   # 0.8*2 - 0.5 = 1.1
        for e in (W, H, OBJ, CLS(0)):                  # raw, not sigmoid(raw)
            assert at(res.output, c, e) == f32(raw[e])

    @pytest.mark.parametrize("ignore_thresh, ignored", [(0.51, True), (0.53, False)])
    def test_new_coords_decodes_size_as_4_anchor_t_squared_in_the_ignore_test(self, ignore_thresh, ignored):
        # Slot 1 (anchor 80): raw x = y = 0.5 -> centre (0 + 0.5)/1 = 0.5 (no logistic);
        # raw w = h = 0.3 -> size 4*80*0.3^2/100 = 0.288. IoU with the 0.4 truth:
        # 0.288^2/0.4^2 = 0.5184. Decoded as exp(0.3)*0.8 = 1.08 it would be 0.137.
        c = cfg(new_coords=1, ignore_thresh=ignore_thresh, classes=1, num=2, mask=(0, 1),
                anchors=(40.0, 40.0, 80.0, 80.0))
        head = Head(c)
        for e, v in {X: 0.5, Y: 0.5, W: 0.3, H: 0.3, OBJ: 0.3, CLS(0): 0.9}.items():
            head.set(e, v, a=1)
        res = run(c, head, truths(TRUTH_CENTRE))
        assert box_iou64((0.5, 0.5, 0.288, 0.288), (0.5, 0.5, 0.4, 0.4)) == pytest.approx(0.5184)
        obj = at(res.delta, c, OBJ, a=1)
        if ignored:
            assert obj == 0.0
            assert role(res, a=1) & ROLE_IGNORED
        else:
            close(obj, -0.3)  # obj_normalizer 1 * (0 - 0.3): raw objectness, no logistic
            assert not role(res, a=1) & ROLE_IGNORED


# ---------------------------------------------------------------------------
# 2. Predicted box decoding


class TestBoxDecoding:
    # 2x2 grid, net 100x200, anchor 50x100 px (0.5 x 0.5 of the image). Truth
    # (0.25, 0.25, 0.5, 0.5) sits in cell (j=0, i=0) and is assigned there.
    # Probe cells predict with x = y = logit 0 -> 0.5 inside the cell:
    #   cell (j=0, i=1): centre ((1+0.5)/2, (0+0.5)/2) = (0.75, 0.25),
    #                    w = exp(ln 2)*50/100 = 1.0, h = exp(0)*100/200 = 0.5
    #   -> x overlap [0.25, 0.5] = 0.25, y overlap 0.5, I = 0.125,
    #      U = 0.5 + 0.25 - 0.125 = 0.625, IoU = 0.2.
    #   cell (j=1, i=0): the mirror image (th = ln 2) -> IoU 0.2 as well.
    # Without the /w or the exp the IoU would be 0; with net_w used for h, 0.11 (probe (0,1))
    # or 0.25 (probe (1,0)).
    @pytest.mark.parametrize("probe", [(0, 1), (1, 0)])
    @pytest.mark.parametrize("ignore_thresh, ignored", [(0.199, True), (0.201, False)])
    def test_centre_is_cell_plus_offset_over_grid_and_size_is_exp_t_anchor_over_net(
            self, probe, ignore_thresh, ignored):
        c = cfg(net_h=200, anchors=(50.0, 100.0), ignore_thresh=ignore_thresh)
        j, i = probe
        head = Head(c, h=2, w=2).set(CLS(0), 2.0, j=j, i=i)
        head.set(W if probe == (0, 1) else H, math.log(2.0), j=j, i=i)
        res = run(c, head, truths((0.25, 0.25, 0.5, 0.5, 0)))
        pred = ((i + 0.5) / 2, (j + 0.5) / 2,
                math.exp(math.log(2.0) if probe == (0, 1) else 0.0) * 50 / 100,
                math.exp(math.log(2.0) if probe == (1, 0) else 0.0) * 100 / 200)
        assert box_iou64(pred, (0.25, 0.25, 0.5, 0.5)) == pytest.approx(0.2)
        obj = at(res.delta, c, OBJ, j=j, i=i)
        assert obj == (0.0 if ignored else -0.5)  # obj logit 0 -> p 0.5
        # the diagonal cell (1,1) only touches the truth's corner: IoU 0, never ignored
        assert at(res.delta, c, OBJ, j=1, i=1) == -0.5


# ---------------------------------------------------------------------------
# 3. Per-cell pass


class TestCellPass:
    def test_negative_cell_objectness_delta_is_obj_normalizer_times_minus_p(self):
        c = cfg(obj_normalizer=0.5)
        head = Head(c, h=2, w=2, fill=0.0)
        head.x[:, OBJ] = LN3
        res = run(c, head, truths())
        # 0.5 * (0 - 0.75) = -0.375 everywhere; nothing else is written
        np.testing.assert_allclose(res.delta[0, OBJ], -0.375, atol=1e-7)
        assert not res.delta[0, [X, Y, W, H, CLS(0)]].any()
        assert res.stats.count_raw == 0

    def test_class_probs_all_at_most_025_block_the_ignore_even_at_iou_09(self):
        # slot 1 IoU 0.9 > ignore_thresh 0.5, but class probs 0.2 and 0.1 are not > 0.25
        c = cfg(**TWO_ANCHORS)
        res = run(c, slot1_head(c, (0.2, 0.1)), truths(TRUTH_CENTRE))
        close(at(res.delta, c, OBJ, a=1), -0.5)  # obj p 0.5 -> 1*(0 - 0.5), not ignored
        assert role(res, a=1) & ROLE_CLASSMATCH_BLOCKED
        assert not role(res, a=1) & ROLE_IGNORED
        assert res.branches["classmatch_blocked"] == 1

    def test_an_unrelated_class_above_025_makes_the_cell_ignorable(self):
        # the truth is class 0 (prob 0.1); class 1 at 0.3 > 0.25 is enough
        c = cfg(**TWO_ANCHORS)
        res = run(c, slot1_head(c, (0.1, 0.3)), truths(TRUTH_CENTRE))
        assert at(res.delta, c, OBJ, a=1) == 0.0
        assert role(res, a=1) & ROLE_IGNORED
        assert res.branches["ignore"] >= 1

    def test_ignore_requires_iou_strictly_above_ignore_thresh(self):
        c = cfg(ignore_thresh=0.91, **TWO_ANCHORS)  # IoU 0.9 < 0.91
        res = run(c, slot1_head(c, (0.1, 0.3)), truths(TRUTH_CENTRE))
        close(at(res.delta, c, OBJ, a=1), -0.5)
        assert not role(res, a=1) & (ROLE_IGNORED | ROLE_CLASSMATCH_BLOCKED)

    @pytest.mark.parametrize("obj_norm, expected", [
        (1.0, 0.4),    # max(1*(0.9 - 0.5), 1*(0 - 0.5)) = 0.4
        (2.0, 0.8),    # max(2*0.4, 2*(-0.5)) = 0.8
        (-1.0, 0.5),   # max(-1*0.4, -1*(-0.5)) = 0.5: the max keeps the negative-cell value
    ])
    def test_objectness_smooth_takes_max_of_smoothed_and_negative_delta_when_ignored(self, obj_norm, expected):
        c = cfg(objectness_smooth=1, obj_normalizer=obj_norm, **TWO_ANCHORS)
        res = run(c, slot1_head(c, (0.1, 0.3)), truths(TRUTH_CENTRE))
        iou = box_iou64((0.5, 0.5, SIDE_IOU09, SIDE_IOU09), (0.5, 0.5, 0.4, 0.4))
        assert iou == pytest.approx(0.9)
        assert expected == pytest.approx(max(obj_norm * (iou - 0.5), obj_norm * (0 - 0.5)))
        close(at(res.delta, c, OBJ, a=1), expected)
        assert res.branches["objectness_smooth"] >= 1

    def test_nan_objectness_is_zeroed_in_output_when_a_valid_truth_exists(self):
        c = cfg(**TWO_ANCHORS)
        head = slot1_head(c, (0.1, 0.3))
        head.set(OBJ, float("nan"), a=1)
        res = run(c, head, truths(TRUTH_CENTRE))
        assert at(res.output, c, OBJ, a=1) == 0.0
        assert at(res.delta, c, OBJ, a=1) == 0.0   # ignored, and 0 - 0 anyway: not NaN
        assert role(res, a=1) & ROLE_OBJ_NONFINITE
        assert res.branches["obj_nonfinite"] >= 1

    def test_nan_objectness_stays_without_a_valid_truth(self):
        # no truth at all, or only a truth with an out-of-range class (skipped before the check)
        c = cfg(**TWO_ANCHORS)
        for t in (truths(), truths((0.5, 0.5, 0.4, 0.4, 7))):
            head = slot1_head(c, (0.1, 0.3))
            head.set(OBJ, float("nan"), a=1)
            res = run(c, head, t)
            assert math.isnan(at(res.output, c, OBJ, a=1))
            assert math.isnan(at(res.delta, c, OBJ, a=1))  # 1*(0 - NaN)
            assert not role(res, a=1) & ROLE_OBJ_NONFINITE

    @pytest.mark.parametrize("value", [float("inf"), float("-inf")])
    def test_infinite_objectness_under_new_coords_is_zeroed(self, value):
        # new_coords has no logistic, so an infinite raw objectness reaches the check
        c = cfg(new_coords=1, **TWO_ANCHORS)
        head = Head(c).set(OBJ, value, a=1).set(X, 0.5, a=1).set(Y, 0.5, a=1)
        res = run(c, head, truths(TRUTH_CENTRE))
        assert at(res.output, c, OBJ, a=1) == 0.0
        assert at(res.delta, c, OBJ, a=1) == 0.0
        assert role(res, a=1) & ROLE_OBJ_NONFINITE

    def test_truth_thresh_path_writes_objectness_class_and_box_with_the_best_truth(self):
        # Two truths at the centre: T0 0.4 (class 0) and T1 0.42 (class 1). Slot 1 predicts
        # side 0.4216: IoU with T0 = 0.9, with T1 = 0.42^2/0.4216^2 = 0.992 -> best is T1.
        # truth_thresh 0.8 < 0.992, so slot 1 is trained towards T1 in the per-cell pass.
        c = cfg(truth_thresh=0.8, obj_normalizer=0.5, **TWO_ANCHORS)
        t0, t1 = TRUTH_CENTRE, (0.5, 0.5, 0.42, 0.42, 1.0)
        res = run(c, slot1_head(c, (0.1, 0.3)), truths(t0, t1))
        pred = (0.5, 0.5, SIDE_IOU09, SIDE_IOU09)
        assert box_iou64(pred, t1[:4]) > box_iou64(pred, t0[:4]) > 0.8
        assert role(res, a=1) & ROLE_TRUTH_THRESH
        close(at(res.delta, c, OBJ, a=1), 0.25)         # obj_normalizer 0.5 * (1 - 0.5)
        close(at(res.delta, c, CLS(0), a=1), -0.1)      # 0 - 0.1
        close(at(res.delta, c, CLS(1), a=1), 0.7)       # 1 - 0.3 (T1's class)
        # mse box delta towards T1 on anchor 80: scale (2 - 0.42^2)*0.75
        scale = (2 - 0.42 * 0.42) * 0.75
        close(at(res.delta, c, X, a=1), scale * (0.5 * 1 - 0 - 0.5))   # tx = 0.5 = x -> 0
        close(at(res.delta, c, W, a=1), scale * (math.log(0.42 * 100 / 80) - f32(T_IOU09)))
        close(at(res.delta, c, H, a=1), scale * (math.log(0.42 * 100 / 80) - f32(T_IOU09)))
        # Slot 0 (anchor 40, raw w 0 -> side 0.4) has IoU 1 with T0 > 0.8: a truth_thresh
        # write too. total_bbox counts both truth_thresh writes and both truths assigned to
        # slot 0; the printed count only the two assignments.
        assert role(res, a=0) & ROLE_TRUTH_THRESH
        assert res.branches["truth_thresh"] == 2
        assert res.stats["total_bbox"] == 4
        assert res.stats.count_raw == 2


# ---------------------------------------------------------------------------
# 4. The truth list


class TestTruthList:
    # 2x1 grid (w=2, h=1), anchor 50 px. A = (0.25, 0.5, 0.5, 0.5) in cell 0,
    # B = (0.75, 0.5, 0.5, 0.5) in cell 1. All logits 0: obj p = 0.5. Cell 1's
    # prediction (0.75, 0.5, 0.5, 0.5) only touches A (IoU 0), so cell 1's objectness
    # delta is +0.5 (1 - p) if B is read and -0.5 (0 - p) if it is not.
    A = (0.25, 0.5, 0.5, 0.5, 0)
    B = (0.75, 0.5, 0.5, 0.5, 0)

    def _run(self, rows, **changes):
        c = cfg(**changes)
        res = run(c, Head(c, h=1, w=2), truths(*rows))
        return c, res

    def test_both_truths_are_read(self):
        c, res = self._run([self.A, self.B])
        assert at(res.delta, c, OBJ, i=1) == 0.5
        assert res.stats.count_raw == 2

    def test_reading_stops_at_the_first_row_with_x_exactly_zero(self):
        # the terminator row has y, w, h set: only x == 0 matters
        c, res = self._run([self.A, (0.0, 0.5, 0.5, 0.5, 0), self.B])
        assert at(res.delta, c, OBJ, i=1) == -0.5
        assert not role(res, i=1) & ROLE_BEST_ANCHOR
        assert role(res, i=0) & ROLE_BEST_ANCHOR
        assert res.stats.count_raw == 1
        assert res.branches["zero_x_stop"] == 1

    def test_a_zero_y_does_not_stop_reading(self):
        c, res = self._run([self.A, (0.75, 0.0, 0.5, 0.5, 0)])
        assert at(res.delta, c, OBJ, i=1) == 0.5
        assert res.stats.count_raw == 2

    def test_max_boxes_limits_the_rows_read(self):
        c, res = self._run([self.A, self.B], max_boxes=1)
        assert at(res.delta, c, OBJ, i=1) == -0.5
        assert res.stats.count_raw == 1
        assert res.branches["max_truncated"] == 1

    @pytest.mark.parametrize("bad_class", [1.0, 5.0, -1.0])
    def test_class_id_outside_range_is_skipped_in_both_loops(self, bad_class):
        # classes=1: B with class 1, 5 or -1 is skipped. Were it used in the per-cell
        # loop only, cell 1 would be ignored (IoU 1 with B) -> 0; in the truth loop
        # only, it would be assigned -> +0.5. Skipped in both: -0.5.
        c, res = self._run([self.A, self.B[:4] + (bad_class,)])
        assert at(res.delta, c, OBJ, i=1) == -0.5
        assert res.stats.count_raw == 1
        assert res.branches["class_oob"] == 1

    def test_class_id_is_truncated_to_int(self):
        # classes=2: 1.9 reads as class 1 (C's float -> int conversion truncates)
        c, res = self._run([self.B[:4] + (1.9,)], classes=2)
        close(at(res.delta, c, CLS(1), i=1), 0.5)    # 1 - 0.5
        close(at(res.delta, c, CLS(0), i=1), -0.5)   # 0 - 0.5
        assert res.branches["class_oob"] == 0

    def test_pjreddie_refuses_an_out_of_range_class_id(self):
        c = YoloConfig.for_flavor("pjreddie", classes=1, num=1, mask=(0,), anchors=(50.0, 50.0),
                                  net_w=100, net_h=100)
        with pytest.raises(InputError, match=r"truth\[0, 1\]: class id .*5\.0\)? is outside \[0, 1\)"):
            run(c, Head(c, h=1, w=2), truths(self.A, self.B[:4] + (5.0,)))


# ---------------------------------------------------------------------------
# 5. Best anchor


class TestBestAnchor:
    # num=3 anchors 10, 40, 90 px (net 100), this layer's mask = (1, 2).
    def _cfg(self, mask=(1, 2)):
        return cfg(num=3, mask=mask, anchors=(10.0, 10.0, 40.0, 40.0, 90.0, 90.0))

    def test_truth_whose_best_anchor_is_in_another_layers_mask_writes_nothing_here(self):
        # truth 0.1x0.1: shape IoU with anchor 10 = 1, with 40 = 0.01/0.16, with 90 = 0.01/0.81
        c = self._cfg()
        res = run(c, Head(c), truths((0.5, 0.5, 0.1, 0.1, 0)))
        for a in (0, 1):
            assert at(res.delta, c, OBJ, a=a) == -0.5   # plain negatives
            assert all(at(res.delta, c, e, a=a) == 0 for e in (X, Y, W, H, CLS(0)))
            assert not role(res, a=a) & ROLE_BEST_ANCHOR
        assert res.branches["anchor_outside_mask"] == 1
        assert res.stats.count_raw == 0
        assert res.stats["count"] == 1

    @pytest.mark.parametrize("mask, slot", [((1, 2), 0), ((2, 1), 1)])
    def test_best_anchor_in_mask_is_assigned_at_its_mask_position(self, mask, slot):
        # truth 0.45: IoU with 40 = 0.16/0.2025 = 0.79, with 90 = 0.2025/0.81 = 0.25,
        # with 10 = 0.01/0.2025 -> anchor index 1, at position `slot` of the mask
        c = self._cfg(mask)
        res = run(c, Head(c), truths((0.5, 0.5, 0.45, 0.45, 0)))
        assert role(res, a=slot) & ROLE_BEST_ANCHOR
        assert not role(res, a=1 - slot) & ROLE_BEST_ANCHOR
        # mse target uses anchor 40: tw = ln(0.45*100/40), raw w 0; scale (2 - 0.2025)*0.75
        close(at(res.delta, c, W, a=slot), (2 - 0.2025) * 0.75 * math.log(45 / 40))
        assert at(res.delta, c, OBJ, a=slot) == 0.5


# ---------------------------------------------------------------------------
# 6. Box deltas


def exact_iou_grad(pred: tuple, truth: tuple, eps: float = 1e-7) -> tuple[float, ...]:
    """Central finite differences of the plain IoU w.r.t. pred (x, y, w, h), float64."""
    out = []
    for k in range(4):
        up, down = list(pred), list(pred)
        up[k] += eps
        down[k] -= eps
        out.append((box_iou64(tuple(up), truth) - box_iou64(tuple(down), truth)) / (2 * eps))
    return tuple(out)


class TestBoxDeltas:
    @pytest.mark.parametrize("iou_normalizer", [0.75, 0.3])
    def test_mse_delta_is_scale_2_minus_wh_times_target_minus_raw_times_normalizer(self, iou_normalizer):
        # 2x2 grid, anchor 50x25. Truth (0.3, 0.8, 0.4, 0.2) -> cell i = int(0.6) = 0,
        # j = int(1.6) = 1. Targets: tx = 0.3*2 - 0 = 0.6, ty = 0.8*2 - 1 = 0.6,
        # tw = ln(0.4*100/50) = ln 0.8, th = ln(0.2*100/25) = ln 0.8. Scale 2 - 0.08 = 1.92.
        # Prediction: x logit 0 -> 0.5, y logit ln3 -> 0.75, raw w 0.1, raw h -0.2.
        c = cfg(anchors=(50.0, 25.0), iou_normalizer=iou_normalizer)
        head = Head(c, h=2, w=2).set(Y, LN3, j=1).set(W, 0.1, j=1).set(H, -0.2, j=1)
        res = run(c, head, truths((0.3, 0.8, 0.4, 0.2, 0)))
        k = 1.92 * iou_normalizer
        close(at(res.delta, c, X, j=1), k * (0.6 - 0.5))
        close(at(res.delta, c, Y, j=1), k * (0.6 - 0.75))
        close(at(res.delta, c, W, j=1), k * (math.log(0.8) - 0.1))
        close(at(res.delta, c, H, j=1), k * (math.log(0.8) + 0.2))
        assert res.branches["iou_loss_mse"] == 1

    def test_mse_deltas_are_not_clipped_by_max_delta(self):
        # raw w -3: dw = 1.84*0.75*(ln(0.4*100/50) + 3) = 3.832 despite max_delta 0.5
        c = cfg(max_delta=0.5)
        res = run(c, Head(c).set(W, -3.0), truths((0.5, 0.5, 0.4, 0.4, 0)))
        close(at(res.delta, c, W), 1.84 * 0.75 * (math.log(0.8) + 3.0))
        assert res.branches["max_delta_clip"] == 0

    def test_mse_targets_under_new_coords_are_sqrt_of_size_over_4_anchor(self):
        # tw = sqrt(0.4*100/(4*50)) = sqrt(0.2); x output = raw 0.3 (no logistic, scale 1)
        c = cfg(new_coords=1)
        head = Head(c).set(X, 0.3).set(Y, 0.5).set(W, 0.3).set(H, 0.6)
        res = run(c, head, truths((0.5, 0.5, 0.4, 0.4, 0)))
        k = 1.84 * 0.75
        close(at(res.delta, c, X), k * (0.5 - 0.3))
        close(at(res.delta, c, W), k * (math.sqrt(0.2) - 0.3))
        close(at(res.delta, c, H), k * (math.sqrt(0.2) - 0.6))

    def test_iou_loss_on_a_prediction_inside_the_truth(self):
        # 1x1, anchor 50x25. Prediction centred (logits 0), raw tw = ln 0.8 -> w = 0.8*0.5 = 0.4,
        # th = ln 2 -> h = 2*0.25 = 0.5. Truth (0.5, 0.5, 0.8, 0.6) contains it, so
        # IoU = wp*hp / (0.8*0.6) = 0.2/0.48 and U = 0.48 stays constant.
        # Exact dIoU/dwp = hp/U; darknet's dw = p_dr - p_dl = 2*hp/U (no 1/2), times
        # exp(tw) = 0.8, times iou_normalizer 0.75: 2*0.5/0.48*0.8*0.75 = 1.25.
        # dh = 2*wp/U * exp(th) * 0.75 = 2*0.4/0.48*2*0.75 = 2.5. Concentric: dx = dy = 0.
        c = cfg(anchors=(50.0, 25.0), iou_loss="iou")
        head = Head(c).set(W, math.log(0.8)).set(H, math.log(2.0))
        res = run(c, head, truths((0.5, 0.5, 0.8, 0.6, 0)))
        close(at(res.delta, c, X), 0.0)
        close(at(res.delta, c, Y), 0.0)
        close(at(res.delta, c, W), 1.25)
        close(at(res.delta, c, H), 2.5)
        close(res.stats["tot_iou"], 0.2 / 0.48)
        assert res.branches["iou_loss_iou"] == 1

    def test_iou_loss_dw_dh_are_twice_the_exact_derivative_times_exp_t(self):
        # Off-centre, partial overlap, no ties. Prediction (0.5, 0.5, exp(0.2)*0.5, exp(-0.1)*0.5),
        # truth (0.6, 0.55, 0.6, 0.3). darknet: dx = dIoU/dx, dw = 2*dIoU/dw*exp(tw), each * 0.75.
        c = cfg(iou_loss="iou")
        tw, th = 0.2, -0.1
        head = Head(c).set(W, tw).set(H, th)
        truth = (0.6, 0.55, 0.6, 0.3)
        res = run(c, head, truths(truth + (0,)))
        pred = (0.5, 0.5, math.exp(f32(tw)) * 0.5, math.exp(f32(th)) * 0.5)
        gx, gy, gw, gh = exact_iou_grad(pred, truth)
        n = 0.75
        assert at(res.delta, c, X) == pytest.approx(gx * n, rel=1e-3)
        assert at(res.delta, c, Y) == pytest.approx(gy * n, rel=1e-3)
        assert at(res.delta, c, W) == pytest.approx(2 * gw * math.exp(f32(tw)) * n, rel=1e-3)
        assert at(res.delta, c, H) == pytest.approx(2 * gh * math.exp(f32(th)) * n, rel=1e-3)

    def test_giou_with_boxes_apart_uses_only_the_enclosing_term(self):
        # 1x1, anchor 20: prediction (0.5, 0.5, 0.2, 0.2) -> edges t=0.4 b=0.6 l=0.4 r=0.6.
        # Truth (0.8, 0.5, 0.2, 0.4) -> t=0.3 b=0.7 l=0.7 r=0.9. Apart in x.
        # dx_box_iou: Iw = min(.6,.9) - max(.4,.7) = -0.1, Ih = min(.6,.7) - max(.4,.3) = 0.2,
        # I = Iw*Ih = -0.02 (not clamped), X = 0.04, Xhat = 0.08, U = X + Xhat - I = 0.14;
        # enclosing Cw = 0.5, Ch = 0.4, C = 0.2.
        # dX: t -0.2, b 0.2, l -0.2, r 0.2.  dI: t -Iw = 0.1 (pred_t > truth_t),
        # b Iw = -0.1 (pred_b < truth_b), l 0 (pred_l < truth_l), r Ih = 0.2 (pred_r < truth_r).
        # dU = dX - dI: t -0.3, b 0.3, l -0.2, r 0.  dC: only l = -Ch = -0.4 (pred_l < truth_l).
        # Iw <= 0 -> p = (C*dU - U*dC)/C^2: t -1.5, b 1.5, l (-0.04 + 0.056)/0.04 = 0.4, r 0.
        # dx = l + r = 0.4, dy = t + b = 0, dw = r - l = -0.4, dh = b - t = 3; exp(0) = 1; * 0.75.
        c = cfg(anchors=(20.0, 20.0), iou_loss="giou")
        res = run(c, Head(c), truths((0.8, 0.5, 0.2, 0.4, 0)))
        close(at(res.delta, c, X), 0.3)
        close(at(res.delta, c, Y), 0.0)
        close(at(res.delta, c, W), -0.3)
        close(at(res.delta, c, H), 2.25)
        assert res.branches["iou_loss_giou"] == 1

    def test_diou_adds_the_centre_distance_term(self):
        # Prediction (0.5, 0.5, 0.5, 0.5) inside truth (0.6, 0.5, 0.8, 0.6), U = 0.48.
        # IoU part: dx = 0 (both x edges inside), dw = 2*hp/U = 1/0.48, dh = 2*wp/U = 1/0.48.
        # Centre term: the enclosing box is the truth (0.8 x 0.6), diag^2 = 0.64 + 0.36 = 1,
        # no prediction edge defines it, so only d/dx of -d^2/diag^2 adds 2*(0.6 - 0.5)/1 = 0.2.
        # All * 0.75. (Under iou loss dx would be 0.)
        c = cfg(iou_loss="diou")
        res = run(c, Head(c), truths((0.6, 0.5, 0.8, 0.6, 0)))
        close(at(res.delta, c, X), 0.2 * 0.75)
        close(at(res.delta, c, Y), 0.0)
        close(at(res.delta, c, W), 1 / 0.48 * 0.75)
        close(at(res.delta, c, H), 1 / 0.48 * 0.75)

    def test_diou_equals_iou_for_concentric_boxes(self):
        c_iou, c_diou = cfg(iou_loss="iou"), cfg(iou_loss="diou")
        t = truths((0.5, 0.5, 0.8, 0.6, 0))
        head = Head(c_iou).set(W, 0.1).set(H, -0.2)
        a, b = run(c_iou, head, t), run(c_diou, head, t)
        np.testing.assert_array_equal(a.delta, b.delta)

    @staticmethod
    def ciou_concentric_expectation():
        # Prediction (0.5, 0.5, 0.5, 0.5), truth (0.5, 0.5, 0.8, 0.6): centre distance 0, so
        # only the aspect term joins the IoU part. diff = atan(0.8/0.6) - atan(0.5/0.5),
        # v = 4/pi^2 diff^2, alpha = v / (1 - IoU + v + 1e-6),
        # dw = 2*hp/U + alpha * 8/pi^2 * diff * hp, dh = 2*wp/U - alpha * 8/pi^2 * diff * wp.
        iou = 0.25 / 0.48
        diff = math.atan(0.8 / 0.6) - math.atan(1.0)
        v = 4 / math.pi ** 2 * diff ** 2
        alpha = v / (1 - iou + v + 1e-6)
        dw = 2 * 0.5 / 0.48 + alpha * 8 / math.pi ** 2 * diff * 0.5
        dh = 2 * 0.5 / 0.48 - alpha * 8 / math.pi ** 2 * diff * 0.5
        return iou, dw * 0.75, dh * 0.75

    def test_ciou_adds_the_aspect_ratio_term(self):
        c = cfg(iou_loss="ciou")
        res = run(c, Head(c), truths((0.5, 0.5, 0.8, 0.6, 0)))
        _, dw, dh = self.ciou_concentric_expectation()
        assert abs(dw - dh) > 1e-3  # the aspect term is what separates them
        close(at(res.delta, c, X), 0.0)
        close(at(res.delta, c, Y), 0.0)
        close(at(res.delta, c, W), dw)
        close(at(res.delta, c, H), dh)

    @pytest.mark.parametrize("case", ["positive", "negative"])
    def test_max_delta_clips_iou_loss_deltas(self, case):
        if case == "positive":
            # the inside case above: dw 1.25, dh 2.5 -> max_delta 1.5 clips dh only
            c = cfg(anchors=(50.0, 25.0), iou_loss="iou", max_delta=1.5)
            head = Head(c).set(W, math.log(0.8)).set(H, math.log(2.0))
            t = truths((0.5, 0.5, 0.8, 0.6, 0))
            expected, clips = (1.25, 1.5), 1
        else:
            # prediction 0.9x0.9 (raw t = ln 1.8) covers truth 0.4x0.4: I = 0.16, U = 0.81,
            # dIoU/dw = -I*hp/U^2; dw = 2*(-0.16*0.9/0.6561)*1.8*0.75 = -0.5926 -> -0.5
            c = cfg(iou_loss="iou", max_delta=0.5)
            head = Head(c).set(W, math.log(1.8)).set(H, math.log(1.8))
            t = truths((0.5, 0.5, 0.4, 0.4, 0))
            unclipped = -2 * 0.16 * 0.9 / 0.81 ** 2 * 1.8 * 0.75
            assert unclipped == pytest.approx(-0.5926, abs=1e-4)
            expected, clips = (-0.5, -0.5), 2
        res = run(c, head, t)
        close(at(res.delta, c, W), expected[0])
        close(at(res.delta, c, H), expected[1])
        assert res.branches["max_delta_clip"] == clips

    def test_non_finite_iou_loss_deltas_are_zeroed(self):
        # raw w 1000: exp overflows, pred.w = inf, U = inf: every edge derivative is
        # (inf*... - I*inf)/inf^2 = NaN -> fix_nan_inf sets all four to 0
        c = cfg(iou_loss="iou")
        res = run(c, Head(c).set(W, 1000.0), truths((0.5, 0.5, 0.4, 0.4, 0)))
        assert [at(res.delta, c, e) for e in (X, Y, W, H)] == [0.0, 0.0, 0.0, 0.0]
        assert res.branches["fix_nan_inf"] == 4
        # the mse path has no such fix, but its delta is finite here: (ln 0.8 - 1000)*1.84*0.75
        cm = cfg()
        close(at(run(cm, Head(cm).set(W, 1000.0), truths((0.5, 0.5, 0.4, 0.4, 0))).delta, cm, W),
              1.84 * 0.75 * (math.log(0.8) - 1000.0))

    def test_two_truths_in_one_slot_accumulate_box_deltas(self):
        # both truths land in the single cell/anchor; logits 0 -> x = y = 0.5, raw w = h = 0
        c = cfg()
        t1, t2 = (0.3, 0.4, 0.5, 0.5, 0), (0.6, 0.7, 0.4, 0.6, 0)
        res = run(c, Head(c), truths(t1, t2))
        s1, s2 = (2 - 0.25) * 0.75, (2 - 0.24) * 0.75
        close(at(res.delta, c, X), s1 * (0.3 - 0.5) + s2 * (0.6 - 0.5))
        close(at(res.delta, c, Y), s1 * (0.4 - 0.5) + s2 * (0.7 - 0.5))
        close(at(res.delta, c, W), s1 * math.log(1.0) + s2 * math.log(0.8))
        close(at(res.delta, c, H), s1 * math.log(1.0) + s2 * math.log(1.2))
        assert res.stats["rewritten_bbox"] == 1
        assert res.stats["total_bbox"] == 2
        assert role(res) & ROLE_REWRITTEN


# ---------------------------------------------------------------------------
# 7. Class deltas


class TestClassDeltas:
    # 1x1, 2 classes, one anchor; class probs p0 = 0.75 (logit ln3), p1 = 0.2 (logit ln 1/4)
    def _head(self, c, p1_logit=LN_QUARTER):
        return Head(c).set(CLS(0), LN3).set(CLS(1), p1_logit)

    def test_already_set_shortcut_rewrites_only_the_second_truths_class(self):
        # T1 class 0: [1 - 0.75, 0 - 0.2] = [0.25, -0.2]. T2 class 1: its delta -0.2 is
        # nonzero -> only class 1 becomes 1 - 0.2 = 0.8; class 0 keeps 0.25 (a full
        # rewrite would give -0.75).
        c = cfg(classes=2)
        res = run(c, self._head(c), truths((0.5, 0.5, 0.5, 0.5, 0), (0.5, 0.5, 0.5, 0.5, 1)))
        close(at(res.delta, c, CLS(0)), 0.25)
        close(at(res.delta, c, CLS(1)), 0.8)
        assert role(res) & ROLE_CLASS_SHORTCUT
        assert res.branches["class_shortcut"] == 1

    def test_shortcut_tests_the_truth_class_delta_not_class_0(self):
        # p1 = 0 exactly: T1 class 0 leaves class 1's delta at 0 - 0 = 0, so T2 (class 1)
        # takes the full path: [0 - 0.75, 1 - 0] even though class 0's delta is nonzero
        c = cfg(classes=2)
        res = run(c, self._head(c, P_ZERO), truths((0.5, 0.5, 0.5, 0.5, 0), (0.5, 0.5, 0.5, 0.5, 1)))
        close(at(res.delta, c, CLS(0)), -0.75)
        assert at(res.delta, c, CLS(1)) == 1.0
        assert res.branches["class_shortcut"] == 0

    def test_label_smoothing_targets_1_minus_half_eps_and_half_eps(self):
        # eps 0.2: targets 1 - 0.1 = 0.9 for the class, 0.1 for the others.
        # 3 classes, p = (0.75, 0.2, 0.5), truth class 1 -> [0.1-0.75, 0.9-0.2, 0.1-0.5]
        c = cfg(classes=3, label_smooth_eps=0.2)
        head = Head(c).set(CLS(0), LN3).set(CLS(1), LN_QUARTER)
        res = run(c, head, truths((0.5, 0.5, 0.5, 0.5, 1)))
        close(at(res.delta, c, CLS(0)), -0.65)
        close(at(res.delta, c, CLS(1)), 0.7)
        close(at(res.delta, c, CLS(2)), -0.4)
        assert res.branches["label_smooth"] == 1

    def test_focal_loss_scales_plain_deltas_by_alpha_times_grad_of_pt(self):
        # truth class 0, pt = 0.75: grad = -(1-pt)*(2*pt*ln(pt) + pt - 1)
        #   = -0.25*(1.5*ln 0.75 - 0.25) = 0.17038; alpha 0.5
        c = cfg(classes=2, focal_loss=1)
        res = run(c, self._head(c), truths((0.5, 0.5, 0.5, 0.5, 0)))
        pt = 0.75
        grad = -(1 - pt) * (2 * pt * math.log(pt) + pt - 1)
        assert grad == pytest.approx(0.170381, abs=1e-6)
        close(at(res.delta, c, CLS(0)), (1 - 0.75) * 0.5 * grad)
        close(at(res.delta, c, CLS(1)), (0 - 0.2) * 0.5 * grad)
        assert res.branches["focal"] == 1

    @pytest.mark.parametrize("counters, max_delta, mult1", [
        ((100, 25), None, 4.0),    # max 100 / 25
        ((100, 10), 5.0, 5.0),     # 100/10 = 10 clipped at max_delta 5
        ((100, 0), None, 100.0),   # a counter below 1 counts as 1
    ])
    def test_counters_per_class_multiplier_times_cls_normalizer_on_the_truth_class(
            self, counters, max_delta, mult1):
        # truth class 1 (p1 0.2): (1 - 0.2) * mult1 * cls_normalizer 0.5; class 0 (p 0.75)
        # keeps its plain -0.75; the box delta carries the multiplier as well:
        # dx = (2 - 0.25)*(0.3 - 0.5) * 0.75 * mult1
        extra = {} if max_delta is None else {"max_delta": max_delta}
        c = cfg(classes=2, counters_per_class=counters, cls_normalizer=0.5, **extra)
        res = run(c, self._head(c), truths((0.3, 0.5, 0.5, 0.5, 1)))
        close(at(res.delta, c, CLS(1)), 0.8 * mult1 * 0.5)
        close(at(res.delta, c, CLS(0)), -0.75)
        close(at(res.delta, c, X), 1.75 * (0.3 - 0.5) * 0.75 * mult1)

    def test_shortcut_applies_the_multiplier_without_cls_normalizer(self):
        # counters (100, 25) -> multipliers (1, 4); cls_normalizer 0.5.
        # T1 class 0: class 0 -> (1 - 0.75)*1*0.5 = 0.125, class 1 -> -0.2.
        # T2 class 1 (shortcut): class 1 -> (1 - 0.2)*4 = 3.2 (no 0.5); class 0 stays.
        c = cfg(classes=2, counters_per_class=(100, 25), cls_normalizer=0.5)
        res = run(c, self._head(c), truths((0.5, 0.5, 0.5, 0.5, 0), (0.5, 0.5, 0.5, 0.5, 1)))
        close(at(res.delta, c, CLS(0)), 0.125)
        close(at(res.delta, c, CLS(1)), 3.2)

    def test_cls_normalizer_has_no_effect_without_counters_per_class(self):
        t = truths((0.5, 0.5, 0.5, 0.5, 0))
        c1, c7 = cfg(classes=2), cfg(classes=2, cls_normalizer=7.0)
        a, b = run(c1, self._head(c1), t), run(c7, self._head(c7), t)
        np.testing.assert_array_equal(a.delta, b.delta)
        close(at(b.delta, c7, CLS(0)), 0.25)   # 1 - 0.75, not 7*0.25


# ---------------------------------------------------------------------------
# 8. Objectness of assigned cells


class TestAssignedObjectness:
    @pytest.mark.parametrize("cls_id, expected", [
        (1, 0.5),      # obj_normalizer 0.5 * multiplier 4 * (1 - 0.75)
        (0, 0.125),    # 0.5 * 1 * 0.25
    ])
    def test_objectness_delta_is_obj_normalizer_times_class_multiplier_times_1_minus_p(self, cls_id, expected):
        c = cfg(classes=2, counters_per_class=(100, 25), obj_normalizer=0.5)
        res = run(c, Head(c).set(OBJ, LN3), truths((0.5, 0.5, 0.5, 0.5, cls_id)))
        close(at(res.delta, c, OBJ), expected)

    def test_objectness_smooth_keeps_a_nonzero_negative_delta_of_the_cell_pass(self):
        # truth 0.8x0.8 vs prediction 0.5x0.5: IoU 0.39 < 0.5 -> first pass -0.75 (p 0.75);
        # without smoothing the assigned cell would get 1 - 0.75 = 0.25
        c = cfg(objectness_smooth=1)
        res = run(c, Head(c).set(OBJ, LN3), truths((0.5, 0.5, 0.8, 0.8, 0)))
        close(at(res.delta, c, OBJ), -0.75)
        close(at(run(cfg(), Head(c).set(OBJ, LN3), truths((0.5, 0.5, 0.8, 0.8, 0))).delta, c, OBJ), 0.25)

    def test_objectness_smooth_keeps_the_smoothed_ignore_value(self):
        # prediction side 0.4/sqrt(0.9) vs truth 0.4: IoU 0.9 > 0.5, class prob 0.5 > 0.25
        # -> first pass max(0.9 - 0.5, -0.5) = 0.4, which the assignment keeps (not 0.5)
        c = cfg(objectness_smooth=1)
        t = math.log(SIDE_IOU09 * 100 / 50)
        res = run(c, Head(c).set(W, t).set(H, t), truths(TRUTH_CENTRE))
        close(at(res.delta, c, OBJ), 0.4)

    def test_objectness_smooth_sets_the_target_where_the_delta_is_exactly_zero(self):
        # p = 0 (logit -200): first pass writes 0.5*(0 - 0) = 0, IoU 0.39 not ignored,
        # so the assignment writes 0.5 * 1 * (1 - 0) = 0.5
        c = cfg(objectness_smooth=1, obj_normalizer=0.5)
        res = run(c, Head(c).set(OBJ, P_ZERO), truths((0.5, 0.5, 0.8, 0.8, 0)))
        assert at(res.delta, c, OBJ) == 0.5


# ---------------------------------------------------------------------------
# 9. iou_thresh and averaging


class TestIouThresh:
    # mask (0, 1), anchors 40 and 50; truth 0.4x0.4 -> best anchor 40 (IoU 1);
    # anchor 50 has shape IoU 0.16/0.25 = 0.64.
    def _cfg(self, **changes):
        return cfg(num=2, mask=(0, 1), anchors=(40.0, 40.0, 50.0, 50.0), **changes)

    def test_second_mask_anchor_above_iou_thresh_is_assigned_too(self):
        c = self._cfg(iou_thresh=0.6)
        res = run(c, Head(c), truths(TRUTH_CENTRE))
        assert role(res, a=0) & ROLE_BEST_ANCHOR
        assert role(res, a=1) & ROLE_EXTRA_ANCHOR
        assert at(res.delta, c, OBJ, a=1) == 0.5
        assert at(res.delta, c, CLS(0), a=1) == 0.5
        # mse towards anchor 50: (2 - 0.16)*0.75*(ln(0.4*100/50) - 0); one positive class -> /1
        close(at(res.delta, c, W, a=1), 1.84 * 0.75 * math.log(0.8))
        assert res.stats.count_raw == 2
        assert res.stats["total_bbox"] == 2
        assert res.branches["iou_thresh_extra"] == 1

    def test_anchor_at_or_below_iou_thresh_is_not_assigned(self):
        c = self._cfg(iou_thresh=0.7, ignore_thresh=0.7)  # 0.64 < 0.7; the cell stays negative
        res = run(c, Head(c), truths(TRUTH_CENTRE))
        assert not role(res, a=1) & ROLE_EXTRA_ANCHOR
        assert at(res.delta, c, OBJ, a=1) == -0.5
        assert at(res.delta, c, CLS(0), a=1) == 0.0
        assert res.stats.count_raw == 1

    @staticmethod
    def _centred_kinds():
        # truth 0.4x0.4 vs anchor 60x20 (0.6x0.2), both centred at 0:
        # I = 0.4*0.2 = 0.08, U = 0.12 + 0.16 - 0.08 = 0.2, IoU 0.4; enclosing 0.6x0.4 = 0.24
        # GIoU = 0.4 - (0.24 - 0.2)/0.24 = 0.2333; DIoU = IoU (centre distance 0);
        # CIoU = IoU - alpha*v with v = 4/pi^2 (atan(1) - atan(3))^2
        iou = 0.4
        v = 4 / math.pi ** 2 * (math.atan(1.0) - math.atan(3.0)) ** 2
        alpha = v / (1 - iou + v + 1e-6)
        return {"iou": iou, "giou": iou - 0.04 / 0.24, "diou": iou, "ciou": iou - alpha * v}

    @pytest.mark.parametrize("kind", ["iou", "giou", "diou", "ciou"])
    def test_iou_thresh_kind_decides_which_anchors_qualify(self, kind):
        thresh = 0.395
        value = self._centred_kinds()[kind]
        expected = value > thresh   # iou 0.4 yes, diou 0.4 yes, ciou 0.389 no, giou 0.233 no
        assert expected == (kind in ("iou", "diou"))
        c = cfg(num=2, mask=(0, 1), anchors=(40.0, 40.0, 60.0, 20.0), iou_thresh=thresh,
                iou_thresh_kind=kind)
        res = run(c, Head(c), truths(TRUTH_CENTRE))
        assert bool(role(res, a=1) & ROLE_EXTRA_ANCHOR) == expected
        assert res.stats.count_raw == (2 if expected else 1)

    @pytest.mark.parametrize("iou_thresh, divisor", [(0.99, 3), (1.0, 1)])
    def test_averaging_divides_box_deltas_by_positive_class_count(self, iou_thresh, divisor):
        # label_smooth_eps 0.6, 3 classes all at p 0.2: targets 0.7 / 0.3 / 0.3 -> class
        # deltas 0.5, 0.1, 0.1, all positive -> box deltas / 3 (only when iou_thresh < 1)
        c = cfg(classes=3, label_smooth_eps=0.6, iou_thresh=iou_thresh)
        head = Head(c)
        for k in range(3):
            head.set(CLS(k), LN_QUARTER)
        res = run(c, head, truths((0.3, 0.5, 0.5, 0.5, 0)))
        close(at(res.delta, c, CLS(0)), 0.5)
        close(at(res.delta, c, CLS(1)), 0.1)
        close(at(res.delta, c, X), 1.75 * 0.75 * (0.3 - 0.5) / divisor)
        assert bool(role(res) & ROLE_AVERAGED) == (divisor > 1)

    def test_averaging_after_two_classes_share_a_slot(self):
        # T1 class 0 and T2 class 1 in one slot: after the shortcut both class deltas are
        # 1 - 0.5 > 0, so the accumulated box deltas are halved.
        c = cfg(classes=2, iou_thresh=0.99)
        t1, t2 = (0.3, 0.5, 0.5, 0.5, 0), (0.6, 0.5, 0.5, 0.5, 1)
        res = run(c, Head(c), truths(t1, t2))
        s = 1.75 * 0.75
        close(at(res.delta, c, X), (s * (0.3 - 0.5) + s * (0.6 - 0.5)) / 2)
        assert res.branches["averaging_divides"] == 1


# ---------------------------------------------------------------------------
# 10. Cost


def non_box_sq(res, c) -> float:
    d = res.delta.astype(np.float64).reshape(res.delta.shape[0], c.n, 5 + c.classes, -1)
    return float((d[:, :, 4:] ** 2).sum())


class TestCost:
    def test_ciou_show_details_cost_is_mean_1_minus_iou_plus_obj_normalizer_times_non_box_squares(self):
        c = cfg(iou_loss="ciou", obj_normalizer=0.5, iou_normalizer=0.6)
        res = run(c, Head(c).set(OBJ, LN3), truths((0.5, 0.5, 0.8, 0.6, 0)))
        iou = 0.25 / 0.48      # plain IoU, not CIoU
        expected = 0.6 * (1 - iou) / 1 + 0.5 * non_box_sq(res, c)
        # the non-box part is objectness 0.5*(1 - 0.75) and class 1 - 0.5
        assert non_box_sq(res, c) == pytest.approx(0.125 ** 2 + 0.5 ** 2, rel=1e-6)
        assert res.stats["cost"] == pytest.approx(expected, rel=1e-6)
        assert res.stats["cost"] != pytest.approx(float((res.delta.astype(np.float64) ** 2).sum()), rel=1e-3)

    def test_giou_cost_uses_1_minus_giou(self):
        # the apart case: box_giou uses the true union 0.04 + 0.08 = 0.12 and C = 0.5*0.4 = 0.2:
        # GIoU = 0 - (0.2 - 0.12)/0.2 = -0.4 -> 1 - GIoU = 1.4
        c = cfg(anchors=(20.0, 20.0), iou_loss="giou")
        res = run(c, Head(c), truths((0.8, 0.5, 0.2, 0.4, 0)))
        close(res.stats["tot_giou_loss"], 1.4)
        assert res.stats["cost"] == pytest.approx(0.75 * 1.4 + non_box_sq(res, c), rel=1e-6)

    def test_cost_mean_over_two_truths(self):
        # two images, same truth: count 2, mean(1 - IoU) unchanged, squares summed over both
        c = cfg(iou_loss="ciou", batch=2)
        res = run(c, Head(c, batch=2), truths((0.5, 0.5, 0.8, 0.6, 0), batch=2))
        iou = 0.25 / 0.48
        assert res.stats["count"] == 2
        assert res.stats["cost"] == pytest.approx(0.75 * (2 * (1 - iou)) / 2 + non_box_sq(res, c), rel=1e-6)

    @pytest.mark.parametrize("changes", [{"iou_loss": "mse"}, {"iou_loss": "ciou", "show_details": 0},
                                         {"iou_loss": "giou", "show_details": 0}])
    def test_mse_or_show_details_0_cost_is_sum_of_squares_of_delta(self, changes):
        c = cfg(classes=2, **changes)
        head = Head(c, h=2, w=2).set(OBJ, LN3).set(W, 0.3).set(CLS(1), 1.0)
        res = run(c, head, truths((0.3, 0.4, 0.45, 0.5, 1), (0.8, 0.7, 0.3, 0.2, 0)))
        sq = float(np.sum(res.delta.astype(np.float64) ** 2))
        # darknet: pow(float(sqrt(float sum)), 2) -> equal to the sum up to float rounding
        assert res.stats["cost"] == pytest.approx(sq, rel=1e-6)

    def test_count_is_at_least_one(self):
        c = cfg(iou_loss="ciou")
        res = run(c, Head(c).set(OBJ, LN3), truths())
        assert res.stats.count_raw == 0
        assert res.stats["count"] == 1
        # no truth: the IoU part is 0.75 * 0 / max(0, 1) = 0 (not 0/0); the only nonzero
        # delta is the objectness 1*(0 - 0.75), so cost = 0.75^2
        assert res.stats["cost"] == pytest.approx(0.75 ** 2, rel=1e-6)

    def test_gpu_backward_scales_delta_only_when_asked(self):
        c = cfg(delta_normalizer=0.5)
        head = Head(c).set(OBJ, LN3).set(W, 0.3)
        t = truths((0.3, 0.4, 0.45, 0.5, 0))
        plain = run(c, head, t)
        base = run(cfg(), head, t)
        scaled = run(c, head, t, backward="gpu")
        np.testing.assert_array_equal(plain.delta, base.delta)   # default: darknet's CPU backward
        assert np.count_nonzero(base.delta)
        np.testing.assert_array_equal(scaled.delta, base.delta * np.float32(0.5))
        assert scaled.stats["cost"] == plain.stats["cost"]       # the cost is darknet's, unscaled
        # darknet's GPU factor is the float32 product loss_scale * delta_normalizer, then one multiply
        mixed = run(c, head, t, backward="gpu", loss_scale=128.3)
        np.testing.assert_array_equal(mixed.delta, base.delta * (np.float32(128.3) * np.float32(0.5)))


# ---------------------------------------------------------------------------
# 11. pjreddie flavor


def pj(**changes: object) -> YoloConfig:
    base: dict[str, object] = dict(classes=1, num=1, mask=(0,), anchors=(50.0, 50.0), net_w=100, net_h=100)
    base.update(changes)
    return YoloConfig.for_flavor("pjreddie", **base)


class TestPjreddie:
    def test_alexeyab_only_options_change_nothing(self):
        kw = dict(classes=2, num=1, mask=(0,), anchors=(50.0, 50.0), net_w=100, net_h=100)
        plain = pj(classes=2)
        loaded = YoloConfig(max_boxes=90, scale_x_y=2.0, iou_normalizer=0.1, obj_normalizer=0.3,
                            cls_normalizer=4.0, iou_loss="ciou", label_smooth_eps=0.2, focal_loss=1,
                            counters_per_class=(10, 1), objectness_smooth=1, max_delta=0.01,
                            iou_thresh=0.1, new_coords=1, **kw)
        head = Head(plain).set(X, LN3).set(W, 0.3).set(OBJ, LN3).set(CLS(1), 1.0)
        t = truths((0.3, 0.4, 0.45, 0.5, 1))
        a = run_reference(plain, head.x, t, flavor="pjreddie")
        b = run_reference(loaded, head.x, t, flavor="pjreddie")
        np.testing.assert_array_equal(a.output, b.output)
        np.testing.assert_array_equal(a.delta, b.delta)
        assert a.stats["cost"] == b.stats["cost"]
        # and the values are pjreddie's: x not scaled (0.75), box deltas (2 - wh)*(t - x) with
        # no 0.75 normalizer, objectness 1 - p, classes 0/1 targets
        close(at(a.output, plain, X), 0.75, abs_=1e-7)
        s = 2 - 0.45 * 0.5
        close(at(a.delta, plain, X), s * (0.3 - 0.75))
        close(at(a.delta, plain, W), s * (math.log(0.45 * 100 / 50) - 0.3))
        close(at(a.delta, plain, OBJ), 0.25)
        close(at(a.delta, plain, CLS(1)), 1 - sig(1.0))
        close(at(a.delta, plain, CLS(0)), -0.5)

    def test_box_deltas_of_two_truths_in_one_slot_overwrite(self):
        c = pj()
        t1, t2 = (0.3, 0.4, 0.5, 0.5, 0), (0.6, 0.7, 0.4, 0.6, 0)
        res = run(c, Head(c), truths(t1, t2))
        s2 = 2 - 0.24   # only the second truth's delta survives
        close(at(res.delta, c, X), s2 * (0.6 - 0.5))
        close(at(res.delta, c, Y), s2 * (0.7 - 0.5))
        close(at(res.delta, c, W), s2 * math.log(0.8))
        close(at(res.delta, c, H), s2 * math.log(1.2))

    def test_class_shortcut_tests_class_0s_delta(self):
        # p0 0.75, p1 exactly 0. T1 class 0 -> [0.25, 0]. T2 class 1: pjreddie sees class
        # 0's delta 0.25 != 0 -> shortcut, only class 1 -> 1 - 0 = 1: [0.25, 1].
        # AlexeyAB tests class 1's delta (0) -> full rewrite: [-0.75, 1].
        t = truths((0.5, 0.5, 0.5, 0.5, 0), (0.5, 0.5, 0.5, 0.5, 1))
        c_pj, c_ab = pj(classes=2), cfg(classes=2)
        head = Head(c_pj).set(CLS(0), LN3).set(CLS(1), P_ZERO)
        r_pj, r_ab = run(c_pj, head, t), run(c_ab, head, t)
        close(at(r_pj.delta, c_pj, CLS(0)), 0.25)
        assert at(r_pj.delta, c_pj, CLS(1)) == 1.0
        assert role(r_pj) & ROLE_CLASS_SHORTCUT
        close(at(r_ab.delta, c_ab, CLS(0)), -0.75)
        assert at(r_ab.delta, c_ab, CLS(1)) == 1.0

    def test_ignore_has_no_class_match_test(self):
        # the case AlexeyAB blocks (class probs 0.2 and 0.1 <= 0.25, IoU 0.9): pjreddie ignores
        c = pj(classes=2, num=2, mask=(0, 1), anchors=(40.0, 40.0, 80.0, 80.0))
        res = run(c, slot1_head(c, (0.2, 0.1)), truths(TRUTH_CENTRE))
        assert at(res.delta, c, OBJ, a=1) == 0.0
        assert role(res, a=1) & ROLE_IGNORED
        assert not role(res, a=1) & ROLE_CLASSMATCH_BLOCKED


# ---------------------------------------------------------------------------
# Input validation


class TestInputValidation:
    @pytest.mark.parametrize("col, value", [(0, 1.0), (0, -0.1), (0, float("nan")), (1, 1.0), (1, -0.5)])
    def test_truth_centre_outside_0_1_is_refused_naming_the_row(self, col, value):
        c = cfg()
        bad = [0.5, 0.5, 0.2, 0.2, 0.0]
        bad[col] = value
        with pytest.raises(InputError, match=r"truth\[0, 1\]: centre .* is outside \[0, 1\)"):
            run(c, Head(c, h=2, w=2), truths((0.25, 0.25, 0.2, 0.2, 0), tuple(bad)))

    def test_a_bad_row_after_the_terminator_is_not_read(self):
        c = cfg()
        res = run(c, Head(c), truths((0.5, 0.5, 0.2, 0.2, 0), (0.0, 0.0, 0.0, 0.0, 0), (1.0, 7.0, 0.2, 0.2, 0)))
        assert res.stats.count_raw == 1

    def test_wrong_channel_count_names_the_expected_layout(self):
        c = cfg(classes=2)  # needs 1*(5+2) = 7 channels
        with pytest.raises(InputError, match=r"8 channels.*n\*\(5\+classes\) = 1\*\(5\+2\) = 7"):
            run_reference(c, np.zeros((1, 8, 1, 1), np.float32), truths())

    def test_integer_input_is_refused(self):
        c = cfg()
        with pytest.raises(InputError, match=r"input: dtype int64 is not floating point"):
            run_reference(c, np.zeros((1, 6, 1, 1), np.int64), truths())

    def test_truth_batch_must_match_input_batch(self):
        c = cfg()
        with pytest.raises(InputError, match=r"truth: batch 1 does not match the input's batch 2"):
            run_reference(c, np.zeros((2, 6, 1, 1), np.float32), truths())
