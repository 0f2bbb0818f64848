"""Sigmoid gradient handling: darknet's applied gradient vs the textbook autograd loss.

darknet writes delta on the activated output and never multiplies by the
logistic derivative, nor back-propagates scale_x_y or the box decoding.
For objectness and classes that equals binary cross-entropy with logits;
for boxes it does not. These tests compute the naive loss (parity.naive:
BCE + MSE/IoU through autograd) and darknet's gradient (-delta, through
DarknetYoloLoss) on the same case and pin, term by term, the exact factor
between them:

  term          naive grad / darknet grad
  objectness    1
  classes       1
  x, y (mse)    s * sigmoid'(t)                    (logistic derivative, scale_x_y)
  w, h (mse)    1
  x (IoU loss)  s * sigmoid'(t) / grid_w           (+ the box decoding's 1/grid)
  w (IoU loss)  anchor_w / (2 * net_w)             (darknet: 2x the exact dIoU/dw, times exp(t))
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from parity.config import YoloConfig
from parity.naive import naive_yolo_loss
from parity.torch import DarknetYoloLoss

GRID = 4
NET = 64
ANCHORS = (10.0, 14.0, 23.0, 27.0, 37.0, 58.0)


def _case(iou_loss: str, scale_x_y: float) -> tuple[YoloConfig, torch.Tensor, torch.Tensor, tuple[int, int, int]]:
    """One truth whose best anchor is slot 2; the slot's prediction overlaps it (IoU ~0.6)."""
    config = YoloConfig(classes=2, num=3, mask=(0, 1, 2), anchors=ANCHORS, net_w=NET, net_h=NET,
                        iou_loss=iou_loss, iou_normalizer=0.5, scale_x_y=scale_x_y, ignore_thresh=0.99)
    rng = np.random.default_rng(3)
    head = rng.normal(0, 0.5, size=(1, config.channels, GRID, GRID)).astype(np.float32)
    truth = np.zeros((1, 4, 6), np.float32)
    truth[0, 0] = (0.41, 0.62, 0.55, 0.85, 1, 0)      # cell (i=1, j=2); best anchor 37x58
    a, j, i = 2, 2, 1
    base = a * 7
    # Edges that cross the truth's on every side, so each box term has a gradient:
    # x = (1 + 0.88)/4 = 0.47, w 0.45 -> 0.245..0.695 against the truth's 0.135..0.685;
    # y = (2 + 0.12)/4 = 0.53, h 0.75 -> 0.155..0.905 against 0.195..1.045.
    head[0, base + 0, j, i] = 1.5
    head[0, base + 1, j, i] = -1.5
    head[0, base + 2, j, i] = np.log(0.45 * NET / 37)
    head[0, base + 3, j, i] = np.log(0.75 * NET / 58)
    return config, torch.from_numpy(head), torch.from_numpy(truth), (a, j, i)


def _grads(config, head, truth):
    h1 = head.clone().requires_grad_()
    DarknetYoloLoss(config)(h1, truth).backward()
    h2 = head.clone().requires_grad_()
    naive_yolo_loss(h2, truth, config).backward()
    return h1.grad, h2.grad


def _sigmoid_prime(t: float) -> float:
    s = 1 / (1 + np.exp(-float(t)))
    return s * (1 - s)


@pytest.mark.parametrize("iou_loss", ["mse", "iou"])
class TestSigmoidGradientHandling:
    def test_objectness_and_classes_equal_bce_with_logits(self, iou_loss):
        config, head, truth, (a, j, i) = _case(iou_loss, 1.2)
        darknet, naive = _grads(config, head, truth)
        view = lambda g: g.view(1, 3, 7, GRID, GRID)
        torch.testing.assert_close(view(naive)[:, :, 4], view(darknet)[:, :, 4], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(view(naive)[0, a, 5:, j, i], view(darknet)[0, a, 5:, j, i], rtol=1e-5, atol=1e-6)

    def test_box_terms_differ_by_the_documented_factors(self, iou_loss):
        s = 1.2
        config, head, truth, (a, j, i) = _case(iou_loss, s)
        darknet, naive = _grads(config, head, truth)
        d = darknet.view(1, 3, 7, GRID, GRID)[0, a, :4, j, i].double()
        n = naive.view(1, 3, 7, GRID, GRID)[0, a, :4, j, i].double()
        t = head.view(1, 3, 7, GRID, GRID)[0, a, :4, j, i].double()
        assert (d.abs() > 1e-4).all(), "the case must give every box term a real gradient"
        ratio = (n / d).numpy()
        if iou_loss == "mse":
            expected = [s * _sigmoid_prime(t[0]), s * _sigmoid_prime(t[1]), 1.0, 1.0]
        else:
            expected = [s * _sigmoid_prime(t[0]) / GRID, s * _sigmoid_prime(t[1]) / GRID,
                        ANCHORS[4] / (2 * NET), ANCHORS[5] / (2 * NET)]
        np.testing.assert_allclose(ratio, expected, rtol=2e-4)

    def test_scale_x_y_is_not_back_propagated(self, iou_loss):
        # darknet's x gradient is unchanged by scale_x_y's chain factor; the naive one scales with it
        _, head, truth, (a, j, i) = _case(iou_loss, 1.2)
        c1, _, _, _ = _case(iou_loss, 1.2)
        c2, _, _, _ = _case(iou_loss, 2.4)
        d1, n1 = _grads(c1, head, truth)
        d2, n2 = _grads(c2, head, truth)
        pick = lambda g: float(g.view(1, 3, 7, GRID, GRID)[0, a, 0, j, i])
        t = float(head.view(1, 3, 7, GRID, GRID)[0, a, 0, j, i])
        # naive/darknet doubles with s (2.4 vs 1.2): the factor darknet leaves out
        assert pytest.approx((pick(n2) / pick(d2)) / (pick(n1) / pick(d1)), rel=1e-4) == 2.0
        assert _sigmoid_prime(t) > 0
