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
    return _iou_of(inter, union_area(a, b, inter), pjreddie)


def _iou_of(inter: Tensor, uni: Tensor, pjreddie: bool = False) -> Tensor:
    iou = inter / uni
    if pjreddie:
        return iou
    return torch.where((inter == 0) | (uni == 0), torch.zeros_like(iou), iou)


def _enclosing(a: Boxes, b: Boxes) -> Edges:
    return Edges(torch.fmin(a.y - a.h / 2, b.y - b.h / 2), torch.fmax(a.y + a.h / 2, b.y + b.h / 2),
                 torch.fmin(a.x - a.w / 2, b.x - b.w / 2), torch.fmax(a.x + a.w / 2, b.x + b.w / 2))


def box_giou(a: Boxes, b: Boxes) -> Tensor:
    return box_iou_and_giou(a, b)[1]


def box_iou_and_giou(a: Boxes, b: Boxes) -> tuple[Tensor, Tensor]:
    """AlexeyAB's box_iou and box_giou from one intersection (darknet computes it in each)."""
    c = _enclosing(a, b)
    area = (c.r - c.l) * (c.b - c.t)
    inter = intersection(a, b)
    uni = union_area(a, b, inter)
    iou = _iou_of(inter, uni)
    return iou, torch.where(area == 0, iou, iou - (area - uni) / area)


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


def _signs(like: Tensor) -> Tensor:
    """[-1, 1] on ``like``'s device, made there (no host-to-device copy)."""
    return torch.linspace(-1, 1, 2, dtype=like.dtype, device=like.device)


def _sides(a: Boxes, signs: Tensor) -> Tensor:
    """Edges as ``[..., 2, 2]``: (y - h/2, y + h/2) then (x - w/2, x + w/2), as darknet computes them."""
    centre = torch.stack([a.y, a.x], dim=-1)[..., None]
    half = (torch.stack([a.h, a.w], dim=-1) / 2)[..., None]
    return centre + signs * half      # c + (-1 * s/2) is exactly c - s/2


