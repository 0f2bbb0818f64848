"""Seeded random [yolo] cases that reach darknet's decision boundaries.

Plain random logits almost never overlap a truth, so the ignore test, the
0.25 class-match test and truth_thresh would go untested. ``random_case``
therefore "plants" predictions: for some truths it sets the logits of the
truth's cell (or a neighbour) so the decoded box lies near the truth, with
class probabilities deliberately above or below 0.25. Truths include several
in one cell, centres exactly on cell borders, tiny and huge boxes, and (where
the flavor tolerates them) out-of-range class ids and an early x == 0 row.
The same seed gives the same bytes.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .case import Case
from .config import YoloConfig, dump_yolo_cfg

# YOLOv3/v4 COCO anchors: realistic shapes for best-anchor assignment.
COCO_ANCHORS = (10, 13, 16, 30, 33, 23, 30, 61, 62, 45, 59, 119, 116, 90, 156, 198, 373, 326)


@dataclass(frozen=True)
class CaseShape:
    """Sizes of a generated case."""

    batch: int
    h: int
    w: int
    max_truths: int


def _logit(p: np.ndarray | float) -> np.ndarray:
    p = np.clip(p, 1e-4, 1 - 1e-4)
    return np.log(p / (1 - p))


def _encode_xy(offset: float, config: YoloConfig, flavor: str) -> float:
    """Pre-activation logit whose activated, scale_x_y'd value is ``offset``."""
    s = config.scale_x_y if flavor == "alexeyab" else 1.0
    pre_scale = (offset + 0.5 * (s - 1)) / s
    if flavor == "alexeyab" and config.new_coords:
        return float(pre_scale)
    return float(_logit(pre_scale))


def _encode_wh(size: float, anchor: float, net: int, config: YoloConfig, flavor: str) -> float:
    """Pre-activation value whose decoded box size is ``size`` (relative to the net)."""
    if flavor == "alexeyab" and config.new_coords:
        return float(np.sqrt(size * net / (4 * anchor)))
    return float(np.log(size * net / anchor))


def _random_truths(rng: np.random.Generator, shape: CaseShape, config: YoloConfig,
                   flavor: str) -> np.ndarray:
    rows = max(config.max_boxes, 1) if flavor == "alexeyab" else min(config.max_boxes, 90)
    truth = np.zeros((shape.batch, rows, 6), dtype=np.float32)
    for b in range(shape.batch):
        k = int(rng.integers(0, shape.max_truths + 1))
        k = min(k, rows)
        for t in range(k):
            x, y = rng.uniform(0.0, 1.0, size=2)
            kind = rng.random()
            if kind < 0.15:                      # centre exactly on a cell border
                x = rng.integers(1, shape.w) / shape.w if shape.w > 1 else x
            elif kind < 0.25 and t > 0:          # same cell as the previous truth
                x, y = truth[b, t - 1, 0] + rng.uniform(-0.2, 0.2) / shape.w, truth[b, t - 1, 1]
            size = rng.random()
            if size < 0.1:
                w, h = rng.uniform(0.002, 0.01, size=2)      # tiny
            elif size < 0.2:
                w, h = rng.uniform(0.7, 1.0, size=2)         # huge
            else:
                w, h = np.exp(rng.uniform(np.log(0.02), np.log(0.6), size=2))
            cls = int(rng.integers(0, config.classes))
            if flavor == "alexeyab" and rng.random() < 0.05:
                cls = int(rng.choice([-1, config.classes]))  # out of range: darknet skips it
            x = float(np.clip(x, 1e-3, 0.999))
            y = float(np.clip(y, 1e-3, 0.999))
            truth[b, t] = (x, y, w, h, cls, t)
        if flavor == "pjreddie":
            truth[b, :, 5] = 0
    return truth


def _plant(rng: np.random.Generator, x: np.ndarray, truth: np.ndarray, config: YoloConfig,
           flavor: str, shape: CaseShape) -> None:
    """Make some predictions overlap truths so ignore/class-match/truth_thresh fire."""
    stride = 5 + config.classes
    for b in range(shape.batch):
        for row in truth[b]:
            if row[0] == 0:
                break
            if rng.random() > 0.6:
                continue
            a = int(rng.integers(0, config.n))
            anchor = config.mask[a]
            i = min(int(np.float32(row[0]) * np.float32(shape.w)), shape.w - 1)
            j = min(int(np.float32(row[1]) * np.float32(shape.h)), shape.h - 1)
            jitter = rng.normal(0, 0.15, size=4)
            ch = a * stride
            x[b, ch + 0, j, i] = _encode_xy(float(row[0]) * shape.w - i + jitter[0] / shape.w, config, flavor)
            x[b, ch + 1, j, i] = _encode_xy(float(row[1]) * shape.h - j + jitter[1] / shape.h, config, flavor)
            aw, ah = config.anchors[2 * anchor], config.anchors[2 * anchor + 1]
            x[b, ch + 2, j, i] = _encode_wh(max(row[2], 1e-3), aw, config.net_w, config, flavor) + jitter[2]
            x[b, ch + 3, j, i] = _encode_wh(max(row[3], 1e-3), ah, config.net_h, config, flavor) + jitter[3]
            # class probabilities: all below 0.25 (class-match fails) or one above it
            probs = rng.uniform(0.01, 0.24, size=config.classes)
            if rng.random() < 0.7:
                probs[int(rng.integers(0, config.classes))] = rng.uniform(0.26, 0.99)
            if not (flavor == "alexeyab" and config.new_coords):
                probs = _logit(probs)
            x[b, ch + 5: ch + stride, j, i] = probs


