"""The diagnosis names the cause of a deliberately wrong candidate, one cause per candidate.

Each wrong candidate starts from darknet's own delta (the PyTorch port) and
breaks exactly one thing the way ports do; the diagnosis must name it.
"""
from __future__ import annotations

import numpy as np
import torch

from parity.candidates import Candidate
from parity.config import YoloConfig
from parity.deviations.search import SearchCase, search
from parity.generate import random_case
from parity.reference import run_reference
from parity.roles import (ROLE_BEST_ANCHOR, ROLE_CLASSMATCH_BLOCKED, ROLE_EXTRA_ANCHOR, ROLE_IGNORED,
                          ROLE_TRUTH_THRESH)
from parity.suite import RunOptions, compare_case
from parity.torch import yolo_forward

V4 = dict(classes=4, num=9, anchors=(12.0, 16, 19, 36, 40, 28, 36, 75, 76, 55, 72, 146, 142, 110, 192, 243, 459, 401),
          net_w=160, net_h=160)


def _delta(x, t, config, **kw):
    run = yolo_forward(x, t, config, **kw)
    return run.delta, run


class Named(set):
    """The diagnosis's (term, cause) pairs; ``deviations``: the catalogue ids the explanation search names."""

    def __init__(self, pairs, cases):
        super().__init__(pairs)
        self._cases = cases

    @property
    def deviations(self) -> set[str]:
        return search(self._cases).ids


def _diagnose(config: YoloConfig, fn, seeds=range(3), flavor="alexeyab", convention="delta"):
    """Causes named over a few cases (a cause found in any case counts), and the cases for the search."""
    names: set[tuple[str, str]] = set()
    cases = []
    failed = 0
    for seed in seeds:
        case = random_case(seed, config, flavor=flavor)
        res = compare_case(case, RunOptions(search=True), candidate=Candidate("wrong", fn, convention))
        cases.append(SearchCase(res.case, res.source, res.candidate_delta))
        if not res.passed:
            failed += 1
            names |= {(c["term"], c["cause"]) for c in res.causes}
    assert failed, "the wrong candidate must actually differ from darknet"
    return Named(names, cases)


def _roles(x, t, config):
    ref = run_reference(config, x.numpy(), t.numpy())
    return torch.from_numpy(ref.roles)


def _view(d, config):
    b, _, h, w = d.shape
    return d.view(b, config.n, 5 + config.classes, h, w)


