"""Box overlap measures and darknet's IoU-loss derivative, vectorized in PyTorch.

Mirrors ``darknet_ref/ref_box.c`` operation for operation, on tensors that
broadcast: float32 arithmetic, with darknet's double steps (pow in DIoU, atan
and the 4/pi^2 factors in CIoU, the ``+ 1e-6`` in CIoU's alpha) done in float64
and rounded once. ``torch.fmin``/``fmax`` reproduce C's fmin/fmax on NaN, and
C's ``a > b ? a : b`` is written as ``torch.where(a > b, a, b)``.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

PI2 = math.pi * math.pi


class Boxes(NamedTuple):
    """Centre/size boxes in network units; fields broadcast against each other."""

    x: Tensor
    y: Tensor
    w: Tensor
    h: Tensor


class Edges(NamedTuple):
    t: Tensor
    b: Tensor
    l: Tensor
    r: Tensor


def edges_of(a: Boxes) -> Edges:
    return Edges(a.y - a.h / 2, a.y + a.h / 2, a.x - a.w / 2, a.x + a.w / 2)


def _overlap_1d(c1: Tensor, s1: Tensor, c2: Tensor, s2: Tensor) -> Tensor:
    lo1, lo2 = c1 - s1 / 2, c2 - s2 / 2
    lo = torch.where(lo1 > lo2, lo1, lo2)
    hi1, hi2 = c1 + s1 / 2, c2 + s2 / 2
    hi = torch.where(hi1 < hi2, hi1, hi2)
    return hi - lo


def intersection(a: Boxes, b: Boxes) -> Tensor:
    iw = _overlap_1d(a.x, a.w, b.x, b.w)
    ih = _overlap_1d(a.y, a.h, b.y, b.h)
    apart = (iw < 0) | (ih < 0)
    return torch.where(apart, torch.zeros_like(iw), iw * ih)


def union_area(a: Boxes, b: Boxes, inter: Tensor) -> Tensor:
    return a.w * a.h + b.w * b.h - inter


def box_iou(a: Boxes, b: Boxes, pjreddie: bool = False) -> Tensor:
    """darknet's box_iou; pjreddie's divides unguarded (0/0 -> NaN)."""
    inter = intersection(a, b)
    uni = union_area(a, b, inter)
    iou = inter / uni
    if pjreddie:
        return iou
    return torch.where((inter == 0) | (uni == 0), torch.zeros_like(iou), iou)


def _enclosing(a: Boxes, b: Boxes) -> Edges:
    return Edges(torch.fmin(a.y - a.h / 2, b.y - b.h / 2), torch.fmax(a.y + a.h / 2, b.y + b.h / 2),
                 torch.fmin(a.x - a.w / 2, b.x - b.w / 2), torch.fmax(a.x + a.w / 2, b.x + b.w / 2))


def box_giou(a: Boxes, b: Boxes) -> Tensor:
    c = _enclosing(a, b)
    area = (c.r - c.l) * (c.b - c.t)
    iou = box_iou(a, b)
    inter = intersection(a, b)
    uni = union_area(a, b, inter)
    return torch.where(area == 0, iou, iou - (area - uni) / area)


def _diag_and_dist(a: Boxes, b: Boxes) -> tuple[Tensor, Tensor]:
    c = _enclosing(a, b)
    cw, ch = c.r - c.l, c.b - c.t
    return cw * cw + ch * ch, (a.x - b.x) * (a.x - b.x) + (a.y - b.y) * (a.y - b.y)


def box_diou(a: Boxes, b: Boxes) -> Tensor:
    diag2, dist2 = _diag_and_dist(a, b)
    iou = box_iou(a, b)
    term = torch.pow((dist2 / diag2).double(), 0.6).to(iou.dtype)  # darknet: pow(d/c, 0.6) in double
    return torch.where(diag2 == 0, iou, iou - term)


def _atan_diff(pred: Boxes, truth: Boxes) -> Tensor:
    """atan(w_t/h_t) - atan(w_p/h_p) in float64 (C's atan of float ratios)."""
    return torch.atan((truth.w / truth.h).double()) - torch.atan((pred.w / pred.h).double())


def _ciou_alpha(v: Tensor, iou: Tensor) -> Tensor:
    """v / (1 - IoU + v + 1e-6): float sum, then the literal makes it double."""
    return (v.double() / ((1 - iou + v).double() + 0.000001)).to(v.dtype)


def box_ciou(a: Boxes, b: Boxes, detach_alpha: bool = False) -> Tensor:
    """darknet's CIoU; ``detach_alpha`` keeps autograd out of alpha (as common ports do)."""
    diag2, dist2 = _diag_and_dist(a, b)
    iou = box_iou(a, b)
    diff = _atan_diff(a, b)
    v = (4 / PI2 * diff * diff).to(iou.dtype)
    alpha = _ciou_alpha(v, iou)
    if detach_alpha:
        alpha = alpha.detach()
    return torch.where(diag2 == 0, iou, iou - (dist2 / diag2 + alpha * v))


def box_iou_kind(a: Boxes, b: Boxes, kind: str, detach_alpha: bool = False) -> Tensor:
    """IoU of darknet's ``iou_thresh_kind``: iou, giou, diou or ciou."""
    if kind == "giou":
        return box_giou(a, b)
    if kind == "diou":
        return box_diou(a, b)
    if kind == "ciou":
        return box_ciou(a, b, detach_alpha)
    return box_iou(a, b)


def iou_kind_partials(pred: Boxes, truth: Boxes, kind: str, detach_alpha: bool = False) -> Boxes:
    """The exact derivative of ``box_iou_kind(pred, truth)`` w.r.t. pred's x, y, w, h (autograd).

    Where darknet writes ``dx_box_iou`` (``iou_loss_grad``: w, h at twice this),
    a port differentiating its IoU loss gets this; NaN/Inf stay where they arise.
    """
    with torch.enable_grad():
        leaves = [c.detach().clone().requires_grad_(True) for c in pred]
        value = box_iou_kind(Boxes(*leaves), truth, kind, detach_alpha)
        grads = torch.autograd.grad(value.sum(), leaves, allow_unused=True)
    return Boxes(*(torch.zeros_like(c) if g is None else g for c, g in zip(pred, grads)))


def _quotient_grad(num: Tensor, dnum: Tensor, den: Tensor, dden: Tensor) -> Tensor:
    return ((den * dnum) - (num * dden)) / (den * den)


def iou_loss_grad(pred: Boxes, truth: Boxes, kind: str) -> Boxes:
    """darknet's dx_box_iou mapped to (dx, dy, dw, dh); dw, dh are twice the exact derivative.

    GIoU adds the enclosing-area term, DIoU/CIoU the centre-distance term (and
    CIoU the aspect term); where the boxes do not overlap (Iw <= 0 or Ih <= 0)
    only that extra term remains. See darknet_ref/ref_box.c.
    """
    pe, te = edges_of(pred), edges_of(truth)
    pt, pb = torch.fmin(pe.t, pe.b), torch.fmax(pe.t, pe.b)
    pl, pr = torch.fmin(pe.l, pe.r), torch.fmax(pe.l, pe.r)
    zero = torch.zeros_like(pt)

    area_p = (pb - pt) * (pr - pl)
    area_t = (te.b - te.t) * (te.r - te.l)
    ih = torch.fmin(pb, te.b) - torch.fmax(pt, te.t)
    iw = torch.fmin(pr, te.r) - torch.fmax(pl, te.l)
    inter = iw * ih
    uni = area_p + area_t - inter
    dist2 = (pred.x - truth.x) * (pred.x - truth.x) + (pred.y - truth.y) * (pred.y - truth.y)
    enc_w = torch.fmax(pr, te.r) - torch.fmin(pl, te.l)
    enc_h = torch.fmax(pb, te.b) - torch.fmin(pt, te.t)
    enc_area = enc_w * enc_h

    dA = Edges(-1 * (pr - pl), pr - pl, -1 * (pb - pt), pb - pt)
    dI = Edges(torch.where(pt > te.t, -1 * iw, zero), torch.where(pb < te.b, iw, zero),
               torch.where(pl > te.l, -1 * ih, zero), torch.where(pr < te.r, ih, zero))
    dU = Edges(*(da - di for da, di in zip(dA, dI)))
    dC = Edges(torch.where(pt < te.t, -1 * enc_w, zero), torch.where(pb > te.b, enc_w, zero),
               torch.where(pl < te.l, -1 * enc_h, zero), torch.where(pr > te.r, enc_h, zero))

    positive_union = uni > 0
    g = [torch.where(positive_union, _quotient_grad(inter, di, uni, du), zero) for di, du in zip(dI, dU)]
    g_t, g_b, g_l, g_r = g
    # Corner selection, sequential as in darknet (the second sees the first's update).
    tb, lr = pe.t < pe.b, pe.l < pe.r
    g_t = torch.where(tb, g_t, g_b)
    g_b = torch.where(tb, g_b, g_t)
    g_l = torch.where(lr, g_l, g_r)
    g_r = torch.where(lr, g_r, g_l)

    apart = (iw <= 0) | (ih <= 0)
    if kind == "giou":
        e = [_quotient_grad(uni, du, enc_area, dc) for du, dc in zip(dU, dC)]
        has_area = enc_area > 0
        g_t, g_b, g_l, g_r = (torch.where(apart, ei, torch.where(has_area, gi + ei, gi))
                              for gi, ei in zip((g_t, g_b, g_l, g_r), e))

    dx, dy, dw, dh = g_l + g_r, g_t + g_b, g_r - g_l, g_b - g_t

    if kind in ("diou", "ciou"):
        enc = _enclosing(pred, truth)
        cw, ch = enc.r - enc.l, enc.b - enc.t
        diag2 = cw * cw + ch * ch
        one = torch.ones_like(pt)
        top_y, top_h = torch.where(pt < te.t, one, zero), torch.where(pt < te.t, -0.5 * one, zero)
        bot_y, bot_h = torch.where(pb > te.b, one, zero), torch.where(pb > te.b, 0.5 * one, zero)
        lef_x, lef_w = torch.where(pl < te.l, one, zero), torch.where(pl < te.l, -0.5 * one, zero)
        rig_x, rig_w = torch.where(pr > te.r, one, zero), torch.where(pr > te.r, 0.5 * one, zero)
        dcw_dx, dcw_dw = rig_x - lef_x, rig_w - lef_w
        dch_dy, dch_dh = bot_y - top_y, bot_h - top_h
        d2 = diag2 * diag2
        # The zero partials stay in the sums so NaN/Inf propagate as in C.
        c_dx = (2 * (truth.x - pred.x) * diag2 - (2 * cw * dcw_dx + 2 * ch * zero) * dist2) / d2
        c_dy = (2 * (truth.y - pred.y) * diag2 - (2 * cw * zero + 2 * ch * dch_dy) * dist2) / d2
        c_dw = (2 * cw * dcw_dw + 2 * ch * zero) * dist2 / d2
        c_dh = (2 * cw * zero + 2 * ch * dch_dh) * dist2 / d2
        if kind == "ciou":
            diff = _atan_diff(pred, truth)
            v = (4 / PI2 * diff * diff).to(pt.dtype)
            alpha = _ciou_alpha(v, inter / uni)
            ar_dw = (8 / PI2 * diff * pred.h.double()).to(pt.dtype)
            ar_dh = (-8 / PI2 * diff * pred.w.double()).to(pt.dtype)
            c_dw = c_dw + alpha * ar_dw
            c_dh = c_dh + alpha * ar_dh
        has_diag = diag2 > 0
        dx, dy, dw, dh = (torch.where(apart, ci, torch.where(has_diag, gi + ci, gi))
                          for gi, ci in zip((dx, dy, dw, dh), (c_dx, c_dy, c_dw, c_dh)))
    return Boxes(dx, dy, dw, dh)