def random_case(seed: int, config: YoloConfig, *, flavor: str | None = None, shape: CaseShape | None = None,
                nonfinite: int = 0) -> Case:
    """A reproducible case for ``config``: logits, truths, planted overlaps.

    ``nonfinite`` NaN/Inf values are placed at random positions of the input.
    Output and delta are left empty: a reference fills them.
    """
    flavor = flavor or config.flavor
    rng = np.random.default_rng(seed)
    if shape is None:
        shape = CaseShape(batch=int(rng.integers(1, 4)), h=int(rng.integers(1, 14)),
                          w=int(rng.integers(1, 14)), max_truths=int(rng.integers(0, 13)))
    x = np.empty((shape.batch, config.channels, shape.h, shape.w), dtype=np.float32)
    stride = 5 + config.classes
    for a in range(config.n):
        base = a * stride
        if flavor == "alexeyab" and config.new_coords:
            x[:, base: base + stride] = rng.uniform(0.0, 1.0, size=(shape.batch, stride, shape.h, shape.w))
            x[:, base + 2: base + 4] = rng.uniform(0.1, 1.5, size=(shape.batch, 2, shape.h, shape.w))
        else:
            x[:, base: base + stride] = rng.normal(0.0, 2.0, size=(shape.batch, stride, shape.h, shape.w))
            x[:, base + 2: base + 4] = rng.normal(0.0, 0.7, size=(shape.batch, 2, shape.h, shape.w))
    truth = _random_truths(rng, shape, config, flavor)
    _plant(rng, x, truth, config, flavor, shape)
    for _ in range(nonfinite):
        idx = tuple(int(rng.integers(0, s)) for s in x.shape)
        x[idx] = rng.choice([np.nan, np.inf, -np.inf])
    meta = {"flavor": flavor, "seed": seed, "generator": f"parity.generate.random_case seed={seed} "
            f"grid={shape.w}x{shape.h} batch={shape.batch} max_truths={shape.max_truths}"}
    return Case(dump_yolo_cfg(config), config, flavor, x, truth, meta=meta)


def random_config(rng: np.random.Generator, flavor: str) -> YoloConfig:
    """A plausible [yolo] config with options drawn across their ranges."""
    num = 9 if rng.random() < 0.7 else 6
    n = int(rng.integers(1, 4))
    mask = tuple(sorted(int(m) for m in rng.choice(num, size=n, replace=False)))
    anchors = COCO_ANCHORS if num == 9 else (10, 14, 23, 27, 37, 58, 81, 82, 135, 169, 344, 319)
    net = int(rng.choice([64, 96, 128, 160, 256, 320, 416]))
    common = dict(classes=int(rng.integers(1, 21)), num=num, mask=mask, anchors=tuple(float(v) for v in anchors),
                  net_w=net, net_h=int(rng.choice([net, net // 2 + 32])),
                  ignore_thresh=float(rng.choice([0.5, 0.7, 0.3])),
                  truth_thresh=float(rng.choice([1.0, 1.0, 0.6, 0.8])), flavor=flavor)
    if flavor == "pjreddie":
        return YoloConfig(max_boxes=90, **common)
    iou_loss = str(rng.choice(["mse", "iou", "giou", "diou", "ciou"]))
    opts = dict(
        iou_loss=iou_loss,
        iou_normalizer=float(rng.choice([0.75, 0.07, 0.05, 1.0])),
        obj_normalizer=float(rng.choice([1.0, 1.0, 4.0])),
        cls_normalizer=float(rng.choice([1.0, 0.5])),
        scale_x_y=float(rng.choice([1.0, 1.05, 1.1, 1.2, 2.0])),
        iou_thresh=float(rng.choice([1.0, 0.213, 0.5])),
        iou_thresh_kind=str(rng.choice(["iou", "giou", "diou", "ciou"])),
        label_smooth_eps=float(rng.choice([0.0, 0.0, 0.1])),
        focal_loss=int(rng.random() < 0.15),
        objectness_smooth=int(rng.random() < 0.15),
        new_coords=int(rng.random() < 0.15),
        max_delta=float(rng.choice([3.4028234663852886e38, 5.0, 0.3])),
        show_details=int(rng.random() < 0.85),
        max_boxes=int(rng.choice([200, 200, 5])),
    )
    if rng.random() < 0.15:
        opts["counters_per_class"] = tuple(int(v) for v in rng.integers(0, 500, size=common["classes"]))
    return YoloConfig(**common, **opts)