class TestValueCauses:
    def test_sign_convention(self):
        config = YoloConfig(mask=(0, 1, 2), **V4)
        names = _diagnose(config, lambda x, t, c: -_delta(x, t, c)[0])
        assert ("obj", "sign") in names and ("x", "sign") in names

    def test_iou_normalizer_not_applied(self):
        config = YoloConfig(mask=(0, 1, 2), iou_normalizer=0.07, iou_loss="ciou", **V4)

        def fn(x, t, c):
            d, _ = _delta(x, t, c)
            v = _view(d, c)
            v[:, :, :4] /= np.float32(0.07)
            return d
        names = _diagnose(config, fn)
        assert ("x", "normalizer") in names and ("w", "normalizer") in names
        assert names.deviations == {"iou_normalizer_ignored"}

    def test_obj_normalizer_not_applied(self):
        config = YoloConfig(mask=(0, 1, 2), obj_normalizer=4.0, **V4)

        def fn(x, t, c):
            d, _ = _delta(x, t, c)
            _view(d, c)[:, :, 4] /= 4.0
            return d
        names = _diagnose(config, fn)
        assert ("obj", "normalizer") in names
        assert names.deviations == {"obj_normalizer_ignored"}

    def test_box_scale_2_minus_wh_missing(self):
        config = YoloConfig(mask=(0, 1, 2), iou_loss="mse", **V4)

        def fn(x, t, c):
            d, st = _delta(x, t, c)
            v = _view(d, c)
            asg = st.decisions.assignments
            tw, th = t[asg.b, asg.t, 2], t[asg.b, asg.t, 3]
            v[asg.b, asg.a, :4, asg.j, asg.i] /= (2 - tw * th)[:, None]
            return d
        names = _diagnose(config, fn)
        assert ("w", "box_scale") in names
        assert names.deviations == {"scale_2wh_missing"}

    def test_logistic_derivative_on_x_y(self):
        config = YoloConfig(mask=(0, 1, 2), iou_loss="mse", **V4)

        def fn(x, t, c):
            d, _ = _delta(x, t, c)
            p = torch.sigmoid(_view(x, c)[:, :, 0:2])
            _view(d, c)[:, :, 0:2] *= p * (1 - p)
            return d
        names = _diagnose(config, fn)
        assert ("x", "logistic_derivative") in names and ("y", "logistic_derivative") in names
        assert names.deviations == {"xy_logistic_derivative"}

    def test_logistic_derivative_on_objectness(self):
        config = YoloConfig(mask=(0, 1, 2), **V4)

        def fn(x, t, c):
            d, _ = _delta(x, t, c)
            p = torch.sigmoid(_view(x, c)[:, :, 4])
            _view(d, c)[:, :, 4] *= p * (1 - p)
            return d
        names = _diagnose(config, fn)
        assert ("obj", "logistic_derivative") in names
        assert names.deviations == {"obj_mse"}

    def test_scale_x_y_back_propagated(self):
        config = YoloConfig(mask=(0, 1, 2), iou_loss="mse", scale_x_y=2.0, **V4)

        def fn(x, t, c):
            d, _ = _delta(x, t, c)
            _view(d, c)[:, :, 0:2] *= 2.0
            return d
        names = _diagnose(config, fn)
        assert ("x", "scale_x_y") in names
        assert names.deviations == {"xy_scale_derivative"}

    def test_exp_tw_factor_missing(self):
        config = YoloConfig(mask=(0, 1, 2), iou_loss="ciou", **V4)

        def fn(x, t, c):
            d, _ = _delta(x, t, c)
            _view(d, c)[:, :, 2:4] /= torch.exp(_view(x, c)[:, :, 2:4])
            return d
        assert ("w", "exp_t") in _diagnose(config, fn)

    def test_exact_iou_derivative_is_half_of_darknets(self):
        config = YoloConfig(mask=(0, 1, 2), iou_loss="iou", **V4)

        def fn(x, t, c):
            d, _ = _delta(x, t, c)
            _view(d, c)[:, :, 2:4] *= 0.5
            return d
        names = _diagnose(config, fn)
        assert ("w", "iou_wh_factor") in names and ("h", "iou_wh_factor") in names
        # (no search check: halving darknet's w, h everywhere is not the exact derivative, which is 0 where the
        # boxes do not overlap and darknet's is not; tests/test_porters.py holds real exact-derivative losses)

    def test_naive_autograd_loss_is_explained(self):
        # The textbook loss: x, y carry sigmoid' (and the decoding), w, h the decoded box's exp(t)*anchor/net.
        from parity.naive import naive_yolo_loss
        config = YoloConfig(mask=(0, 1, 2), iou_loss="iou", iou_normalizer=1.0, **V4)
        names = _diagnose(config, naive_yolo_loss, convention="loss")
        assert ("x", "logistic_derivative") in names
        assert ("w", "anchor_over_net") in names

    def test_autograd_ciou_centre_terms(self):
        # Autograd of CIoU through the decoded box: x, y differ by more than a clean factor.
        from parity.naive import naive_yolo_loss
        config = YoloConfig(mask=(0, 1, 2), iou_loss="ciou", iou_normalizer=1.0, **V4)
        names = _diagnose(config, naive_yolo_loss, seeds=range(6), convention="loss")
        assert ("x", "autograd_iou") in names or ("y", "autograd_iou") in names

    def test_label_smoothing_missing(self):
        config = YoloConfig(mask=(0, 1, 2), label_smooth_eps=0.1, **V4)
        names = _diagnose(config, lambda x, t, c: _delta(x, t, c.replace(label_smooth_eps=0.0))[0])
        assert ("cls", "label_smoothing") in names
        assert names.deviations == {"cls_label_smoothing_ignored"}

    def test_no_overlap_branch(self):
        config = YoloConfig(mask=(0, 1, 2), iou_loss="giou", **V4)

        def fn(x, t, c):
            d, st = _delta(x, t, c)
            out = yolo_forward(x, t, c).output
            v = _view(d, c)
            asg = st.decisions.assignments
            o = _view(out, c)
            for k in range(asg.b.numel()):
                b, a, j, i, tt = (int(getattr(asg, n)[k]) for n in ("b", "a", "j", "i", "t"))
                px = (i + o[b, a, 0, j, i]) / x.shape[3]
                pw = torch.exp(o[b, a, 2, j, i].double()) * c.anchors[2 * int(asg.anchor[k])] / c.net_w
                tx, tw = t[b, tt, 0], t[b, tt, 2]
                if min(px + pw / 2, tx + tw / 2) - max(px - pw / 2, tx - tw / 2) <= 0:
                    v[b, a, 0:4, j, i] *= 0.3      # something else where the boxes are apart
            return d
        names = _diagnose(config, fn, seeds=range(6))
        assert any(cause == "no_overlap_branch" for _, cause in names)


