"""Small utilities a porter writes once and reuses across its losses.

Written from the YOLOv3/YOLOv4 papers and the usual conventions of PyTorch
ports (centre/size boxes relative to the image, anchors in pixels), not from
darknet or from this project's port: the losses built on them are independent
evidence. Nothing here imports ``parity``.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor


def head_view(x: Tensor, cfg) -> Tensor:
    """[B, n*(5+C), H, W] -> [B, n, 5+C, H, W] (one row per anchor: x, y, w, h, obj, classes)."""
    B, _, H, W = x.shape
    return x.view(B, len(cfg.mask), 5 + cfg.classes, H, W)


def layer_anchors(cfg) -> Tensor:
    """The anchors of this head, [n, 2] in pixels."""
    every = torch.tensor(cfg.anchors, dtype=torch.float32).view(-1, 2)
    return every[list(cfg.mask)]


def all_anchors(cfg) -> Tensor:
    """Every anchor of the network, [A, 2] in pixels (the cfg's anchors= line)."""
    return torch.tensor(cfg.anchors, dtype=torch.float32).view(-1, 2)


def read_labels(truth: Tensor, cfg) -> list[Tensor]:
    """Per image, the label rows [k, 5] (x, y, w, h, class) of a padded label tensor.

    The labels end at the first all-padding row (x == 0); at most ``max`` rows
    are read and class ids outside [0, classes) are dropped.
    """
    B = truth.shape[0]
    rows = truth.reshape(B, -1, truth.shape[-1]) if truth.dim() == 3 else truth.reshape(B, -1, 5)
    out = []
    for b in range(B):
        labels = []
        for r in rows[b][: cfg.max_boxes]:
            if float(r[0]) == 0.0:
                break
            c = int(float(r[4])) if math.isfinite(float(r[4])) else -1
            if 0 <= c < cfg.classes:
                labels.append(r[:5])
        out.append(torch.stack(labels) if labels else torch.zeros(0, 5, dtype=truth.dtype))
    return out


def grid_offsets(H: int, W: int, dtype=torch.float32) -> tuple[Tensor, Tensor]:
    gy, gx = torch.meshgrid(torch.arange(H, dtype=dtype), torch.arange(W, dtype=dtype), indexing="ij")
    return gx, gy


def decode_xy(raw: Tensor, scale_x_y: float) -> Tensor:
    """Offset in the cell: sigmoid, stretched by scale_x_y around the cell centre (YOLOv4)."""
    return torch.sigmoid(raw) * scale_x_y - 0.5 * (scale_x_y - 1)


def decode_boxes(view: Tensor, cfg) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Predicted boxes of every slot (image-relative centre/size), each [B, n, H, W]; differentiable."""
    B, n, _, H, W = view.shape
    gx, gy = grid_offsets(H, W, view.dtype)
    anc = layer_anchors(cfg).to(view.dtype)
    x = (decode_xy(view[:, :, 0], cfg.scale_x_y) + gx) / W
    y = (decode_xy(view[:, :, 1], cfg.scale_x_y) + gy) / H
    w = torch.exp(view[:, :, 2]) * anc[:, 0].view(1, n, 1, 1) / cfg.net_w
    h = torch.exp(view[:, :, 3]) * anc[:, 1].view(1, n, 1, 1) / cfg.net_h
    return x, y, w, h


def corners(x: Tensor, y: Tensor, w: Tensor, h: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return x - w / 2, y - h / 2, x + w / 2, y + h / 2


def _overlap(a: tuple, b: tuple) -> tuple[Tensor, Tensor, tuple, tuple]:
    """Intersection and union areas of centre/size boxes, and both boxes' corners."""
    ca, cb = corners(*a), corners(*b)
    iw = (torch.min(ca[2], cb[2]) - torch.max(ca[0], cb[0])).clamp(min=0)
    ih = (torch.min(ca[3], cb[3]) - torch.max(ca[1], cb[1])).clamp(min=0)
    inter = iw * ih
    return inter, a[2] * a[3] + b[2] * b[3] - inter, ca, cb


def _enclosing(ca: tuple, cb: tuple) -> tuple[Tensor, Tensor]:
    """Width and height of the smallest box enclosing both (corners)."""
    return torch.max(ca[2], cb[2]) - torch.min(ca[0], cb[0]), torch.max(ca[3], cb[3]) - torch.min(ca[1], cb[1])


def iou_xywh(a: tuple, b: tuple) -> Tensor:
    """Plain IoU of centre/size boxes (broadcasting), 0 for disjoint boxes."""
    inter, union, _, _ = _overlap(a, b)
    return inter / union


def giou_xywh(a: tuple, b: tuple) -> Tensor:
    """Generalized IoU (Rezatofighi et al. 2019): IoU - (C - U) / C."""
    inter, union, ca, cb = _overlap(a, b)
    cw, ch = _enclosing(ca, cb)
    c_area = cw * ch
    return inter / union - (c_area - union) / c_area


def ciou_xywh(p: tuple, t: tuple, detach_alpha: bool = True, eps: float = 1e-7) -> Tensor:
    """Complete IoU (Zheng et al. 2020): IoU - rho^2/c^2 - alpha*v, v = 4/pi^2 (atan(wt/ht) - atan(wp/hp))^2."""
    inter, union, cp, ct = _overlap(p, t)
    iou = inter / union
    cw, ch = _enclosing(cp, ct)
    rho2 = (p[0] - t[0]) ** 2 + (p[1] - t[1]) ** 2
    v = (4 / math.pi ** 2) * (torch.atan(t[2] / t[3]) - torch.atan(p[2] / p[3])) ** 2
    if detach_alpha:
        with torch.no_grad():
            alpha = v / (v - iou + (1 + eps))
    else:
        alpha = v / (v - iou + (1 + eps))
    return iou - (rho2 / (cw ** 2 + ch ** 2) + alpha * v)


def shape_iou(wh: Tensor, anchors_wh: Tensor) -> Tensor:
    """IoU of boxes sharing a centre: [N, 2] sizes against [A, 2] sizes -> [N, A]."""
    inter = torch.min(wh[:, None, 0], anchors_wh[None, :, 0]) * torch.min(wh[:, None, 1], anchors_wh[None, :, 1])
    return inter / (wh[:, None, 0] * wh[:, None, 1] + anchors_wh[None, :, 0] * anchors_wh[None, :, 1] - inter)


def best_ious_with_labels(pred: tuple, labels: list[Tensor]) -> Tensor:
    """For every predicted box [B, n, H, W], its best IoU over the labels of its own image."""
    B = pred[0].shape[0]
    out = torch.zeros_like(pred[0])
    for b in range(B):
        lab = labels[b]
        if lab.shape[0] == 0:
            continue
        pb = tuple(c[b].detach().unsqueeze(-1) for c in pred)          # [n, H, W, 1]
        tb = tuple(lab[:, k].to(pred[0].dtype) for k in range(4))       # [T]
        out[b] = iou_xywh(pb, tb).max(dim=-1).values
    return out


class Pairs:
    """(truth, anchor) matches of one head, in label order (best anchor first, then others by index).

    Fields are 1-D tensors: b (image), a (the head's anchor slot), anchor (index into all
    anchors), j, i (cell), box [N, 4] (image-relative x, y, w, h) and cls (class id).
    """

    def __init__(self, rows: list[tuple[int, int, int, int, int, Tensor, int]]):
        self.n = len(rows)
        self.b = torch.tensor([r[0] for r in rows], dtype=torch.long)
        self.a = torch.tensor([r[1] for r in rows], dtype=torch.long)
        self.anchor = torch.tensor([r[2] for r in rows], dtype=torch.long)
        self.j = torch.tensor([r[3] for r in rows], dtype=torch.long)
        self.i = torch.tensor([r[4] for r in rows], dtype=torch.long)
        self.box = torch.stack([r[5] for r in rows]) if rows else torch.zeros(0, 4)
        self.cls = torch.tensor([r[6] for r in rows], dtype=torch.long)

    def __iter__(self):
        for k in range(self.n):
            yield (int(self.b[k]), int(self.a[k]), int(self.anchor[k]), int(self.j[k]), int(self.i[k]),
                   self.box[k], int(self.cls[k]))


def cell_of(box: Tensor, H: int, W: int) -> tuple[int, int]:
    return int((box[1] * H).item()), int((box[0] * W).item())      # float32 products, truncated


def match_by_anchor_iou(labels: list[Tensor], cfg, H: int, W: int, *, among: str = "all",
                        thresh: float | None = None) -> Pairs:
    """YOLOv3/v4 matching: each label goes to its best anchor by shape IoU.

    ``among="all"``: the best of every anchor of the network, used only when it is one of this
    head's; ``among="head"``: the best of this head's anchors, always used. ``thresh``: also every
    other anchor of this head whose shape IoU exceeds it (YOLOv4's iou_thresh).
    """
    every = all_anchors(cfg) / torch.tensor([cfg.net_w, cfg.net_h], dtype=torch.float32)
    mask = list(cfg.mask)
    rows = []
    for b, lab in enumerate(labels):
        for t in range(lab.shape[0]):
            box = lab[t, :4]
            ious = shape_iou(box[None, 2:4], every)[0]
            if among == "all":
                best = int(torch.argmax(ious))
            else:
                best = mask[int(torch.argmax(ious[mask]))]
            chosen = [best] if best in mask else []
            if thresh is not None:
                chosen += [k for k in mask if k != best and float(ious[k]) > thresh]
            j, i = cell_of(box, H, W)
            for k in chosen:
                rows.append((b, mask.index(k), k, j, i, box, int(lab[t, 4])))
    return Pairs(rows)


def match_by_ratio(labels: list[Tensor], cfg, H: int, W: int, k: float = 4.0) -> Pairs:
    """YOLOv5-style matching: every anchor of this head whose w and h ratios to the label are within k."""
    mask = list(cfg.mask)
    anc = layer_anchors(cfg)
    rows = []
    for b, lab in enumerate(labels):
        if lab.shape[0] == 0:
            continue
        wh = lab[:, 2:4] * torch.tensor([cfg.net_w, cfg.net_h], dtype=torch.float32)
        r = wh[:, None, :] / anc[None, :, :]
        ok = torch.max(r, 1 / r).max(dim=2).values < k            # [T, n]
        for t in range(lab.shape[0]):
            j, i = cell_of(lab[t], H, W)
            for a in range(len(mask)):
                if ok[t, a]:
                    rows.append((b, a, mask[a], j, i, lab[t, :4], int(lab[t, 4])))
    return Pairs(rows)


def pred_at(pred: tuple, p: Pairs) -> tuple:
    """The predicted boxes at the matched slots."""
    return tuple(c[p.b, p.a, p.j, p.i] for c in pred)


def label_box(p: Pairs) -> tuple:
    return tuple(p.box[:, k] for k in range(4))
