"""darknet's [yolo] training forward pass, vectorized in PyTorch.

Same meaning as the C reference (``darknet_ref/``), step for step:

1. activation (logistic where darknet applies it, ``scale_x_y``);
2. per cell and anchor: best IoU over the image's truths -> objectness delta
   (negative, ignored with the 0.25 class-match test, truth_thresh positive);
3. per truth: best anchor over all anchors (if in the mask) plus iou_thresh
   extras -> box, objectness and class deltas;
4. averaging of box deltas over classes (iou_thresh < 1), cost and stats.

Order-dependent effects of darknet's sequential loops are reproduced exactly:
assignments that hit the same (image, anchor, cell) slot are applied in truth
order by a loop over their *rank within the slot* (1 for most slots, at most
the number of truths sharing one cell), each step vectorized over all slots.
Precision follows darknet: float32, with the double steps (``exp`` in box
decoding, ``log``/``sqrt`` of MSE targets, the logistic's exp) done in
float64 and rounded once. Host syncs on a GPU: one, the host copy of the
truth (none when it is given on the host). Everything that depends on the
truths only (which rows count, the assignment list, the ranks within a slot)
is planned on the host; list sizes that depend on predictions are avoided by
masked writes over every slot (truth_thresh, averaging) and by scattered
counts for role bits. The cost's exact float32 running sum needs the delta
on the host, so on a GPU the cost is the float64 sum unless asked for
(``running_cost=True``: one more sync, see ``_magnitude``).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from . import roles as _roles
from .config import FLT_MAX, YoloConfig, backward_scale
from .deviations.variant import Variant
from .errors import InputError
from .layer_input import check_flavor, check_layer_shapes, truth_notes, warn_darknet_input
from .result import Assignments, Decisions, LayerRun, LayerStats
from .torch_box import Boxes, box_iou, box_iou_and_giou, box_iou_kind, iou_kind_partials, iou_loss_grad
from .torch_variant import capped, focal_objectness, own_class_match, softmax_probs, with_neighbour_cells

# Elements processed per step by the chunked passes (activation, ignore
# search). On the CPU a chunk that stays in cache is several times faster
# than one pass over the whole tensor; on a GPU large chunks amortize launches.
# Either way the search's extra memory stays bounded whatever the batch.
CPU_CHUNK_ELEMENTS = 1 << 16
GPU_CHUNK_ELEMENTS = 1 << 24
# Predictions (over the batch) per chunk of the ignore search on the CPU, where truths that cannot
# overlap a chunk's predictions are left out: small enough that a chunk covers a narrow band of
# each image, large enough to amortize the leaving out (measured on the YOLOv4 bench: 1 << 11).
PRUNED_CHUNK_SLOTS = 1 << 11


def _chunk_elements(t: Tensor) -> int:
    return CPU_CHUNK_ELEMENTS if t.device.type == "cpu" else GPU_CHUNK_ELEMENTS


def _f32(v: float) -> float:
    """A Python float holding the float32 value darknet stores for ``v``."""
    return float(np.float32(v))


def _div(t: Tensor, divisor: float) -> Tensor:
    """``t / divisor`` with IEEE division on every device.

    On CUDA, ``tensor / python_number`` multiplies by the reciprocal, which is
    not darknet's division (1 ulp off for divisors like 7 or 608, amplified
    by the IoU derivative's cancellations); a 0-d device tensor divides exactly.
    """
    return t / _const(divisor, t)


def _host_paths(t: Tensor) -> bool:
    """Whether ``t``'s passes may size lists on the host (CPU: syncs are free there).

    Elsewhere the sync-free paths run; tests force them on the CPU to check
    they give the same results and call nothing that would sync a GPU.
    """
    return t.device.type == "cpu"


def _const(value: float, like: Tensor) -> Tensor:
    """A 0-d tensor on ``like``'s device, filled there (no host-to-device copy, no sync)."""
    return torch.full((), value, dtype=like.dtype, device=like.device)


def _to_device(t: Tensor, dev: torch.device) -> Tensor:
    """A host tensor on ``dev`` without a host sync (pinned, asynchronous copy on CUDA)."""
    if dev.type == "cpu":
        return t
    if dev.type == "cuda":
        return t.pin_memory().to(dev, non_blocking=True)
    return t.to(dev)


def _zeros_like(t: Tensor) -> Tensor:
    """Zeros shaped like ``t``; on the CPU from calloc'd memory (numpy's zeros).

    The delta is mostly zeros that are never written (the box and class rows
    of unassigned slots): the kernel's zero pages cost nothing until touched,
    where torch.zeros writes every byte, page faults included (a quarter of
    the three-head call at batch 8).
    """
    if t.device.type != "cpu":
        return torch.zeros_like(t)
    return torch.from_numpy(np.zeros(tuple(t.shape), dtype=torch.empty((), dtype=t.dtype).numpy().dtype))


def _exp_f32(v: Tensor) -> Tensor:
    """expf, correctly rounded (float64 exp, one rounding): matches glibc's expf."""
    return torch.exp(v.double()).to(v.dtype)


def logistic(v: Tensor, flavor: str) -> Tensor:
    """darknet's logistic: AlexeyAB 1.f/(1.f+expf(-x)) in float; pjreddie in double."""
    if flavor == "pjreddie":
        return (1.0 / (1.0 + torch.exp(-v.double()))).to(v.dtype)
    return 1.0 / (1.0 + _exp_f32(-v))


def _guarded(L: "_Layer") -> bool:
    """Whether darknet's non-finite guards apply (a ``nonfinite="propagates"`` variant drops them)."""
    return L.variant is None or L.variant.nonfinite == "guarded"


def _obj_delta(L: "_Layer", target: Tensor | float, p: Tensor) -> Tensor:
    """An objectness delta before its weights: darknet's target - p, or a focal variant's -dFL/dz."""
    V = L.variant
    if V is None or V.obj_loss != "focal":
        return target - p
    return focal_objectness(target, p, V.focal_gamma, V.focal_alpha)


def _class_probs(L: "_Layer", b: Tensor, a: Tensor, j: Tensor, i: Tensor) -> Tensor:
    """The class probabilities the class deltas are written against, [N, C]: the output's, or a softmax's."""
    if L.variant is not None and L.variant.cls_loss == "softmax":
        return softmax_probs(L.raw[b, a, 5:, j, i])
    return L.output[b, a, 5:, j, i]


@dataclass
class _Layer:
    """Shapes, float32 options and views shared by the steps of one call."""

    config: YoloConfig
    flavor: str
    B: int
    n: int
    C: int
    H: int
    W: int
    output: Tensor   # [B, n, E, H, W] view of the output
    delta: Tensor    # [B, n, E, H, W] view of the delta
    roles: Tensor    # [B, n, H, W] int32
    anchors: Tensor  # [total, 2] float32 pixels
    mask: Tensor     # [n] long
    mult: Tensor | None  # [C] float32 class multipliers
    host_anchors: Tensor     # [total, 2] on the host: the truth-only planning runs there
    class_map: Tensor | None = None   # [C] long: map= (AlexeyAB), the class written for a truth's class
    decisions: Decisions = field(default_factory=Decisions)   # filled by the passes that decide
    variant: Variant | None = None    # a catalogue variant's hooks; None: darknet exactly
    raw: Tensor | None = None         # [B, n, E, H, W] the input before activation (variants only)
    running_cost: bool = True         # the cost as darknet's float32 running sum (else the float64 sum)
    host_copy: tuple[Tensor, Tensor] | None = None   # (delta, roles) on the host, for the running sum

    @property
    def alexeyab(self) -> bool:
        return self.flavor == "alexeyab"

    @property
    def new_coords(self) -> bool:
        return self.alexeyab and bool(self.config.new_coords)