def iou_loss_grad(pred: Boxes, truth: Boxes, kind: str) -> Boxes:
    """darknet's dx_box_iou mapped to (dx, dy, dw, dh); dw, dh are twice the exact derivative.

    GIoU adds the enclosing-area term, DIoU/CIoU the centre-distance term (and
    CIoU the aspect term); where the boxes do not overlap (Iw <= 0 or Ih <= 0)
    only that extra term remains. See darknet_ref/ref_box.c. The four sides
    are computed together as ``[..., 2, 2]`` tensors (vertical then
    horizontal; low then high side), and the DIoU/CIoU term's on (y, x) and
    (h, w) pairs: the same float operations per element as darknet's
    side-by-side code, in far fewer tensor operations (each a kernel launch
    on a GPU).
    """
    fields = torch.broadcast_tensors(*pred, *truth)
    pred, truth = Boxes(*fields[:4]), Boxes(*fields[4:])
    signs = _signs(pred.x)
    raw, te = _sides(pred, signs), _sides(truth, signs)
    plo, phi = torch.fmin(raw[..., 0], raw[..., 1]), torch.fmax(raw[..., 0], raw[..., 1])   # (t, l), (b, r)
    tlo, thi = te[..., 0], te[..., 1]
    zero = torch.zeros_like(plo[..., 0])

    size_p, size_t = phi - plo, thi - tlo                   # (h, w) of each, from the edges
    area_p = size_p[..., 0] * size_p[..., 1]
    area_t = size_t[..., 0] * size_t[..., 1]
    overlap = torch.fmin(phi, thi) - torch.fmax(plo, tlo)   # (ih, iw)
    ih, iw = overlap[..., 0], overlap[..., 1]
    inter = iw * ih
    uni = area_p + area_t - inter
    dist2 = (pred.x - truth.x) * (pred.x - truth.x) + (pred.y - truth.y) * (pred.y - truth.y)
    enclosing = torch.fmax(phi, thi) - torch.fmin(plo, tlo)  # (enc_h, enc_w)
    enc_w, enc_h = enclosing[..., 1], enclosing[..., 0]
    enc_area = enc_w * enc_h

    # d/d(t, b) of the areas move with the width, d/d(l, r) with the height: flip(-1) pairs them so
    dA = signs * size_p.flip(-1)[..., None]
    inside = torch.stack([plo > tlo, phi < thi], dim=-1)    # t > tt, b < tb; l > tl, r < tr
    dI = torch.where(inside, signs * overlap.flip(-1)[..., None], zero[..., None, None])
    dU = dA - dI
    beyond = torch.stack([plo < tlo, phi > thi], dim=-1)    # t < tt, b > tb; l < tl, r > tr
    dC = torch.where(beyond, signs * enclosing.flip(-1)[..., None], zero[..., None, None])

    g = torch.where((uni > 0)[..., None, None], _quotient_grad(inter[..., None, None], dI, uni[..., None, None], dU),
                    zero[..., None, None])
    # Corner selection, sequential as in darknet (the second sees the first's update): where a
    # pair of edges is out of order both take the high side's gradient.
    g = torch.where((raw[..., 0] < raw[..., 1])[..., None], g, g[..., 1:])

    apart = (iw <= 0) | (ih <= 0)
    if kind == "giou":
        e = _quotient_grad(uni[..., None, None], dU, enc_area[..., None, None], dC)
        g = torch.where(apart[..., None, None], e, torch.where((enc_area > 0)[..., None, None], g + e, g))

    move, size = g[..., 0] + g[..., 1], g[..., 1] - g[..., 0]     # (dy, dx), (dh, dw)

    if kind in ("diou", "ciou"):
        c_raw = torch.fmax(raw[..., 1], thi) - torch.fmin(raw[..., 0], tlo)   # (ch, cw) of _enclosing
        cw, ch = c_raw[..., 1], c_raw[..., 0]
        diag2 = cw * cw + ch * ch
        unit = torch.where(beyond, torch.ones_like(g), g.new_zeros(()))
        halves = torch.where(beyond, signs * 0.5, g.new_zeros(()))
        d_unit, d_half = unit[..., 1] - unit[..., 0], halves[..., 1] - halves[..., 0]   # (dch_dy, dcw_dx), (dch_dh, dcw_dw)
        d2, diag2_, dist2_ = (diag2 * diag2)[..., None], diag2[..., None], dist2[..., None]
        two_cw, two_ch, zero_ = (2 * cw)[..., None], (2 * ch)[..., None], zero[..., None]

        def spread(d: Tensor) -> Tensor:
            """2*cw*(0, d_x) + 2*ch*(d_y, 0): darknet's sums keep their zero partials, so NaN/Inf
            propagate as in C."""
            return two_cw * torch.cat([zero_, d[..., 1:]], dim=-1) + two_ch * torch.cat([d[..., :1], zero_], dim=-1)

        centre = 2 * (torch.stack([truth.y, truth.x], dim=-1) - torch.stack([pred.y, pred.x], dim=-1))
        c_move = (centre * diag2_ - spread(d_unit) * dist2_) / d2      # (c_dy, c_dx)
        c_size = spread(d_half) * dist2_ / d2                          # (c_dh, c_dw)
        if kind == "ciou":
            diff = _atan_diff(pred, truth)
            v = (4 / PI2 * diff * diff).to(plo.dtype)
            alpha = _ciou_alpha(v, inter / uni)
            ar_dw = (8 / PI2 * diff * pred.h.double()).to(plo.dtype)
            ar_dh = (-8 / PI2 * diff * pred.w.double()).to(plo.dtype)
            c_size = c_size + alpha[..., None] * torch.stack([ar_dh, ar_dw], dim=-1)
        apart_, has_diag = apart[..., None], (diag2 > 0)[..., None]
        move = torch.where(apart_, c_move, torch.where(has_diag, move + c_move, move))
        size = torch.where(apart_, c_size, torch.where(has_diag, size + c_size, size))
    dx, dy, dw, dh = move[..., 1], move[..., 0], size[..., 1], size[..., 0]
    return Boxes(dx, dy, dw, dh)
