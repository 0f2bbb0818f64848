"""A textbook YOLO loss, differentiated by autograd: what ports usually write.

Same decisions as darknet (which slots are positive, ignored or negative, and
which truth each positive takes: taken from ``yolo_forward``), but the
gradient comes from autograd through the whole head:

* objectness and classes: binary cross-entropy with logits (times
  ``obj_normalizer``); its gradient w.r.t. the logit is ``p - y``, the same as
  darknet's ``-delta``;
* boxes, ``iou_loss=mse``: ``0.5*(2 - w*h)*iou_normalizer*|target - pred|^2``
  on darknet's encoding (x, y after the logistic and scale_x_y; w, h raw),
  so x, y carry the logistic derivative and ``scale_x_y`` that darknet omits;
* boxes, IoU kinds: ``iou_normalizer*(1 - IoU)`` of the decoded box (GIoU,
  DIoU, CIoU as published, CIoU's alpha without gradient), so x, y carry the
  logistic derivative, ``scale_x_y`` and ``1/grid``, and w, h carry the exact
  derivative (darknet's is twice it) through ``exp(t)*anchor/net``.

``tests/test_sigmoid_gradient.py`` shows the exact factors between the two.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .config import YoloConfig
from .roles import ROLE_BEST_ANCHOR, ROLE_EXTRA_ANCHOR, ROLE_IGNORED, ROLE_TRUTH_THRESH
from .torch_layer import yolo_forward


def _decode(head: Tensor, config: YoloConfig, b: Tensor, a: Tensor, j: Tensor, i: Tensor,
            anchor: Tensor, grid: tuple[int, int]) -> tuple[Tensor, ...]:
    """Activated x, y offsets, raw w, h logits and the decoded box, with autograd."""
    H, W = grid
    E = 5 + config.classes
    t = head.view(head.shape[0], config.n, E, H, W)[b, a, :4, j, i]          # [N, 4]
    s = config.scale_x_y
    if config.new_coords:
        ox, oy = t[:, 0] * s - 0.5 * (s - 1), t[:, 1] * s - 0.5 * (s - 1)
    else:
        ox, oy = torch.sigmoid(t[:, 0]) * s - 0.5 * (s - 1), torch.sigmoid(t[:, 1]) * s - 0.5 * (s - 1)
    anchors = torch.tensor(config.anchors, dtype=head.dtype, device=head.device).view(-1, 2)[anchor]
    if config.new_coords:
        bw = 4 * anchors[:, 0] * t[:, 2] ** 2 / config.net_w
        bh = 4 * anchors[:, 1] * t[:, 3] ** 2 / config.net_h
    else:
        bw = torch.exp(t[:, 2]) * anchors[:, 0] / config.net_w
        bh = torch.exp(t[:, 3]) * anchors[:, 1] / config.net_h
    bx, by = (i.to(head.dtype) + ox) / W, (j.to(head.dtype) + oy) / H
    return ox, oy, t[:, 2], t[:, 3], bx, by, bw, bh


def _iou_terms(px, py, pw, ph, tx, ty, tw, th) -> tuple[Tensor, Tensor, Tensor]:
    """IoU, enclosing box diagonal^2 and area, and centre distance^2 (textbook)."""
    l = torch.maximum(px - pw / 2, tx - tw / 2)
    r = torch.minimum(px + pw / 2, tx + tw / 2)
    t = torch.maximum(py - ph / 2, ty - th / 2)
    bt = torch.minimum(py + ph / 2, ty + th / 2)
    inter = (r - l).clamp(min=0) * (bt - t).clamp(min=0)
    union = pw * ph + tw * th - inter
    iou = inter / union
    cw = torch.maximum(px + pw / 2, tx + tw / 2) - torch.minimum(px - pw / 2, tx - tw / 2)
    ch = torch.maximum(py + ph / 2, ty + th / 2) - torch.minimum(py - ph / 2, ty - th / 2)
    return iou, union, torch.stack([cw, ch])


def _box_loss(kind: str, px, py, pw, ph, tx, ty, tw, th) -> Tensor:
    iou, union, (cw, ch) = _iou_terms(px, py, pw, ph, tx, ty, tw, th)
    if kind == "iou":
        return 1 - iou
    if kind == "giou":
        area = cw * ch
        return 1 - (iou - (area - union) / area)
    diag2 = cw ** 2 + ch ** 2
    dist2 = (px - tx) ** 2 + (py - ty) ** 2
    if kind == "diou":
        return 1 - (iou - dist2 / diag2)
    v = 4 / torch.pi ** 2 * (torch.atan(tw / th) - torch.atan(pw / ph)) ** 2
    with torch.no_grad():
        alpha = v / (1 - iou + v + 1e-7)
    return 1 - (iou - dist2 / diag2 - alpha * v)


def naive_yolo_loss(head: Tensor, truth: Tensor, config: YoloConfig) -> Tensor:
    """The textbook loss of one head ``[b, n*(5+c), h, w]`` (AlexeyAB decisions); a scalar."""
    _, _, stats = yolo_forward(head.detach(), truth, config, "alexeyab")
    roles, asg = stats["roles"], stats["assignments"]
    B, _, H, W = head.shape
    E = 5 + config.classes
    view = head.view(B, config.n, E, H, W)
    # Objectness: positives -> 1, ignored non-positives excluded, the rest -> 0.
    positive = (roles & (ROLE_BEST_ANCHOR | ROLE_EXTRA_ANCHOR | ROLE_TRUTH_THRESH)) != 0
    ignored = ((roles & ROLE_IGNORED) != 0) & ~positive
    obj_logit = view[:, :, 4]
    obj_target = positive.to(head.dtype)
    obj_loss = F.binary_cross_entropy_with_logits(obj_logit, obj_target, reduction="none")
    loss = config.obj_normalizer * (obj_loss * (~ignored)).sum()
    b, t, a, j, i, anchor = asg["b"], asg["t"], asg["a"], asg["j"], asg["i"], asg["anchor"]
    if b.numel() == 0:
        return loss
    tr = truth.to(head.device, head.dtype)[b, t]
    cls = tr[:, 4].to(torch.long)
    cls_logit = view[b, a, 5:, j, i]
    loss = loss + F.binary_cross_entropy_with_logits(
        cls_logit, F.one_hot(cls, config.classes).to(head.dtype), reduction="sum")
    ox, oy, rw, rh, bx, by, bw, bh = _decode(head, config, b, a, j, i, anchor, (H, W))
    scale = 2 - tr[:, 2] * tr[:, 3]
    if config.iou_loss == "mse":
        anchors = torch.tensor(config.anchors, dtype=head.dtype, device=head.device).view(-1, 2)[anchor]
        target = torch.stack([tr[:, 0] * W - i, tr[:, 1] * H - j,
                              torch.log(tr[:, 2] * config.net_w / anchors[:, 0]),
                              torch.log(tr[:, 3] * config.net_h / anchors[:, 1])], 1)
        pred = torch.stack([ox, oy, rw, rh], 1)
        box = 0.5 * scale[:, None] * (target - pred) ** 2
    else:
        box = _box_loss(config.iou_loss, bx, by, bw, bh, tr[:, 0], tr[:, 1], tr[:, 2], tr[:, 3])
    return loss + config.iou_normalizer * box.sum()