def _logistic_(flat: Tensor, flavor: str) -> None:
    """In-place darknet logistic on a flat contiguous tensor, chunk by chunk.

    AlexeyAB: e = expf(-x) (float64 exp rounded once, as glibc's expf), then
    1/(1 + e) in float. pjreddie: the whole expression in double.
    """
    step = _chunk_elements(flat)
    for start in range(0, flat.numel(), step):
        part = flat[start:start + step]
        e = part.double().neg_().exp_()
        if flavor == "pjreddie":
            part.copy_(e.add_(1.0).reciprocal_())
        else:
            part.copy_(e).add_(1.0).reciprocal_()   # while the chunk is in cache


def _activate(L: _Layer) -> None:
    o, cfg = L.output, L.config
    if not L.new_coords:
        # Logistic on everything but w, h: keep those aside and put them back.
        wh = o[:, :, 2:4].clone()
        _logistic_(o.view(-1), L.flavor)
        o[:, :, 2:4] = wh
    if L.alexeyab:
        scale = _f32(cfg.scale_x_y)
        shift = _f32(-0.5 * (scale - 1))  # a double expression passed as float
        o[:, :, 0:2] = o[:, :, 0:2] * scale + shift


def _pred_boxes(L: _Layer, a: Tensor, anchor: Tensor, j: Tensor, i: Tensor, b: Tensor) -> Boxes:
    """get_yolo_box at slots (b, a, j, i) with anchor index ``anchor`` (1-D index tensors)."""
    o = L.output
    tx, ty, tw, th = o[b, a, 0:4, j, i].unbind(dim=1)     # one gather: [N, 4]
    aw, ah = L.anchors[anchor, 0], L.anchors[anchor, 1]
    cfg = L.config
    x = _div(i.to(tx.dtype) + tx, L.W)
    y = _div(j.to(ty.dtype) + ty, L.H)
    if L.new_coords:
        w = _div(tw * tw * 4 * aw, cfg.net_w)
        h = _div(th * th * 4 * ah, cfg.net_h)
    else:
        w = _div(torch.exp(tw.double()) * aw.double(), cfg.net_w).to(tx.dtype)
        h = _div(torch.exp(th.double()) * ah.double(), cfg.net_h).to(tx.dtype)
    return Boxes(x, y, w, h)


def _grid_pred_boxes(L: _Layer) -> Boxes:
    """Predicted boxes of every slot, each [B, n, H, W]."""
    o, cfg = L.output, L.config
    dev, dt = o.device, o.dtype
    i = torch.arange(L.W, device=dev, dtype=dt).view(1, 1, 1, L.W)
    j = torch.arange(L.H, device=dev, dtype=dt).view(1, 1, L.H, 1)
    aw = L.anchors[L.mask, 0].view(1, L.n, 1, 1)
    ah = L.anchors[L.mask, 1].view(1, L.n, 1, 1)
    tx, ty, tw, th = o[:, :, 0], o[:, :, 1], o[:, :, 2], o[:, :, 3]
    x = _div(i + tx, L.W)
    y = _div(j + ty, L.H)
    if L.new_coords:
        w = _div(tw * tw * 4 * aw, cfg.net_w)
        h = _div(th * th * 4 * ah, cfg.net_h)
    else:
        w = _div(torch.exp(tw.double()) * aw.double(), cfg.net_w).to(dt)
        h = _div(torch.exp(th.double()) * ah.double(), cfg.net_h).to(dt)
    return Boxes(x, y, w, h)


@dataclass
class _Truths:
    """Active truth rows padded to [B, T]; ``valid`` marks rows darknet uses."""

    box: Boxes        # each [B, T]
    cls: Tensor       # [B, T] long (0 where invalid)
    valid: Tensor     # [B, T] bool
    active: Tensor    # [B, T] bool (read before the terminator, class possibly out of range)
    class_ok: Tensor  # [B, T] bool (class id within [0, classes))

    def to(self, dev: torch.device) -> "_Truths":
        return _Truths(Boxes(*(_to_device(c, dev) for c in self.box)),
                       *(_to_device(v, dev) for v in (self.cls, self.valid, self.active, self.class_ok)))


def _read_truths(L: _Layer, truth: Tensor) -> _Truths:
    V = L.variant
    rows = truth.shape[1] if V is not None and V.truth_max == "ignored" else min(L.config.max_boxes, truth.shape[1])
    t = truth[:, :rows]
    x = t[..., 0]
    if V is not None and V.truth_terminator == "skip":     # x == 0 rows skipped, reading goes on
        active = x != 0
        count = int(active.any(dim=0).nonzero().max()) + 1 if bool(active.any()) else 0
    else:
        active = torch.cumsum((x == 0).to(torch.int32), dim=1) == 0
        count = int(active.sum(dim=1).max().item()) if rows else 0
    t, active = t[:, :count], active[:, :count]
    cls_f = t[..., 4]
    if V is not None and V.truth_class == "clamped":        # a finite id outside [0, classes) clamped, kept
        cls_f = torch.where(torch.isfinite(cls_f), cls_f.clamp(0, L.C - 1), cls_f)
    in_int = torch.isfinite(cls_f) & (cls_f > -2147483649.0) & (cls_f < 2147483648.0)
    cls = torch.where(in_int, cls_f, torch.zeros_like(cls_f)).trunc().to(torch.long)
    class_ok = in_int & (cls >= 0) & (cls < L.C)
    valid = active & class_ok if L.alexeyab else active
    cls = torch.where(valid, cls, torch.zeros_like(cls))
    return _Truths(Boxes(t[..., 0], t[..., 1], t[..., 2], t[..., 3]), cls, valid, active, class_ok)


def _written_class(L: _Layer, cls: Tensor) -> Tensor:
    """The class id darknet writes deltas and multipliers for: ``map[cls]`` under map= (AlexeyAB)."""
    return L.class_map[cls] if L.class_map is not None else cls


def _best_over(iou: Tensor, dim: int = -1) -> tuple[Tensor, Tensor]:
    """darknet's `if (iou > best) {best = iou; best_t = t;}` from best = 0: the first maximum."""
    eff = torch.where(iou > 0, iou, torch.zeros_like(iou))  # NaN and <= 0 never win
    best, idx = eff.max(dim=dim)
    return best, idx


