"""YOLOv4-style losses (CIoU box regression), each written the way a known kind of port writes it.

Every function is ``loss(input, truth, cfg) -> scalar`` on one raw head; the box
decoding uses the cfg's scale_x_y (sigmoid * s - (s - 1) / 2) and anchors.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .common import (Pairs, best_ious_with_labels, ciou_xywh, decode_boxes, head_view, iou_xywh, label_box,
                     match_by_anchor_iou, match_by_ratio, pred_at, read_labels)


def _darknet_ignore(view: Tensor, pred: tuple, labels: list[Tensor], thresh: float, class_check: bool) -> Tensor:
    """Slots whose negative objectness a port leaves out (best IoU above ``thresh``, class check optional)."""
    with torch.no_grad():
        best = best_ious_with_labels(pred, labels)
        ignored = best > thresh
        if class_check:
            ignored &= (torch.sigmoid(view[:, :, 5:]) > 0.25).any(dim=2)
    return ignored


def _positive(m: Pairs, B: int, n: int, H: int, W: int) -> Tensor:
    pos = torch.zeros(B, n, H, W, dtype=torch.bool)
    pos[m.b, m.a, m.j, m.i] = True
    return pos


def _obj_bce(view: Tensor, tobj: Tensor, pos: Tensor, ignored: Tensor) -> Tensor:
    weight = (pos | ~ignored).float()
    return (weight * F.binary_cross_entropy_with_logits(view[:, :, 4], tobj, reduction="none")).sum()


def _multi_hot(m: Pairs, B: int, n: int, C: int, H: int, W: int) -> Tensor:
    tcls = torch.zeros(B, n, C, H, W)
    tcls[m.b, m.a, m.cls, m.j, m.i] = 1.0
    return tcls


def _cls_bce(view: Tensor, tcls: Tensor, pos: Tensor) -> Tensor:
    return (pos[:, :, None] * F.binary_cross_entropy_with_logits(view[:, :, 5:], tcls, reduction="none")).sum()


def ultralytics_ratio_ciou(x: Tensor, truth: Tensor, cfg) -> Tensor:
    """ultralytics (yolov5-like, centre cell only): anchors matched by wh ratio < 4, CIoU with alpha under no_grad.

    lbox = box gain (the cfg's iou_normalizer) * mean over matches of (1 - CIoU); objectness BCE
    summed with no ignore; classes BCE summed on the matched slots.
    """
    view = head_view(x, cfg)
    B, n, E, H, W = view.shape
    labels = read_labels(truth, cfg)
    m = match_by_ratio(labels, cfg, H, W, k=4.0)
    pred = decode_boxes(view, cfg)
    lbox = x.new_zeros(())
    if m.n:
        ciou = ciou_xywh(pred_at(pred, m), label_box(m), detach_alpha=True)
        lbox = cfg.iou_normalizer * (1.0 - ciou).mean()
    pos = _positive(m, B, n, H, W)
    lobj = F.binary_cross_entropy_with_logits(view[:, :, 4], pos.float(), reduction="sum")
    return lbox + lobj + _cls_bce(view, _multi_hot(m, B, n, cfg.classes, H, W), pos)


def bubbliiiing_style(x: Tensor, truth: Tensor, cfg) -> Tensor:
    """yolov4-pytorch (bubbliiiing) style: best anchor of all only, (1 - CIoU) * (2 - w*h), alpha differentiated.

    Box loss weighted by the cfg's iou_normalizer and summed over matches; ignore where the best
    IoU with any label exceeds ignore_thresh (no class check); objectness and classes BCE summed.
    """
    view = head_view(x, cfg)
    B, n, E, H, W = view.shape
    labels = read_labels(truth, cfg)
    m = match_by_anchor_iou(labels, cfg, H, W, among="all")
    pred = decode_boxes(view, cfg)
    loss_loc = x.new_zeros(())
    if m.n:
        box_loss_scale = 2 - m.box[:, 2] * m.box[:, 3]
        ciou = ciou_xywh(pred_at(pred, m), label_box(m), detach_alpha=False)
        loss_loc = cfg.iou_normalizer * ((1 - ciou) * box_loss_scale).sum()
    pos = _positive(m, B, n, H, W)
    ignored = _darknet_ignore(view, pred, labels, cfg.ignore_thresh, class_check=False)
    loss_conf = _obj_bce(view, pos.float(), pos, ignored)
    return loss_loc + loss_conf + _cls_bce(view, _multi_hot(m, B, n, cfg.classes, H, W), pos)


def tf_custom_gradient(x: Tensor, truth: Tensor, cfg) -> Tensor:
    """A TF-port style custom gradient: darknet's delta layout with the exact CIoU derivative.

    The box gradient is d CIoU / d (x, y, w, h) of the decoded box (alpha held constant), put on
    the x, y outputs as is and on w, h times exp(t) (darknet's chain), scaled by iou_normalizer and
    clipped at max_delta per match; matches as AlexeyAB (best anchor, then iou_thresh extras); every
    term divided by the batch size.
    """
    view = head_view(x, cfg)
    B, n, E, H, W = view.shape
    labels = read_labels(truth, cfg)
    m = match_by_anchor_iou(labels, cfg, H, W, among="all", thresh=cfg.iou_thresh)
    pred = decode_boxes(view, cfg)
    lbox = x.new_zeros(())
    if m.n:
        leaf = [c.detach().clone().requires_grad_(True) for c in pred_at(pred, m)]
        ciou = ciou_xywh(tuple(leaf), label_box(m), detach_alpha=True)
        g = torch.autograd.grad(ciou.sum(), leaf)
        raw = view[m.b, m.a, 0:4, m.j, m.i]
        chain = torch.stack([torch.ones(m.n), torch.ones(m.n), torch.exp(raw[:, 2].detach()),
                             torch.exp(raw[:, 3].detach())], dim=1)
        delta = (cfg.iou_normalizer * torch.stack(g, dim=1) * chain).clamp(-cfg.max_delta, cfg.max_delta)
        lbox = -(delta * raw).sum()          # d lbox / d raw = -delta: the surrogate of a custom gradient
    pos = _positive(m, B, n, H, W)
    ignored = _darknet_ignore(view, pred, labels, cfg.ignore_thresh, class_check=True)
    lobj = _obj_bce(view, pos.float(), pos, ignored)
    lcls = _cls_bce(view, _multi_hot(m, B, n, cfg.classes, H, W), pos)
    return (lbox + lobj + lcls) / B


def inplace_targets_ciou(x: Tensor, truth: Tensor, cfg) -> Tensor:
    """Target tensors written in place, label by label: box, one-hot class row, IoU objectness target.

    Box loss iou_normalizer * (1 - CIoU) over the positive slots (alpha under no_grad), autograd
    through the decoding; objectness BCE averaged over every slot with darknet's ignore test.
    """
    view = head_view(x, cfg)
    B, n, E, H, W = view.shape
    C = cfg.classes
    labels = read_labels(truth, cfg)
    m = match_by_anchor_iou(labels, cfg, H, W, among="all", thresh=cfg.iou_thresh)
    pred = decode_boxes(view, cfg)
    tbox = torch.zeros(B, n, 4, H, W)
    tcls = torch.zeros(B, n, C, H, W)
    tobj = torch.zeros(B, n, H, W)
    pos = torch.zeros(B, n, H, W, dtype=torch.bool)
    for b, a, anchor, j, i, box, c in m:
        tbox[b, a, :, j, i] = box
        tcls[b, a, :, j, i] = F.one_hot(torch.tensor(c), C).float()
        with torch.no_grad():
            p = tuple(comp[b, a, j, i] for comp in pred)
            tobj[b, a, j, i] = iou_xywh(p, tuple(box))
        pos[b, a, j, i] = True
    lbox = x.new_zeros(())
    if m.n:
        pb = tuple(c[pos] for c in pred)
        tb = tuple(tbox[:, :, k][pos] for k in range(4))
        lbox = cfg.iou_normalizer * (1 - ciou_xywh(pb, tb, detach_alpha=True)).sum()
    ignored = _darknet_ignore(view, pred, labels, cfg.ignore_thresh, class_check=True)
    weight = (pos | ~ignored).float()
    lobj = (weight * F.binary_cross_entropy_with_logits(view[:, :, 4], tobj, reduction="none")).mean()
    return lbox + lobj + _cls_bce(view, tcls, pos)


def darknet_aware_weights(x: Tensor, truth: Tensor, cfg) -> Tensor:
    """A port that follows AlexeyAB's matching and per-cell averaging but uses its own gains.

    Box: 0.05 * sum over matches of (1 - CIoU) / (classes labelled at the match's slot), alpha
    differentiated; objectness BCE summed with darknet's ignore; classes 0.5 * BCE over the matched
    slots divided by the number of matches.
    """
    view = head_view(x, cfg)
    B, n, E, H, W = view.shape
    labels = read_labels(truth, cfg)
    m = match_by_anchor_iou(labels, cfg, H, W, among="all", thresh=cfg.iou_thresh)
    pred = decode_boxes(view, cfg)
    tcls = _multi_hot(m, B, n, cfg.classes, H, W)
    pos = _positive(m, B, n, H, W)
    lbox = x.new_zeros(())
    if m.n:
        classes_here = tcls[m.b, m.a, :, m.j, m.i].sum(dim=1)
        ciou = ciou_xywh(pred_at(pred, m), label_box(m), detach_alpha=False)
        lbox = 0.05 * ((1 - ciou) / classes_here).sum()
    ignored = _darknet_ignore(view, pred, labels, cfg.ignore_thresh, class_check=True)
    lobj = _obj_bce(view, pos.float(), pos, ignored)
    lcls = 0.5 * _cls_bce(view, tcls, pos) / max(1, m.n)
    return lbox + lobj + lcls


def own_anchors_mse_obj(x: Tensor, truth: Tensor, cfg) -> Tensor:
    """eriklindernoren-on-YOLOv4 style: the best of the head's own anchors only, CIoU (alpha no_grad).

    Box loss iou_normalizer * sum of (1 - CIoU); objectness 0.5 * squared error of the sigmoid with
    darknet's ignore test; classes BCE summed.
    """
    view = head_view(x, cfg)
    B, n, E, H, W = view.shape
    labels = read_labels(truth, cfg)
    m = match_by_anchor_iou(labels, cfg, H, W, among="head")
    pred = decode_boxes(view, cfg)
    lbox = x.new_zeros(())
    if m.n:
        lbox = cfg.iou_normalizer * (1 - ciou_xywh(pred_at(pred, m), label_box(m), detach_alpha=True)).sum()
    pos = _positive(m, B, n, H, W)
    ignored = _darknet_ignore(view, pred, labels, cfg.ignore_thresh, class_check=True)
    keep = (pos | ~ignored).float()
    lobj = 0.5 * (keep * (torch.sigmoid(view[:, :, 4]) - pos.float()) ** 2).sum()
    return lbox + lobj + _cls_bce(view, _multi_hot(m, B, n, cfg.classes, H, W), pos)
