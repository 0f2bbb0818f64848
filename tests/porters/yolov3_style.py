"""YOLOv3-style losses (MSE-family box regression), each written the way a known kind of port writes it.

Every function is ``loss(input, truth, cfg) -> scalar``: ``input`` the raw head
[B, n*(5+C), H, W], ``truth`` the padded labels, ``cfg`` the layer's options.
They read the labels, match anchors, build targets and reduce on their own.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .common import (all_anchors, best_ious_with_labels, decode_boxes, giou_xywh, head_view, iou_xywh, label_box,
                     layer_anchors, match_by_anchor_iou, match_by_ratio, pred_at, read_labels, shape_iou)


def keras_yolo3(x: Tensor, truth: Tensor, cfg) -> Tensor:
    """keras-yolo3 (qqwweee) style: a y_true tensor written in place, BCE on x, y logits, 0.5*MSE on w, h.

    Both box parts weighted by (2 - w*h); ignore where the prediction's best IoU with a label
    of its image is above 0.5; every term summed, then divided by the batch size.
    """
    view = head_view(x, cfg)
    B, n, E, H, W = view.shape
    C = cfg.classes
    labels = read_labels(truth, cfg)
    anchors = all_anchors(cfg)
    net = torch.tensor([cfg.net_w, cfg.net_h], dtype=torch.float32)
    mask = list(cfg.mask)
    # preprocess_true_boxes: y_true[l][b, j, i, k] = box, objectness, one entry per class set to 1
    object_mask = torch.zeros(B, n, H, W)
    raw_true_xy = torch.zeros(B, n, 2, H, W)
    raw_true_wh = torch.zeros(B, n, 2, H, W)
    box_loss_scale = torch.zeros(B, n, H, W)
    true_class = torch.zeros(B, n, C, H, W)
    for b, lab in enumerate(labels):
        for row in lab:
            wh = row[2:4] * net
            best = int(torch.argmax(shape_iou(wh[None], anchors)[0]))
            if best not in mask:
                continue
            k = mask.index(best)
            i, j = int((row[0] * W).item()), int((row[1] * H).item())
            object_mask[b, k, j, i] = 1
            raw_true_xy[b, k, 0, j, i] = row[0] * W - i
            raw_true_xy[b, k, 1, j, i] = row[1] * H - j
            raw_true_wh[b, k, :, j, i] = torch.log(wh / anchors[best])
            box_loss_scale[b, k, j, i] = 2 - row[2] * row[3]
            true_class[b, k, int(row[4]), j, i] = 1
    pred = decode_boxes(view, cfg)
    ignore_mask = (best_ious_with_labels(pred, labels) < 0.5).float()
    om, scale = object_mask[:, :, None], (object_mask * box_loss_scale)[:, :, None]
    xy_loss = scale * F.binary_cross_entropy_with_logits(view[:, :, 0:2], raw_true_xy, reduction="none")
    wh_loss = scale * 0.5 * (raw_true_wh - view[:, :, 2:4]) ** 2
    conf = F.binary_cross_entropy_with_logits(view[:, :, 4], object_mask, reduction="none")
    confidence_loss = object_mask * conf + (1 - object_mask) * conf * ignore_mask
    class_loss = om * F.binary_cross_entropy_with_logits(view[:, :, 5:], true_class, reduction="none")
    mf = float(B)
    return (xy_loss.sum() + wh_loss.sum() + confidence_loss.sum() + class_loss.sum()) / mf


def erik_pytorch_yolov3(x: Tensor, truth: Tensor, cfg) -> Tensor:
    """eriklindernoren PyTorch-YOLOv3 style: build_targets over the head's own anchors, in-place targets.

    x, y regressed as sigmoid outputs and w, h as raw values with a summed MSE (no (2 - w*h));
    objectness and classes BCE; every slot without a target is a no-object slot.
    """
    view = head_view(x, cfg)
    B, n, E, H, W = view.shape
    C = cfg.classes
    labels = read_labels(truth, cfg)
    anchors = layer_anchors(cfg)
    net = torch.tensor([cfg.net_w, cfg.net_h], dtype=torch.float32)
    obj_mask = torch.zeros(B, n, H, W, dtype=torch.bool)
    tx, ty, tw, th = (torch.zeros(B, n, H, W) for _ in range(4))
    tcls = torch.zeros(B, n, H, W, C)
    for b, lab in enumerate(labels):
        for row in lab:
            gwh = row[2:4] * net
            best_n = int(torch.argmax(shape_iou(gwh[None], anchors)[0]))
            gx, gy = row[0] * W, row[1] * H
            gi, gj = int(gx.item()), int(gy.item())
            obj_mask[b, best_n, gj, gi] = True
            tx[b, best_n, gj, gi] = gx - gi
            ty[b, best_n, gj, gi] = gy - gj
            tw[b, best_n, gj, gi] = torch.log(gwh[0] / anchors[best_n, 0])
            th[b, best_n, gj, gi] = torch.log(gwh[1] / anchors[best_n, 1])
            tcls[b, best_n, gj, gi, int(row[4])] = 1
    px, py = torch.sigmoid(view[:, :, 0]), torch.sigmoid(view[:, :, 1])
    pw, ph = view[:, :, 2], view[:, :, 3]
    loss_box = (F.mse_loss(px[obj_mask], tx[obj_mask], reduction="sum")
                + F.mse_loss(py[obj_mask], ty[obj_mask], reduction="sum")
                + F.mse_loss(pw[obj_mask], tw[obj_mask], reduction="sum")
                + F.mse_loss(ph[obj_mask], th[obj_mask], reduction="sum"))
    conf = view[:, :, 4]
    loss_conf = F.binary_cross_entropy_with_logits(conf, obj_mask.float(), reduction="sum")
    pcls = view[:, :, 5:].permute(0, 1, 3, 4, 2)
    loss_cls = F.binary_cross_entropy_with_logits(pcls[obj_mask], tcls[obj_mask], reduction="sum")
    return loss_box + loss_conf + loss_cls


def ultralytics_v3_giou(x: Tensor, truth: Tensor, cfg) -> Tensor:
    """ultralytics/yolov3 (archive) style: wh-ratio matching (anchor_t=4), GIoU through the decoding.

    lbox = mean over matches of (1 - GIoU); objectness BCE averaged over every slot with no
    ignore; classes BCE summed over the matched slots (multi-hot where two labels share one).
    """
    view = head_view(x, cfg)
    B, n, E, H, W = view.shape
    labels = read_labels(truth, cfg)
    m = match_by_ratio(labels, cfg, H, W, k=4.0)
    pred = decode_boxes(view, cfg)
    tobj = torch.zeros(B, n, H, W)
    tcls = torch.zeros(B, n, cfg.classes, H, W)
    lbox = x.new_zeros(())
    if m.n:
        giou = giou_xywh(pred_at(pred, m), label_box(m))
        lbox = (1.0 - giou).mean()
        tobj[m.b, m.a, m.j, m.i] = 1.0
        tcls[m.b, m.a, m.cls, m.j, m.i] = 1.0
    lobj = F.binary_cross_entropy_with_logits(view[:, :, 4], tobj)          # mean over b*n*h*w
    pos = tobj > 0
    lcls = F.binary_cross_entropy_with_logits(view[:, :, 5:].permute(0, 1, 3, 4, 2)[pos],
                                              tcls.permute(0, 1, 3, 4, 2)[pos], reduction="sum")
    return lbox + lobj + lcls


def yolov2_sse(x: Tensor, truth: Tensor, cfg) -> Tensor:
    """YOLOv1/v2 heritage: sum-squared error on sigmoid x, y, raw w, h and sigmoid objectness.

    Box errors weighted by the cfg's iou_normalizer and (2 - w*h), per label (summed); the class row
    of a slot is written as the one-hot of its label (the last label wins); the ignore test keeps
    darknet's class check but uses 0.5.
    """
    view = head_view(x, cfg)
    B, n, E, H, W = view.shape
    C = cfg.classes
    labels = read_labels(truth, cfg)
    m = match_by_anchor_iou(labels, cfg, H, W, among="all")
    anc = all_anchors(cfg)
    loss = x.new_zeros(())
    tobj = torch.zeros(B, n, H, W)
    tcls = torch.zeros(B, n, H, W, C)
    for b, a, anchor, j, i, box, c in m:
        scale = cfg.iou_normalizer * (2 - box[2] * box[3])
        tx, ty = box[0] * W - i, box[1] * H - j
        tw = torch.log(box[2] * cfg.net_w / anc[anchor, 0])
        th = torch.log(box[3] * cfg.net_h / anc[anchor, 1])
        p = view[b, a, :4, j, i]
        loss = loss + scale * ((torch.sigmoid(p[0]) - tx) ** 2 + (torch.sigmoid(p[1]) - ty) ** 2
                               + (p[2] - tw) ** 2 + (p[3] - th) ** 2)
        tobj[b, a, j, i] = 1.0
        tcls[b, a, j, i] = F.one_hot(torch.tensor(c), C).float()
    with torch.no_grad():
        pred = decode_boxes(view, cfg)
        best = best_ious_with_labels(pred, labels)
        class_ok = (torch.sigmoid(view[:, :, 5:]) > 0.25).any(dim=2)
        keep = ~(class_ok & (best > 0.5)) | (tobj > 0)
    conf = torch.sigmoid(view[:, :, 4])
    loss = loss + (keep * (conf - tobj) ** 2).sum()
    pos = tobj > 0
    pcls = view[:, :, 5:].permute(0, 1, 3, 4, 2)
    return loss + F.binary_cross_entropy_with_logits(pcls[pos], tcls[pos], reduction="sum")


def mmdet_style_heads(x: Tensor, truth: Tensor, cfg) -> Tensor:
    """mmdetection YOLOV3Head style: BCE on x, y and MSE on w, h, both with loss_weight 2 (no (2 - w*h)).

    Ignore where the best IoU with any label exceeds the cfg's ignore_thresh (no class check);
    each term summed per head and the total averaged over the network's heads.
    """
    view = head_view(x, cfg)
    B, n, E, H, W = view.shape
    labels = read_labels(truth, cfg)
    m = match_by_anchor_iou(labels, cfg, H, W, among="all")
    anc = all_anchors(cfg)
    heads = len(cfg.anchors) // 2 // len(cfg.mask)
    pos_mask = torch.zeros(B, n, H, W)
    target_label = torch.zeros(B, n, cfg.classes, H, W)
    loss_xy = loss_wh = x.new_zeros(())
    if m.n:
        txy = torch.stack([m.box[:, 0] * W - m.i, m.box[:, 1] * H - m.j], dim=1)
        twh = torch.log(m.box[:, 2:4] * torch.tensor([cfg.net_w, cfg.net_h]) / anc[m.anchor])
        p = view[m.b, m.a, :, m.j, m.i]
        loss_xy = 2.0 * F.binary_cross_entropy_with_logits(p[:, 0:2], txy, reduction="sum")
        loss_wh = 1.0 * F.mse_loss(p[:, 2:4], twh, reduction="sum")
        pos_mask[m.b, m.a, m.j, m.i] = 1
        target_label[m.b, m.a, m.cls, m.j, m.i] = 1
    with torch.no_grad():
        neg_mask = (best_ious_with_labels(decode_boxes(view, cfg), labels) <= cfg.ignore_thresh).float()
    conf_w = torch.maximum(pos_mask, neg_mask)
    loss_conf = (conf_w * F.binary_cross_entropy_with_logits(view[:, :, 4], pos_mask, reduction="none")).sum()
    loss_cls = (pos_mask[:, :, None] * F.binary_cross_entropy_with_logits(view[:, :, 5:], target_label,
                                                                          reduction="none")).sum()
    return (loss_xy + loss_wh + loss_conf + loss_cls) / heads


def iou_aware_objectness(x: Tensor, truth: Tensor, cfg) -> Tensor:
    """A darknet-reading port with IoU-aware objectness and normalised terms.

    Box: iou_normalizer * (2 - w*h) * 0.5 * squared error of sigmoid x, y and raw w, h, averaged
    over the matches; objectness target = IoU of the prediction with its label (detached), BCE
    averaged over every slot, darknet's ignore test; classes BCE averaged over matches x classes.
    """
    view = head_view(x, cfg)
    B, n, E, H, W = view.shape
    C = cfg.classes
    labels = read_labels(truth, cfg)
    m = match_by_anchor_iou(labels, cfg, H, W, among="all")
    anc = all_anchors(cfg)
    pred = decode_boxes(view, cfg)
    tobj = torch.zeros(B, n, H, W)
    tcls = torch.zeros(B, n, C, H, W)
    npos = max(1, m.n)
    lbox = x.new_zeros(())
    if m.n:
        scale = cfg.iou_normalizer * (2 - m.box[:, 2] * m.box[:, 3])
        t = torch.stack([m.box[:, 0] * W - m.i, m.box[:, 1] * H - m.j,
                         torch.log(m.box[:, 2] * cfg.net_w / anc[m.anchor, 0]),
                         torch.log(m.box[:, 3] * cfg.net_h / anc[m.anchor, 1])], dim=1)
        p = view[m.b, m.a, :4, m.j, m.i]
        p = torch.cat([torch.sigmoid(p[:, 0:2]), p[:, 2:4]], dim=1)
        lbox = (scale[:, None] * 0.5 * (p - t) ** 2).sum() / npos
        with torch.no_grad():
            iou = iou_xywh(pred_at(pred, m), label_box(m))
        for k in range(m.n):                      # in label order: a shared slot keeps the last label's IoU
            tobj[m.b[k], m.a[k], m.j[k], m.i[k]] = iou[k]
        tcls[m.b, m.a, m.cls, m.j, m.i] = 1.0
    pos = torch.zeros(B, n, H, W, dtype=torch.bool)
    pos[m.b, m.a, m.j, m.i] = True
    with torch.no_grad():
        best = best_ious_with_labels(pred, labels)
        class_ok = (torch.sigmoid(view[:, :, 5:]) > 0.25).any(dim=2)
        weight = (pos | ~(class_ok & (best > cfg.ignore_thresh))).float()
    lobj = (weight * F.binary_cross_entropy_with_logits(view[:, :, 4], tobj, reduction="none")).mean()
    lcls = (pos[:, :, None] * F.binary_cross_entropy_with_logits(view[:, :, 5:], tcls, reduction="none")).sum()
    return lbox + lobj + lcls / (npos * C)