def _ignore_search(L: _Layer, pred: Boxes, tr: _Truths) -> tuple[Tensor, Tensor]:
    """Best IoU of each slot's prediction over the image's truths: ([B, n, H, W], index).

    The same numbers as ``box_iou`` (and so as darknet), in fewer passes:
    a NaN edge of a prediction loses every ``>``/``<`` test in darknet's
    overlap, exactly as -inf (left/top) or +inf (right/bottom) would, so the
    edges are sanitized once and min/max replace compare-and-select; unused
    truth rows become a box far outside the image (IoU 0). On the CPU each
    chunk of predictions runs over the truths that may overlap them only
    (``_overlapping_first``).
    """
    B, T = L.B, tr.valid.shape[1]
    P = L.n * L.H * L.W
    dev, dt = L.output.device, L.output.dtype
    best = torch.zeros(B, P, dtype=dt, device=dev)
    best_t = torch.zeros(B, P, dtype=torch.long, device=dev)
    if T == 0:
        return best.view(B, L.n, L.H, L.W), best_t.view(B, L.n, L.H, L.W)
    inf = _const(float("inf"), best)
    far = _const(-10.0, best)

    def pred_edges(c: Tensor, s: Tensor) -> tuple[Tensor, Tensor]:
        lo, hi = (c - s / 2).reshape(B, P, 1), (c + s / 2).reshape(B, P, 1)
        return torch.where(torch.isnan(lo), -inf, lo), torch.where(torch.isnan(hi), inf, hi)

    def truth_edges(c: Tensor, s: Tensor) -> tuple[Tensor, Tensor]:
        lo = torch.where(tr.valid, c - s / 2, far).view(B, 1, T)
        hi = torch.where(tr.valid, c + s / 2, far).view(B, 1, T)
        return lo, hi

    plx, phx = pred_edges(pred.x, pred.w)
    ply, phy = pred_edges(pred.y, pred.h)
    tlx, thx = truth_edges(tr.box.x, tr.box.w)
    tly, thy = truth_edges(tr.box.y, tr.box.h)
    parea = (pred.w * pred.h).reshape(B, P, 1)
    tarea = torch.where(tr.valid, tr.box.w * tr.box.h, torch.zeros_like(tr.box.w)).view(B, 1, T)
    inf_f = float("inf")
    prune = _host_paths(best)
    step = max(1, _chunk_elements(best) // max(1, B * T)) if not prune else max(1, PRUNED_CHUNK_SLOTS // B)
    for start in range(0, P, step):
        sl = slice(start, start + step)
        edges = (tlx, thx, tly, thy, tarea)
        order = None
        if prune:
            order = _overlapping_first(plx[:, sl], phx[:, sl], ply[:, sl], phy[:, sl], tlx, thx, tly, thy)
            if order is None:       # no truth overlaps this chunk's predictions: IoU 0 everywhere
                continue
            edges = tuple(e.gather(2, order) for e in edges)
        c_tlx, c_thx, c_tly, c_thy, c_tarea = edges
        iw = torch.minimum(phx[:, sl], c_thx).sub_(torch.maximum(plx[:, sl], c_tlx))
        ih = torch.minimum(phy[:, sl], c_thy).sub_(torch.maximum(ply[:, sl], c_tly))
        # darknet: 0 when iw < 0 or ih < 0; the clamps agree wherever the IoU can be > 0
        inter = iw.clamp_(min=0).mul_(ih.clamp_(min=0))
        total = parea[:, sl] + c_tarea
        if L.alexeyab:
            # AlexeyAB's box_iou returns 0 for a zero union (a NaN edge widens the overlap to the truth's
            # while a zero width empties the prediction's area: inter/0 would be inf). Without a mask:
            # inter - total is exactly -(total - inter) except that a zero union comes out +0, so
            # -(inter / (inter - total)) is inter / union everywhere else and -inf or NaN (never a best)
            # there. pjreddie's box_iou divides unguarded, so inf stays there.
            iou = torch.div(inter, inter.sub(total)).neg_()
        else:
            iou = torch.div(inter, total.sub_(inter))
        # NaN and values <= 0 never replace darknet's running best (which starts at 0); arithmetic
        # (not a comparison and a select) since boolean tensors are several times slower on the CPU
        best_sl, at = iou.nan_to_num_(0.0, posinf=inf_f, neginf=0.0).clamp_(min=0).max(dim=-1)
        best[:, sl] = best_sl.add_(0.0)      # a -0 (from -(0 / x)) is darknet's +0
        if order is not None:   # back to the truth's own index; darknet's 0 where no IoU is > 0
            at = torch.where(best_sl > 0, order[:, 0].gather(1, at), 0)
        best_t[:, sl] = at
    return best.view(B, L.n, L.H, L.W), best_t.view(B, L.n, L.H, L.W)


def _overlapping_first(plx: Tensor, phx: Tensor, ply: Tensor, phy: Tensor,
                       tlx: Tensor, thx: Tensor, tly: Tensor, thy: Tensor) -> Tensor | None:
    """Truth indices [B, 1, T'] for a chunk of predictions: every truth that may overlap one first
    (in their order), then others to fill; None when no truth may overlap any.

    A truth whose right edge is at or left of every prediction's left edge (or likewise on
    another side) has iw <= 0 or NaN with each, so an intersection of 0 or NaN and an IoU that
    never beats darknet's 0: leaving it out changes no best IoU, and the first maximum stays
    the first among the truths kept in order. A NaN edge is never left out.
    """
    apart = ((thx <= plx.amin(dim=1, keepdim=True)) | (tlx >= phx.amax(dim=1, keepdim=True))
             | (thy <= ply.amin(dim=1, keepdim=True)) | (tly >= phy.amax(dim=1, keepdim=True)))
    kept = int((~apart).sum(dim=2).max())
    if kept == 0:
        return None
    return torch.argsort(apart.to(torch.uint8), dim=2, stable=True)[:, :, :kept]


def _class_target(L: _Layer, onehot: Tensor) -> Tensor:
    """y*(1 - eps) + 0.5*eps (AlexeyAB's label_smooth_eps): float product, double sum, one rounding.

    A ``cls_smooth="uniform"`` variant: y*(1 - eps) + eps/classes in float (any flavor).
    """
    V = L.variant
    if V is not None and V.cls_smooth == "none":      # the cfg's label_smooth_eps left out
        return onehot
    if V is not None and V.cls_smooth == "uniform":
        eps = _f32(L.config.label_smooth_eps if V.cls_smooth_eps is None else V.cls_smooth_eps)
        return onehot * _f32(1 - eps) + _f32(eps / L.C)
    eps = L.config.label_smooth_eps if L.alexeyab else 0.0
    if not eps:
        return onehot
    e = _f32(eps)
    return ((onehot * _f32(1 - e)).double() + 0.5 * e).to(onehot.dtype)


def _class_full(L: _Layer, p: Tensor, old: Tensor, cls: Tensor) -> Tensor:
    """delta_yolo_class without the shortcut: rows [N, C] for classes ``cls`` [N]."""
    cfg = L.config
    onehot = torch.nn.functional.one_hot(cls, L.C).to(p.dtype)
    if not L.alexeyab:
        return _class_target(L, onehot) - p
    if cfg.focal_loss:
        pt = p.gather(1, cls[:, None]) + np.float32(1e-15)
        grad = -(1 - pt) * (2 * pt * torch.log(pt.double()).to(pt.dtype) + pt - 1)
        return (onehot - p) * (np.float32(0.5) * grad)
    r = _class_target(L, onehot) - p
    new = torch.where(torch.isfinite(r), r, old) if _guarded(L) else r
    if L.mult is not None:
        factor = (L.mult[cls] * _f32(cfg.cls_normalizer)).to(p.dtype)
        scaled = new.gather(1, cls[:, None]) * factor[:, None]
        new = new.scatter(1, cls[:, None], scaled)
    return new


def _class_shortcut(L: _Layer, p_c: Tensor, old_c: Tensor, cls: Tensor) -> Tensor:
    """The "already set" path: only the truth's class entry is rewritten."""
    if not L.alexeyab:
        return _class_target(L, torch.ones_like(p_c)) - p_c
    r = _class_target(L, torch.ones_like(p_c)) - p_c
    new = torch.where(torch.isfinite(r), r, old_c) if _guarded(L) else r
    if L.mult is not None:
        new = new * L.mult[cls]
    return new


def _box_increment(L: _Layer, pred: Boxes, truth: Boxes, xbox: Tensor, anchor: Tensor,
                   j: Tensor, i: Tensor, cm: Tensor) -> Tensor:
    """What delta_yolo_box adds to the 4 box entries: [N, 4]."""
    cfg = L.config
    scale = 2 - truth.w * truth.h
    if not L.alexeyab or cfg.iou_loss == "mse":
        aw, ah = L.anchors[anchor, 0], L.anchors[anchor, 1]
        tx = truth.x * L.W - i.to(xbox.dtype)
        ty = truth.y * L.H - j.to(xbox.dtype)
        if L.new_coords:
            tw = torch.sqrt((truth.w * cfg.net_w / (4 * aw)).double()).to(xbox.dtype)
            th = torch.sqrt((truth.h * cfg.net_h / (4 * ah)).double()).to(xbox.dtype)
        else:
            tw = torch.log((truth.w * cfg.net_w / aw).double()).to(xbox.dtype)
            th = torch.log((truth.h * cfg.net_h / ah).double()).to(xbox.dtype)
        target = torch.stack([tx, ty, tw, th], dim=1)
        if L.variant is not None and L.variant.scale_2wh == "missing":
            inc = target - xbox
        else:
            inc = scale[:, None] * (target - xbox)
        if L.alexeyab:
            inc = inc * (_f32(cfg.iou_normalizer) * cm)[:, None]
        return inc
    one = torch.ones_like(pred.w)
    safe = Boxes(pred.x, pred.y, torch.where(pred.w == 0, one, pred.w), torch.where(pred.h == 0, one, pred.h))
    if L.variant is None or L.variant.box_grad == "darknet":
        g = iou_loss_grad(safe, truth, cfg.iou_loss)
        dw, dh = g.w, g.h
        if not L.new_coords:
            dw = (dw.double() * torch.exp(xbox[:, 2].double())).to(dw.dtype)
            dh = (dh.double() * torch.exp(xbox[:, 3].double())).to(dh.dtype)
        g = Boxes(g.x, g.y, dw, dh)
    else:
        g = _variant_box_grad(L, safe, truth, xbox, anchor)
    inc = torch.stack(list(g), dim=1) * (_f32(cfg.iou_normalizer) * cm)[:, None]
    if L.variant is not None and L.variant.scale_2wh == "everywhere":
        inc = inc * scale[:, None]
    if _guarded(L):
        inc = torch.where(torch.isfinite(inc), inc, torch.zeros_like(inc))
    if _f32(cfg.max_delta) != FLT_MAX:
        md = _f32(cfg.max_delta)
        inc = inc.clamp(-md, md)
    return inc


def _variant_box_grad(L: _Layer, pred: Boxes, truth: Boxes, xbox: Tensor, anchor: Tensor) -> Boxes:
    """A variant's box gradient: the exact derivative of the IoU kind, in darknet's chain or through the decoding.

    ``exact``: d(IoU kind)/d(x, y, w, h), w and h then through ``exp`` as darknet
    does (where darknet's dx_box_iou has twice the exact w, h). ``autograd``: the
    same derivative carried through the whole decoding (1/grid on x, y; the
    anchor over the network size on w, h), the logistic left to the x, y switches.
    """
    V, cfg = L.variant, L.config
    g = iou_kind_partials(pred, truth, cfg.iou_loss, detach_alpha=V.ciou_alpha == "detached")
    tw, th = xbox[:, 2].double(), xbox[:, 3].double()
    if V.box_grad == "exact":
        if L.new_coords:
            return g
        return Boxes(g.x, g.y, (g.w.double() * torch.exp(tw)).to(g.w.dtype), (g.h.double() * torch.exp(th)).to(g.h.dtype))
    aw, ah = L.anchors[anchor, 0].double(), L.anchors[anchor, 1].double()
    if L.new_coords:
        dw_dt, dh_dt = 8 * tw * aw / cfg.net_w, 8 * th * ah / cfg.net_h
    else:
        dw_dt, dh_dt = torch.exp(tw) * aw / cfg.net_w, torch.exp(th) * ah / cfg.net_h
    return Boxes(_div(g.x, L.W), _div(g.y, L.H), (g.w.double() * dw_dt).to(g.w.dtype),
                 (g.h.double() * dh_dt).to(g.h.dtype))


def _record_truth_decisions(L: _Layer, used: Tensor, b: Tensor, t: Tensor, i: Tensor, j: Tensor, best_n: Tensor,
                            anchor_iou: Tensor) -> None:
    """Per truth row: used, best anchor over all anchors, cell, and the anchor IoUs that chose it."""
    B, T = used.shape
    dev = used.device
    d = L.decisions
    d.truth_used = used.clone()
    d.truth_best_anchor = torch.full((B, T), -1, dtype=torch.long, device=dev)
    d.truth_best_anchor[b, t] = best_n
    d.truth_i = torch.full((B, T), -1, dtype=torch.long, device=dev)
    d.truth_j = torch.full((B, T), -1, dtype=torch.long, device=dev)
    d.truth_i[b, t] = i
    d.truth_j[b, t] = j
    d.anchor_iou = torch.zeros((B, T, L.config.num), dtype=anchor_iou.dtype, device=dev)
    d.anchor_iou[b, t] = anchor_iou


def _assignments(L: _Layer, tr: _Truths) -> Assignments:
    cfg = L.config
    dev = tr.valid.device
    B, T = tr.valid.shape
    total = cfg.num
    V = L.variant
    used = tr.valid if V is None or V.assign_cap is None else capped(tr.valid, V.assign_cap)
    bt = used.nonzero()                                    # [N, 2] in (b, t) order
    b, t = bt[:, 0], bt[:, 1]
    box = Boxes(*(c[b, t] for c in tr.box))
    i = (box.x * L.W).trunc().to(torch.long)
    j = (box.y * L.H).trunc().to(torch.long)
    shape = Boxes(torch.zeros_like(box.w), torch.zeros_like(box.w), box.w, box.h)
    anchor_w = _div(L.host_anchors[:, 0], cfg.net_w)
    anchor_h = _div(L.host_anchors[:, 1], cfg.net_h)
    zeros = torch.zeros_like(anchor_w)
    anchors = Boxes(zeros, zeros, anchor_w, anchor_h)
    iou = box_iou(Boxes(*(c[None, :] for c in anchors)), Boxes(*(c[:, None] for c in shape)),
                  pjreddie=not L.alexeyab)              # [N, total]
    slot_of = torch.full((total,), -1, dtype=torch.long, device=dev)
    for a in reversed(range(L.n)):                        # first index wins, as int_index
        slot_of[int(cfg.mask[a])] = a
    if V is not None and V.assign == "best_in_mask":      # the best of the layer's own anchors, always used
        eff = torch.where(iou > 0, iou, torch.zeros_like(iou))
        best_n = torch.where(slot_of[None, :] >= 0, eff, torch.full_like(eff, -1.0)).max(dim=-1).indices
    else:
        _, best_n = _best_over(iou)
    _record_truth_decisions(L, used, b, t, i, j, best_n, iou)
    candidates = [(best_n, slot_of[best_n] >= 0, torch.zeros_like(best_n, dtype=torch.bool))]
    rows = [torch.arange(b.shape[0], device=dev)]
    order = [torch.zeros_like(best_n)]
    if V is not None and V.assign == "ratio":
        r, n = _ratio_matches(L, box, slot_of, V.ratio_k)
        candidates = [(n, torch.ones_like(n, dtype=torch.bool), torch.zeros_like(n, dtype=torch.bool))]
        rows, order = [r], [1 + n]
    elif V is not None and V.assign == "every_above":     # every mask anchor whose anchor IoU exceeds t
        r, n = ((slot_of[None, :] >= 0) & (iou > V.assign_t)).nonzero(as_tuple=True)
        candidates = [(n, torch.ones_like(n, dtype=torch.bool), torch.zeros_like(n, dtype=torch.bool))]
        rows, order = [r], [1 + n]
    elif L.alexeyab and _f32(cfg.iou_thresh) < 1.0 and (V is None or V.extras == "darknet"):
        kind_iou = box_iou_kind(Boxes(*(c[None, :] for c in anchors)), Boxes(*(c[:, None] for c in shape)),
                                cfg.iou_thresh_kind)    # [N, total]
        n_idx = torch.arange(total, device=dev)
        extra = (slot_of[None, :] >= 0) & (n_idx[None, :] != best_n[:, None]) & (kind_iou > _f32(cfg.iou_thresh))
        r, n = extra.nonzero(as_tuple=True)
        candidates.append((n, torch.ones_like(n, dtype=torch.bool), torch.ones_like(n, dtype=torch.bool)))
        rows.append(r)
        order.append(1 + n)
    anchor = torch.cat([c[0] for c in candidates])
    keep = torch.cat([c[1] for c in candidates])
    is_extra = torch.cat([c[2] for c in candidates])
    row = torch.cat(rows)
    sub = torch.cat(order)
    anchor, is_extra, row, sub = anchor[keep], is_extra[keep], row[keep], sub[keep]
    # darknet's order: truth by truth; for one truth the best anchor, then extras by anchor index
    seq = row * (total + 1) + sub
    perm = torch.argsort(seq, stable=True)
    row, anchor, is_extra = row[perm], anchor[perm], is_extra[perm]
    asg = Assignments(b[row], t[row], slot_of[anchor], anchor, j[row], i[row], is_extra)
    if V is not None and V.neighbour_cells:
        asg = with_neighbour_cells(asg, box.x[row], box.y[row], L.W, L.H)
    return asg


def _ratio_matches(L: _Layer, box: Boxes, slot_of: Tensor, k: float) -> tuple[Tensor, Tensor]:
    """(truth row, anchor) pairs whose width and height ratios to the layer's anchor are both within ``k``."""
    cfg = L.config
    rw = (box.w[:, None] * cfg.net_w) / L.host_anchors[None, :, 0]
    rh = (box.h[:, None] * cfg.net_h) / L.host_anchors[None, :, 1]
    worst = torch.maximum(torch.maximum(rw, 1 / rw), torch.maximum(rh, 1 / rh))
    return ((slot_of[None, :] >= 0) & (worst < k)).nonzero(as_tuple=True)


def _slot_ranks(L: _Layer, asg: Assignments) -> Tensor:
    """Rank of each assignment among those writing the same slot (0 for the first)."""
    key = ((asg.b * L.n + asg.a) * L.H + asg.j) * L.W + asg.i
    order = torch.argsort(key, stable=True)               # stable: keeps darknet's order within a slot
    sorted_key = key[order]
    pos = torch.arange(key.shape[0], device=key.device)
    start = torch.ones_like(sorted_key, dtype=torch.bool)
    start[1:] = sorted_key[1:] != sorted_key[:-1]
    group_start = torch.cummax(torch.where(start, pos, torch.zeros_like(pos)), dim=0).values
    rank = torch.empty_like(pos)
    rank[order] = pos - group_start
    return rank


@dataclass
class _Plan:
    """Everything that depends on the truths only, decided on the host and moved to the device.

    Which truths count, their assignments in darknet's order and each
    assignment's rank within its slot are known before any prediction is
    read; on the host the list sizes cost no device sync.
    """

    truths: _Truths
    asg: Assignments
    ranks: list[Tensor]   # indices into the assignments, one tensor per rank


def _plan(L: _Layer, truth_host: Tensor) -> _Plan:
    dev = L.output.device
    tr = _read_truths(L, truth_host)
    asg = _assignments(L, tr)
    ranks: list[Tensor] = []
    if asg.b.shape[0]:
        rank = _slot_ranks(L, asg)
        ranks = [(rank == r).nonzero(as_tuple=True)[0] for r in range(int(rank.max()) + 1)]
    if dev.type == "cpu":
        return _Plan(tr, asg, ranks)
    d = L.decisions
    for name in ("truth_used", "truth_best_anchor", "truth_i", "truth_j", "anchor_iou"):
        setattr(d, name, _to_device(getattr(d, name), dev))
    moved = Assignments(*(_to_device(getattr(asg, f.name), dev) for f in dataclasses.fields(asg) if f.name != "iou"))
    return _Plan(tr.to(dev), moved, [_to_device(k, dev) for k in ranks])


def _mark_where(L: _Layer, b: Tensor, a: Tensor, j: Tensor, i: Tensor, where: Tensor, flag: int) -> None:
    """``flag`` on the listed slots whose ``where`` is set (a slot may be listed twice).

    CPU: boolean indexing. Elsewhere: counts scattered with accumulate
    (deterministic whatever the duplicates, and no host sync).
    """
    if _host_paths(L.roles):
        _mark(L, b[where], a[where], j[where], i[where], flag)
        return
    hits = torch.zeros_like(L.roles)
    hits.index_put_((b, a, j, i), where.to(hits.dtype), accumulate=True)
    L.roles |= (hits > 0).to(L.roles.dtype) * flag


def _mark(L: _Layer, b: Tensor, a: Tensor, j: Tensor, i: Tensor, flag: int) -> None:
    L.roles[b, a, j, i] |= flag


def _any_class_above(o: Tensor, thresh: float) -> Tensor:
    """``(o[:, :, 5:] > thresh).any(dim=2)`` (NaN never above), one class plane at a time.

    The class axis is strided (one plane per class); OR-ing contiguous planes
    is several times faster on the CPU than a reduction across them.
    """
    if not _host_paths(o):
        return (o[:, :, 5:] > thresh).any(dim=2)
    match = o[:, :, 5] > thresh
    for c in range(6, o.shape[2]):
        match |= o[:, :, c] > thresh
    return match


def _ignored(L: _Layer, best_match: Tensor, best_iou: Tensor, best_t: Tensor, tr: _Truths) -> Tensor:
    """Slots whose negative objectness is not written: darknet's test, or a variant's."""
    V = L.variant
    if V is None:
        return best_match > _f32(L.config.ignore_thresh)
    if V.ignore == "none":
        return torch.zeros_like(best_iou, dtype=torch.bool)
    thresh = _f32(L.config.ignore_thresh if V.ignore_thresh is None else V.ignore_thresh)
    if V.ignore == "own_class":     # the class test on the best truth's own class only
        own = own_class_match(L.output[:, :, 5:], best_t, _written_class(L, tr.cls), _roles.CLASS_MATCH_THRESH)
        best_match = torch.where(own, best_iou, torch.zeros_like(best_iou))
    seen = best_iou if V.ignore == "no_class_match" else best_match
    L.decisions.best_match_iou = seen       # what this variant's threshold compares
    return seen > thresh


def _searched_truths(L: _Layer, plan: "_Plan") -> _Truths:
    """The truths the ignore search runs over: every used one, or (a variant) those assigned on this layer."""
    tr = plan.truths
    if L.variant is None or L.variant.ignore_truths == "all":
        return tr
    assigned = torch.zeros_like(tr.valid)
    assigned[plan.asg.b, plan.asg.t] = True
    return dataclasses.replace(tr, valid=tr.valid & assigned)


def _cell_pass(L: _Layer, tr: _Truths, stats: dict[str, Tensor]) -> None:
    """Step 2: objectness for every slot, and the truth_thresh positives."""
    cfg = L.config
    o, d = L.output, L.delta
    pred = _grid_pred_boxes(L)
    best_iou, best_t = _ignore_search(L, pred, tr)
    L.decisions.best_iou = best_iou
    L.decisions.pred_box = torch.stack(list(pred), dim=-1)
    L.decisions.best_truth = torch.where(best_iou > 0, best_t, torch.full_like(best_t, -1))
    if L.alexeyab:
        has_truth = tr.valid.any(dim=1).view(L.B, 1, 1, 1)
        obj = o[:, :, 4]
        bad = ~torch.isfinite(obj) & has_truth if _guarded(L) else torch.zeros_like(obj, dtype=torch.bool)
        o[:, :, 4] = torch.where(bad, torch.zeros_like(obj), obj)
        L.roles |= bad.to(torch.int32) * _roles.ROLE_OBJ_NONFINITE
        class_match = _any_class_above(o, _roles.CLASS_MATCH_THRESH)
        best_match = torch.where(class_match, best_iou, torch.zeros_like(best_iou))
        L.decisions.class_match, L.decisions.best_match_iou = class_match, best_match
        p = o[:, :, 4]
        obj_norm = _f32(cfg.obj_normalizer)
        d_obj = obj_norm * _obj_delta(L, 0, p)
        ignored = _ignored(L, best_match, best_iou, best_t, tr)
        if cfg.objectness_smooth:
            smoothed = obj_norm * _obj_delta(L, best_match, p)
            kept = torch.where(smoothed > d_obj, smoothed, d_obj)
        else:
            kept = torch.zeros_like(d_obj)
        d[:, :, 4] = torch.where(ignored, kept, d_obj)
        blocked = ~ignored & (best_iou > _f32(cfg.ignore_thresh))
        L.roles |= blocked.to(torch.int32) * _roles.ROLE_CLASSMATCH_BLOCKED
    else:
        p = o[:, :, 4]
        ignored = _ignored(L, best_iou, best_iou, best_t, tr)
        d[:, :, 4] = torch.where(ignored, torch.zeros_like(p), _obj_delta(L, 0, p))
        L.decisions.class_match = torch.ones_like(ignored)
        L.decisions.best_match_iou = best_iou
    L.roles |= ignored.to(torch.int32) * _roles.ROLE_IGNORED

    positive = best_iou > _f32(cfg.truth_thresh)
    L.roles |= positive.to(torch.int32) * _roles.ROLE_TRUTH_THRESH
    if _host_paths(o):
        if not bool(positive.any()):
            return
        b, a, j, i = positive.nonzero(as_tuple=True)
        keep = None
    elif tr.valid.shape[1] == 0:    # no truth: best IoU is 0 everywhere
        return
    else:   # every slot, the writes masked: no host sync for the (usually empty) list
        b, a, j, i = (g.reshape(-1) for g in torch.meshgrid(
            *(torch.arange(k, device=o.device) for k in (L.B, L.n, L.H, L.W)), indexing="ij"))
        keep = positive.reshape(-1)

    def put(e: Any, value: Tensor) -> None:
        d[b, a, e, j, i] = value if keep is None else torch.where(
            keep.view(-1, *([1] * (value.dim() - 1))), value, d[b, a, e, j, i])

    t = best_t[b, a, j, i]
    cls = _written_class(L, tr.cls[b, t])
    truth = Boxes(*(c[b, t] for c in tr.box))
    iou = best_iou[b, a, j, i]
    cm = L.mult[cls] if (L.alexeyab and L.mult is not None) else torch.ones_like(iou)
    p_obj = o[b, a, 4, j, i]
    if L.alexeyab and cfg.objectness_smooth:
        put(4, _f32(cfg.obj_normalizer) * _obj_delta(L, iou * iou, p_obj))
    elif L.alexeyab:
        put(4, _f32(cfg.obj_normalizer) * _obj_delta(L, 1, p_obj))
    else:
        put(4, _obj_delta(L, 1, p_obj))
    p_cls = _class_probs(L, b, a, j, i)                     # [N, C]
    new = _class_full(L, p_cls, d[b, a, 5:, j, i], cls)
    if L.alexeyab and cfg.objectness_smooth:
        p_c = p_cls.gather(1, cls[:, None])[:, 0]
        new = new.scatter(1, cls[:, None], (cm * (iou * iou - p_c))[:, None])
    put(slice(5, None), new)
    anchor = L.mask[a]
    # every slot (the device path): the grid's boxes, which are get_yolo_box's at each slot
    pred_s = _pred_boxes(L, a, anchor, j, i, b) if keep is None else Boxes(*(c.reshape(-1) for c in pred))
    xbox = o[b, a, 0:4, j, i]                               # [N, 4]
    d_box = _box_increment(L, pred_s, truth, xbox, anchor, j, i, cm)
    put(slice(0, 4), d[b, a, 0:4, j, i] + d_box if L.alexeyab else d_box)
    if L.alexeyab:
        stats["total_bbox"] = stats["total_bbox"] + (b.shape[0] if keep is None else keep.sum())


def _truth_pass(L: _Layer, plan: _Plan, stats: dict[str, Tensor]) -> None:
    """Step 3: every assignment, applied rank by rank within its slot."""
    cfg = L.config
    o, d = L.output, L.delta
    tr, asg = plan.truths, plan.asg
    L.decisions.assignments = asg
    N = asg.b.shape[0]
    stats["count_raw"] = stats["count_raw"] + N
    if N == 0:
        asg.iou = torch.zeros(0, dtype=o.dtype, device=o.device)
        return
    b, a, j, i = asg.b, asg.a, asg.j, asg.i
    _mark_where(L, b, a, j, i, ~asg.extra, _roles.ROLE_BEST_ANCHOR)
    _mark_where(L, b, a, j, i, asg.extra, _roles.ROLE_EXTRA_ANCHOR)
    truth = Boxes(*(c[b, asg.t] for c in tr.box))
    cls = _written_class(L, tr.cls[b, asg.t])
    cm = L.mult[cls] if (L.alexeyab and L.mult is not None) else torch.ones_like(truth.x)
    pred = _pred_boxes(L, a, asg.anchor, j, i, b)
    iou, giou = box_iou_and_giou(pred, truth) if L.alexeyab else (box_iou(pred, truth, pjreddie=True), None)
    asg.iou = iou
    xbox = o[b, a, 0:4, j, i]                               # [N, 4]
    inc = _box_increment(L, pred, truth, xbox, asg.anchor, j, i, cm)
    stats["tot_iou"] = stats["tot_iou"] + iou.sum()
    if giou is not None:
        stats["tot_iou_loss"] = stats["tot_iou_loss"] + (1 - iou).sum()
        stats["tot_giou_loss"] = stats["tot_giou_loss"] + (1 - giou).sum()
        stats["total_bbox"] = stats["total_bbox"] + N
    p_obj = o[b, a, 4, j, i]
    V = L.variant
    target = 1
    if V is not None and V.obj_target != "one":
        kind = cfg.iou_loss if (V.obj_target == "iou_kind" and cfg.iou_loss != "mse") else "iou"
        target = iou if kind == "iou" else box_iou_kind(pred, truth, kind).clamp(min=0)
    obj_target = _obj_delta(L, target, p_obj)
    if L.alexeyab:
        obj_target = cm * _f32(cfg.obj_normalizer) * obj_target
    slot_iou = torch.full_like(d[:, :, 4], -float("inf")) if V is not None and V.box_writer == "max_iou" else None

    # Within a rank every slot is distinct and each slot's new row depends only on its own old row:
    # one gather of the rows, one scatter back (the same values as entry-by-entry writes).
    for k in plan.ranks:
        bk, ak, jk, ik, ck = b[k], a[k], j[k], i[k], cls[k]
        row = d[bk, ak, :, jk, ik]                          # [Nk, 5 + C]
        box_now = row[:, 0:4]
        rewritten = (box_now != 0).any(dim=1)
        _mark_where(L, bk, ak, jk, ik, rewritten, _roles.ROLE_REWRITTEN)
        if L.alexeyab:
            stats["rewritten_bbox"] = stats["rewritten_bbox"] + rewritten.sum()
            new_box = box_now + inc[k]
        else:
            new_box = inc[k]
        if slot_iou is not None:     # the box of the truth whose IoU with the prediction is highest (first on ties)
            held = slot_iou[bk, ak, jk, ik]
            take = (held == -float("inf")) | (iou[k] > held)
            new_box = torch.where(take[:, None], inc[k], box_now)
            slot_iou[bk, ak, jk, ik] = torch.where(take, iou[k], held)
        elif V is not None and V.box_writer != "darknet":
            new_box = inc[k] if V.box_writer == "last" else torch.where(rewritten[:, None], box_now, inc[k])
        if L.alexeyab and cfg.objectness_smooth:
            current = row[:, 4]
            new_obj = torch.where(current == 0, obj_target[k], current)
        else:
            new_obj = obj_target[k]
        p_cls = _class_probs(L, bk, ak, jk, ik)
        old = row[:, 5:]
        test_class = ck if L.alexeyab else torch.zeros_like(ck)
        shortcut = old.gather(1, test_class[:, None])[:, 0] != 0
        if V is not None and V.class_write != "darknet":
            shortcut = torch.zeros_like(shortcut)
        full = _class_full(L, p_cls, old, ck)
        short_val = _class_shortcut(L, p_cls.gather(1, ck[:, None])[:, 0], old.gather(1, ck[:, None])[:, 0], ck)
        short_rows = old.scatter(1, ck[:, None], short_val[:, None])
        new_cls = torch.where(shortcut[:, None], short_rows, full)
        if V is not None and V.class_write == "sum":      # every truth's whole row added to the slot's
            new_cls = old + full
        d[bk, ak, :, jk, ik] = torch.cat([new_box, new_obj[:, None], new_cls], dim=1)
        _mark_where(L, bk, ak, jk, ik, shortcut, _roles.ROLE_CLASS_SHORTCUT)


def _positive_slots(roles: Tensor) -> tuple[Tensor, ...]:
    """(b, a, j, i) of every slot a truth wrote box/class deltas on, each once, in memory order."""
    bits = _roles.ROLE_BEST_ANCHOR | _roles.ROLE_EXTRA_ANCHOR | _roles.ROLE_TRUTH_THRESH
    return ((roles & bits) != 0).nonzero(as_tuple=True)


def _averaged_rows(L: _Layer) -> tuple[slice, ...]:
    """The delta rows the averaging divides: the box rows (darknet), and the class rows for a variant."""
    if L.variant is not None and L.variant.averaging_classes:
        return slice(0, 4), slice(5, None)
    return (slice(0, 4),)


def _averaging_pass(L: _Layer) -> None:
    """Divide the box deltas by the count of positive class deltas where objectness is set.

    Only slots a truth wrote (best, extra or truth_thresh) can hold a class
    delta, so only those are read: elsewhere the count is 0 and nothing divides.
    """
    d = L.delta
    if not _host_paths(d):      # every slot: listing the positive ones would sync
        _averaging_dense(L)
        return
    divisor = torch.zeros(L.B, L.n, L.H, L.W, dtype=torch.long, device=d.device)
    L.decisions.divisor = divisor
    b, a, j, i = _positive_slots(L.roles)
    if b.numel() == 0:
        return
    has_obj = d[b, a, 4, j, i] != 0
    positive = (d[b, a, 5:, j, i] > 0).sum(dim=1)
    divide = has_obj & (positive > 0)
    divisor[b, a, j, i] = torch.where(divide, positive, torch.zeros_like(positive))
    L.roles[b, a, j, i] |= (has_obj & (positive > 1)).to(torch.int32) * _roles.ROLE_AVERAGED
    denom = torch.where(divide, positive, torch.ones_like(positive)).to(d.dtype)
    for rows in _averaged_rows(L):
        v = d[b, a, rows, j, i]
        d[b, a, rows, j, i] = torch.where(divide[:, None], v / denom[:, None], v)


def _averaging_dense(L: _Layer) -> None:
    d = L.delta
    has_obj = d[:, :, 4] != 0                                # [B, n, H, W]
    positive = (d[:, :, 5:] > 0).sum(dim=2)                  # [B, n, H, W]
    divide = has_obj & (positive > 0)
    L.decisions.divisor = torch.where(divide, positive, torch.zeros_like(positive))
    L.roles |= (has_obj & (positive > 1)).to(torch.int32) * _roles.ROLE_AVERAGED
    denom = torch.where(divide, positive, torch.ones_like(positive)).to(d.dtype)
    for rows in _averaged_rows(L):
        d[:, :, rows] = torch.where(divide[:, :, None], d[:, :, rows] / denom[:, :, None], d[:, :, rows])


def _sequential_sum(values: np.ndarray) -> float:
    """``values`` added one by one in their own precision, in order (as darknet's loop does).

    Cache-sized chunks, each accumulated after its first element takes the
    running total: the same additions in the same order as one long loop.
    """
    flat = values.reshape(-1)
    running = flat.dtype.type(0)
    step = CPU_CHUNK_ELEMENTS
    for start in range(0, flat.size, step):
        chunk = flat[start:start + step]   # a view of our own temporary: safe to overwrite
        chunk[0] += running
        np.add.accumulate(chunk, out=chunk)
        running = chunk[-1]
    return float(running)


def _nonzero_candidates(L: _Layer, delta: Tensor, roles: Tensor, skip_box_rows: bool) -> np.ndarray:
    """The delta entries that can be nonzero, in memory order, as one fresh array.

    Objectness is written for every slot; box and class rows only on slots a
    truth wrote (``_positive_slots``): everywhere else they are still the
    zeros the delta started as. Leaving zero squares out of a running sum of
    squares changes nothing (adding +0 to a sum >= 0 is exact), so the sum of
    these equals darknet's sum over the whole delta, bit for bit.
    """
    B, n, H, W = L.B, L.n, L.H, L.W
    blocks = delta.reshape(B * n, -1, H * W).numpy()
    b, a, j, i = (x.numpy() for x in _positive_slots(roles))
    block, cell = b * n + a, j * W + i
    starts = np.searchsorted(block, np.arange(B * n + 1))
    pieces = []
    for k in range(B * n):
        cells = cell[starts[k]:starts[k + 1]]
        rows = blocks[k]
        if not skip_box_rows and cells.size:
            pieces.append(rows[0:4, cells].reshape(-1))
        pieces.append(rows[4])
        if cells.size:
            pieces.append(rows[5:, cells].reshape(-1))
    return np.concatenate(pieces)


def _magnitude(L: _Layer, skip_box_rows: bool = False) -> Tensor:
    """darknet's mag_array of the delta: sqrt of the float sum of squares, rounded to float (0-d float64).

    darknet adds the squares one by one in float32 (memory order), and that
    running sum drifts from the exact one (about 1e-4 relative over ~10^4
    large deltas). With ``L.running_cost`` we add them the same way (skipping
    entries that are zero by construction), on the host: off the CPU that
    needs a host copy of the delta and the roles (see ``_host_copy``).
    Otherwise the sum is exact (float64) where the delta is.
    ``skip_box_rows`` leaves out the x, y, w, h rows (darknet's copy of the
    delta without its box rows).
    """
    v = L.delta
    if L.running_cost:
        delta, roles = _host_copy(L)
        values = _nonzero_candidates(L, delta, roles, skip_box_rows)
        with np.errstate(over="ignore"):          # a square past float32's range is inf, as in darknet
            squares = values * values
        total = _to_device(torch.tensor(_sequential_sum(squares), dtype=torch.float64), v.device)
    else:
        sq = (v[:, :, 4:] if skip_box_rows else v).double()
        total = sq.mul_(sq).sum()
    return torch.sqrt(total).to(v.dtype).double()


def _host_copy(L: _Layer) -> tuple[Tensor, Tensor]:
    """The delta and roles on the host, copied once per call (on CUDA: both in one host sync)."""
    d, r = L.delta, L.roles
    if d.device.type == "cpu":
        return d, r
    if L.host_copy is None:
        if d.device.type == "cuda":
            host = [torch.empty(t.shape, dtype=t.dtype, pin_memory=True) for t in (d, r)]
            for h, t in zip(host, (d, r)):
                h.copy_(t, non_blocking=True)
            torch.cuda.current_stream(d.device).synchronize()
            L.host_copy = (host[0], host[1])
        else:
            L.host_copy = (d.to("cpu"), r.to("cpu"))
    return L.host_copy


def _squared_magnitude(L: _Layer) -> Tensor:
    """pow(mag_array(delta), 2) stored as float."""
    return (_magnitude(L) ** 2).to(L.delta.dtype)


def _cost(L: _Layer, stats: dict[str, Tensor]) -> None:
    cfg = L.config
    d = L.delta
    assigned = stats["count_raw"]
    if not L.alexeyab:
        stats["count"] = assigned
        stats["cost"] = _squared_magnitude(L)
        stats["avg_iou"] = stats["tot_iou"] / assigned
        return
    count = torch.clamp(torch.as_tensor(assigned), min=1)
    stats["count"] = count
    stats["avg_iou"] = stats["tot_iou"] / count
    loss = _squared_magnitude(L)
    batch = L.B
    if not cfg.show_details:
        stats["cost"] = loss
        stats["total_loss"] = loss / batch
        return
    class_loss = (_f32(cfg.obj_normalizer) * _magnitude(L, skip_box_rows=True) ** 2).to(d.dtype)
    if cfg.iou_loss == "mse":
        stats["cost"] = loss
    else:
        mean = (stats["tot_giou_loss"] if cfg.iou_loss == "giou" else stats["tot_iou_loss"]) / count
        stats["cost"] = _f32(cfg.iou_normalizer) * mean + class_loss
    stats["total_loss"] = loss / batch
    stats["class_loss"] = class_loss / batch
    stats["iou_loss"] = (loss - class_loss) / batch


def yolo_forward(input: Tensor, truth: Tensor, config: YoloConfig, flavor: str | None = None, *,
                 backward: str = "cpu", loss_scale: float = 1.0,
                 dtype: torch.dtype = torch.float32, variant: Variant | None = None,
                 running_cost: bool | None = None) -> LayerRun:
    """darknet's [yolo] training forward pass on torch tensors.

    Args:
        input (Tensor[batch, n*(5+classes), h, w]): raw head output, any device, float32.
        truth (Tensor[batch, rows, 6 or 5]): x, y, w, h, class, track per box (darknet's
            terminator rules: reading stops at the first x == 0 and after ``max`` rows).
        config: the layer's options, as ``load_case(...).config``.
        flavor: ``"alexeyab"`` or ``"pjreddie"``; defaults to ``config.flavor``.
        backward: ``"cpu"`` (default: darknet's CPU backward, the delta as is) or ``"gpu"``
            (AlexeyAB's GPU backward: delta * loss_scale * delta_normalizer).
        loss_scale: darknet's [net] ``loss_scale`` (default 1), used by ``backward="gpu"``.
        dtype: ``torch.float32`` (darknet's precision, the default) or ``torch.float64``: the
            same formulas and decisions computed in double, to tell which of two float32
            results is closer to the exact value.
        variant: ``parity.deviations.variant.Variant``: the hooks of a catalogue variant
            (ignore, assignment, box gradient, objectness target, writers, averaging);
            ``None`` (the default) is darknet exactly. ``parity.deviations.variant_forward``
            adds the switches that rescale terms or replace options.
        running_cost: how ``stats.cost`` (and the loss figures) add the squares of the delta.
            ``True``: darknet's float32 running sum, bit for bit; off the CPU this copies the
            delta and roles to the host (one more host sync per call) and sums there.
            ``False``: the float64 sum where the delta is (within about 1e-4 relative of
            darknet's). ``None`` (the default): ``True`` on the CPU, ``False`` elsewhere.

    Returns:
        ``parity.result.LayerRun`` on the input's device: ``output`` and ``delta`` in
        darknet's layout, ``stats`` (``LayerStats`` of 0-d tensors: no host sync; ``.host()``
        or ``run.numpy()`` gives Python numbers), ``roles`` ([batch, n, h, w] int32 bits of
        ``parity.roles``) and ``decisions`` (best IoU and truth per slot, the class-match
        test, each truth's best anchor, the assignments in darknet's order, the averaging
        divisor), ``backend="torch"``.
    """
    if not isinstance(config, YoloConfig):
        raise InputError(f"config must be a parity.config.YoloConfig, got {type(config).__name__}")
    flavor = check_flavor(flavor or config.flavor)
    if not isinstance(input, Tensor) or not isinstance(truth, Tensor):
        raise InputError("yolo_forward takes torch tensors (use parity.reference.run_reference for numpy)")
    if not input.is_floating_point() or not truth.is_floating_point():
        raise InputError(f"input/truth dtypes {input.dtype}/{truth.dtype} are not floating point")
    # The same refusals and warnings as every backend, without copying the input off its device:
    # its shape, and the (small) truth on the host.
    truth_cpu = truth.detach().to("cpu")      # the one host copy (a sync when truth is on a GPU)
    host_truth = truth_cpu.to(torch.float32).numpy()
    check_layer_shapes(config, tuple(input.shape), host_truth, flavor)
    notes = truth_notes(config, host_truth, flavor)
    if notes:
        warn_darknet_input("; ".join(notes))
    if dtype not in (torch.float32, torch.float64):
        raise InputError(f"dtype {dtype}: expected torch.float32 (darknet's) or torch.float64")
    scale = backward_scale(config, flavor, backward, loss_scale)
    x = input.detach().to(dtype)
    B, _, H, W = x.shape
    n, C = config.n, config.classes
    E = 5 + C
    dev = x.device
    output = x.clone(memory_format=torch.contiguous_format)   # a permuted input must not keep its strides
    delta = _zeros_like(output)
    mult_np = config.classes_multipliers() if flavor == "alexeyab" else None
    anchors = torch.tensor(np.asarray(config.anchors[: 2 * config.num], dtype=np.float32).reshape(-1, 2)).to(dtype)
    L = _Layer(
        config, flavor, B, n, C, H, W,
        output.view(B, n, E, H, W), delta.view(B, n, E, H, W),
        torch.zeros(B, n, H, W, dtype=torch.int32, device=dev),
        _to_device(anchors, dev),
        _to_device(torch.tensor(config.mask, dtype=torch.long), dev),
        _to_device(torch.tensor(mult_np).to(dtype), dev) if mult_np is not None else None,
        anchors,
        _to_device(torch.tensor(config.class_map[:C], dtype=torch.long), dev)
        if config.class_map is not None else None,
        variant=variant,
        raw=x.view(B, n, E, H, W) if variant is not None else None,
        running_cost=dev.type == "cpu" if running_cost is None else bool(running_cost),
    )
    zero = torch.zeros((), dtype=dtype, device=dev)
    izero = torch.zeros((), dtype=torch.long, device=dev)
    stats: dict[str, Any] = {"tot_iou": zero, "tot_iou_loss": zero, "tot_giou_loss": zero,
                             "count_raw": izero, "rewritten_bbox": izero, "total_bbox": izero}
    _activate(L)
    plan = _plan(L, truth_cpu.to(dtype))
    _cell_pass(L, _searched_truths(L, plan), stats)
    _truth_pass(L, plan, stats)
    averaging = L.alexeyab and _f32(config.iou_thresh) < 1.0
    if variant is not None and variant.averaging != "darknet":
        averaging = variant.averaging == "always"
    if averaging:
        _averaging_pass(L)
    else:       # no averaging pass: nothing divided anywhere
        L.decisions.divisor = torch.zeros(B, n, H, W, dtype=torch.long, device=dev)
    _cost(L, stats)
    if scale is not None:
        delta = delta * scale
    return LayerRun(output, delta, _layer_stats(L, stats), L.roles, L.decisions, backend="torch")


def _layer_stats(L: _Layer, stats: dict[str, Any]) -> LayerStats:
    """The typed figures (0-d tensors; AlexeyAB-only ones None for pjreddie)."""
    ab = L.alexeyab
    only_ab = {k: (stats.get(k) if ab else None) for k in ("rewritten_bbox", "total_bbox", "tot_iou_loss",
                                                          "tot_giou_loss", "class_loss", "iou_loss")}
    return LayerStats(stats["cost"], stats["count"], stats["count_raw"], stats["tot_iou"], stats["avg_iou"],
                      total_loss=stats.get("total_loss") if ab else None, **only_ab)