class TestDecisionCauses:
    def test_no_class_match_in_ignore_test(self):
        config = YoloConfig(mask=(0, 1, 2), **V4)

        def fn(x, t, c):
            d, _ = _delta(x, t, c)
            blocked = (_roles(x, t, c) & ROLE_CLASSMATCH_BLOCKED) != 0
            _view(d, c)[:, :, 4][blocked & ((_roles(x, t, c) & (ROLE_BEST_ANCHOR | ROLE_EXTRA_ANCHOR)) == 0)] = 0
            return d
        names = _diagnose(config, fn, seeds=range(8))
        assert ("obj", "no_class_match") in names
        assert names.deviations == {"ignore_no_class_match"}

    def test_ignore_threshold_missing(self):
        config = YoloConfig(mask=(0, 1, 2), **V4)

        def fn(x, t, c):
            d, _ = _delta(x, t, c)
            out = yolo_forward(x, t, c).output
            roles = _roles(x, t, c)
            ignored = ((roles & ROLE_IGNORED) != 0) & ((roles & (ROLE_BEST_ANCHOR | ROLE_EXTRA_ANCHOR |
                                                                   ROLE_TRUTH_THRESH)) == 0)
            _view(d, c)[:, :, 4][ignored] = -_view(out, c)[:, :, 4][ignored]
            return d
        names = _diagnose(config, fn, seeds=range(8))
        assert ("obj", "no_ignore") in names
        assert names.deviations == {"ignore_none"}

    def test_iou_thresh_assignment_missing(self):
        config = YoloConfig(mask=(0, 1, 2), iou_thresh=0.213, **V4)
        names = _diagnose(config, lambda x, t, c: _delta(x, t, c.replace(iou_thresh=1.0))[0], seeds=range(6))
        assert ("box", "no_iou_thresh") in names
        # iou_thresh=1 also turns darknet's averaging off: two deviations
        assert names.deviations == {"assign_no_extras", "averaging_none"}

    def test_best_anchor_within_mask(self):
        config = YoloConfig(mask=(3, 4, 5), **V4)

        def within_mask(x, t, c):
            anchors = tuple(v for m in c.mask for v in c.anchors[2 * m: 2 * m + 2])
            local = c.replace(num=c.n, mask=tuple(range(c.n)), anchors=anchors)
            return _delta(x, t, local)[0]
        names = _diagnose(config, within_mask, seeds=range(6))
        assert ("box", "anchor_within_mask") in names
        assert names.deviations == {"assign_best_in_mask"}

    def test_last_writer_instead_of_accumulate(self):
        config = YoloConfig(mask=(0, 1, 2), iou_loss="ciou", **V4)

        def last_writer(x, t, c):
            d, st = _delta(x, t, c)
            asg = st.decisions.assignments
            key = {}
            for k in range(asg.b.numel()):
                key.setdefault(tuple(int(getattr(asg, n)[k]) for n in ("b", "a", "j", "i")), []).append(int(asg.t[k]))
            v = _view(d, c)
            for (b, a, j, i), ts in key.items():
                if len(ts) < 2:
                    continue
                only_last = t.clone()
                keep = torch.zeros(t.shape[1], dtype=torch.bool)
                keep[ts[-1]] = True
                only_last[b] = torch.where(keep[:, None], t[b], torch.zeros_like(t[b]))
                only_last[b, 0] = t[b, ts[-1]]
                only_last[b, ts[-1]] = t[b, ts[-1]] if ts[-1] == 0 else 0
                dl, _ = _delta(x, only_last, c)
                v[b, a, 0:4, j, i] = _view(dl, c)[b, a, 0:4, j, i]
            return d
        names = _diagnose(config, last_writer, seeds=range(12))
        assert any(cause == "last_writer" for _, cause in names)
        assert names.deviations == {"box_last_writer"}

    def test_averaging_missing(self):
        config = YoloConfig(mask=(0, 1, 2), iou_thresh=0.213, label_smooth_eps=0.1, **V4)

        def fn(x, t, c):
            d, _ = _delta(x, t, c)
            v = _view(d, c)
            count = (v[:, :, 5:] > 0).sum(dim=2)
            undo = (v[:, :, 4] != 0) & (count > 1)
            v[:, :, 0:4] = torch.where(undo[:, :, None], v[:, :, 0:4] * count[:, :, None], v[:, :, 0:4])
            return d
        names = _diagnose(config, fn)
        assert any(cause == "no_averaging" for _, cause in names)
        assert names.deviations == {"averaging_none"}


def test_a_correct_candidate_has_no_causes():
    config = YoloConfig(mask=(0, 1, 2), iou_thresh=0.213, iou_loss="ciou", **V4)
    for seed in range(3):
        case = random_case(seed, config)
        res = compare_case(case, RunOptions())
        assert res.passed and res.causes == []
