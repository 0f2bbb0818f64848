"""The larger hooks of a catalogue ``Variant`` in the PyTorch port (``parity.torch_layer``).

Each function is the one implementation of one switch; ``torch_layer`` calls
it only when that switch is away from darknet's value, so darknet's path
never runs any of this. Plain tensors in, tensors out: no import of the port.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .result import Assignments

__all__ = ["focal_objectness", "own_class_match", "with_neighbour_cells", "softmax_probs", "capped"]


def focal_objectness(target: Tensor | float, p: Tensor, gamma: float, alpha: float | None) -> Tensor:
    """-d FL / d z for the focal binary cross-entropy at logit z (p = sigmoid(z)), target y in [0, 1].

    FL = alpha_t * (1 - p_t)**gamma * ce, with ce = -(y log p + (1 - y) log(1 - p)),
    p_t = p*y + (1 - p)*(1 - y) and alpha_t = alpha*y + (1 - alpha)*(1 - y) (1 when alpha
    is None), the form of Lin et al. and torchvision's ``sigmoid_focal_loss``. With
    q = 1 - p_t: d ce/dz = p - y and dq/dz = -(2y - 1) p (1 - p), so
    dFL/dz = alpha_t * ((p - y) q**gamma + ce * gamma q**(gamma - 1) dq/dz).
    Computed in double, rounded once; where p (1 - p) is 0 the second term's limit, 0, is used.
    """
    pd = p.double()
    y = torch.as_tensor(target, dtype=torch.float64, device=p.device).expand_as(pd)
    ce = -(torch.xlogy(y, pd) + torch.xlogy(1 - y, 1 - pd))
    q = 1 - (pd * y + (1 - pd) * (1 - y))
    dq = -(2 * y - 1) * pd * (1 - pd)
    live = dq != 0
    safe_q = torch.where(live, q, torch.ones_like(q))
    second = torch.where(live, ce * gamma * safe_q ** (gamma - 1) * dq, torch.zeros_like(q))
    grad = (pd - y) * q ** gamma + second
    if alpha is not None:
        grad = grad * (alpha * y + (1 - alpha) * (1 - y))
    return (-grad).to(p.dtype)


def own_class_match(class_probs: Tensor, best_t: Tensor, truth_cls: Tensor, thresh: float) -> Tensor:
    """Per slot: the probability of its best truth's own class exceeds ``thresh`` ([B, n, H, W] bool).

    ``class_probs`` [B, n, C, H, W]; ``best_t`` [B, n, H, W] the best truth row of each
    slot (by IoU over the searched truths); ``truth_cls`` [B, T] the class written for each row.
    """
    B, n, C, H, W = class_probs.shape
    if truth_cls.shape[1] == 0:
        return torch.zeros(B, n, H, W, dtype=torch.bool, device=class_probs.device)
    cls = torch.gather(truth_cls, 1, best_t.reshape(B, -1)).view(B, n, 1, H, W)
    return class_probs.gather(2, cls)[:, :, 0] > thresh


def capped(used: Tensor, cap: int) -> Tensor:
    """``used`` [B, T] with only each image's first ``cap`` used rows kept."""
    return used & (torch.cumsum(used.to(torch.int64), dim=1) <= cap)


def with_neighbour_cells(asg: Assignments, x: Tensor, y: Tensor, W: int, H: int) -> Assignments:
    """The assignments plus, for each, the two neighbour cells nearest the truth's centre (yolov5).

    With (gx, gy) = the centre in grid units: the left cell where gx % 1 < 0.5 and
    gx > 1, the upper where gy % 1 < 0.5 and gy > 1, the right where (W - gx) % 1 < 0.5
    and W - gx > 1, the lower likewise in y (clamped to the grid). ``x``, ``y``: each
    assignment's truth centre. The neighbours follow the darknet assignments, grouped
    left, up, right, down, each group in the assignments' order; they count as extras.
    Box targets stay relative to the written cell (darknet's delta at that cell).
    """
    gx, gy = x * W, y * H
    gxi, gyi = W - gx, H - gy
    groups = (((gx % 1 < 0.5) & (gx > 1), -1, 0), ((gy % 1 < 0.5) & (gy > 1), 0, -1),
              ((gxi % 1 < 0.5) & (gxi > 1), 1, 0), ((gyi % 1 < 0.5) & (gyi > 1), 0, 1))
    parts = [asg]
    for take, di, dj in groups:
        k = take.nonzero(as_tuple=True)[0]
        parts.append(Assignments(asg.b[k], asg.t[k], asg.a[k], asg.anchor[k], (asg.j[k] + dj).clamp(0, H - 1),
                                 (asg.i[k] + di).clamp(0, W - 1), torch.ones_like(k, dtype=torch.bool)))
    return Assignments(*(torch.cat([getattr(p, f) for p in parts]) for f in ("b", "t", "a", "anchor", "j", "i",
                                                                            "extra")))


def softmax_probs(logits: Tensor) -> Tensor:
    """softmax over the class axis (dim 1) of [N, C] raw class logits."""
    return torch.softmax(logits, dim=1)
