"""Targets: between the layouts ports use and darknet's truth, with darknet's reading rules.

darknet's [yolo] layer takes the truth as ``[batch, max_boxes, 5|6]`` rows
``x, y, w, h, class[, track]`` (centre and size relative to the network
input) and reads an image's rows up to the first with ``x == 0``, at most
``max`` of them; AlexeyAB also skips rows whose class id is outside
``[0, classes)``. Ports keep targets differently; the converters here turn
the common layouts into darknet's truth, and ``read_rows`` returns exactly
the rows darknet reads, with every row it drops and why.

Layouts (``rows_layout``):
- ``"icxywh"``: ``[N, 6]`` image index, class, x, y, w, h (ultralytics-style);
- ``"ixywhc"``: ``[N, 6]`` image index, x, y, w, h, class;
- per-image lists: one ``[n_i, 5]`` tensor per image, class first
  (``"cxywh"``) or last (``"xywhc"``);
- ``xyxy=True``: boxes given as normalized corners instead of centre/size.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from .config import YoloConfig
from .errors import DarknetInputWarning, InputError
from .layer_input import active_rows

ROW_LAYOUTS = ("icxywh", "ixywhc")
LIST_LAYOUTS = ("cxywh", "xywhc")


@dataclass(frozen=True)
class DroppedRow:
    """A truth row that holds a box but that darknet does not read, and why."""

    image: int
    row: int
    reason: str     # "after_terminator", "over_max", "class_out_of_range"


@dataclass
class ReadRows:
    """The rows darknet reads, as ``[N, 6]`` (image, class, x, y, w, h), and those it drops."""

    rows: Tensor
    dropped: list[DroppedRow]

    def summary(self) -> str:
        """One line: how many rows were dropped for which reason."""
        counts: dict[str, int] = {}
        for d in self.dropped:
            counts[d.reason] = counts.get(d.reason, 0) + 1
        return ", ".join(f"{n} {reason.replace('_', ' ')}" for reason, n in counts.items()) or "none dropped"


def read_rows(truth: Tensor, config: YoloConfig, flavor: str | None = None) -> ReadRows:
    """Exactly the rows of ``truth`` ([batch, rows, 5|6]) darknet's [yolo] layer reads under ``config``.

    Rows after an image's first ``x == 0`` row and beyond ``config.max_boxes``
    are dropped; with the AlexeyAB flavor so are rows whose class id is outside
    ``[0, classes)`` (pjreddie would index out of bounds: the reference refuses
    those). ``dropped`` lists every non-empty row left out, with the reason.
    """
    flavor = flavor or config.flavor
    t = truth.detach().to("cpu", torch.float32).numpy()
    if t.ndim != 3 or t.shape[2] not in (5, 6):
        raise InputError(f"truth: shape {tuple(t.shape)}, expected [batch, rows, 5 or 6]")
    active = active_rows(t, config.max_boxes)
    cls = t[..., 4]
    with np.errstate(invalid="ignore"):
        in_range = np.isfinite(cls) & (np.trunc(np.nan_to_num(cls)) >= 0) & (np.trunc(np.nan_to_num(cls))
                                                                            < config.classes)
    used = active & (in_range if flavor == "alexeyab" else True)
    nonempty = (t != 0).any(axis=-1)
    limit = min(config.max_boxes, t.shape[1])
    dropped = []
    for b, r in zip(*np.nonzero(nonempty & ~used)):
        reason = ("over_max" if r >= limit else "after_terminator" if not active[b, r] else "class_out_of_range")
        dropped.append(DroppedRow(int(b), int(r), reason))
    b, r = np.nonzero(used)
    picked = torch.from_numpy(t[b, r])
    rows = torch.stack([torch.from_numpy(b.astype(np.float32)), torch.trunc(picked[:, 4]), picked[:, 0],
                        picked[:, 1], picked[:, 2], picked[:, 3]], 1) if len(b) else torch.zeros(0, 6)
    return ReadRows(rows.to(truth.device), dropped)


def _xyxy_to_xywh(box: Tensor) -> Tensor:
    x1, y1, x2, y2 = box.unbind(-1)
    return torch.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], -1)


def targets_from_rows(rows: Tensor, batch_size: int, max_boxes: int = 200) -> Tensor:
    """``[N, 6]`` rows ``(image_index, class, x, y, w, h)`` -> darknet truth ``[batch, max_boxes, 6]``.

    The layout of most PyTorch YOLO codebases (ultralytics-style targets).
    Per image, boxes keep their row order; beyond ``max_boxes`` they are
    dropped with a warning, as darknet would not read them.
    """
    if rows.dim() != 2 or rows.shape[1] != 6:
        raise InputError(f"targets: shape {tuple(rows.shape)}, expected [N, 6] rows "
                         "(image_index, class, x, y, w, h)")
    _check_whole_images(rows[:, 0])
    return _pack(rows[:, 0].to(torch.long), rows[:, 1], rows[:, 2:6], batch_size, max_boxes)


def rows_from_targets(truth: Tensor, config: YoloConfig, flavor: str | None = None) -> Tensor:
    """Exactly the rows darknet reads from ``truth``, as ``[N, 6]`` (image, class, x, y, w, h).

    The inverse of ``targets_from_rows`` under darknet's reading rules
    (``read_rows``): rows it drops (after an ``x == 0`` row, beyond ``max``,
    AlexeyAB: class out of range) are left out, with one ``DarknetInputWarning``
    saying how many and why.
    """
    read = read_rows(truth, config, flavor)
    if read.dropped:
        first = read.dropped[0]
        warnings.warn(DarknetInputWarning(f"rows_from_targets: darknet does not read {len(read.dropped)} "
                                          f"row(s) ({read.summary()}; first: truth[{first.image}, {first.row}])"),
                      stacklevel=2)
    return read.rows


def truth_from_rows(rows: Tensor, batch_size: int, config: YoloConfig, *, layout: str = "icxywh",
                    xyxy: bool = False) -> Tensor:
    """``[N, 6]`` image-index rows in ``layout`` -> darknet's truth ``[batch, config.max_boxes, 6]``.

    Boxes keep their order per image. Rows beyond ``max`` per image are
    dropped with a ``DarknetInputWarning`` (darknet would not read them);
    a box whose x is exactly 0 would end darknet's list there: warned too.
    """
    if layout not in ROW_LAYOUTS:
        raise InputError(f"targets layout {layout!r}: expected one of {', '.join(ROW_LAYOUTS)}")
    if rows.dim() != 2 or rows.shape[1] != 6:
        raise InputError(f"targets: shape {tuple(rows.shape)}, expected [N, 6] rows ({layout})")
    _check_whole_images(rows[:, 0])
    if layout == "icxywh":
        cls, box = rows[:, 1], rows[:, 2:6]
    else:
        cls, box = rows[:, 5], rows[:, 1:5]
    if xyxy:
        box = _xyxy_to_xywh(box)
    return _pack(rows[:, 0].to(torch.long), cls, box, batch_size, config.max_boxes)


def truth_from_lists(boxes: Sequence[Tensor], config: YoloConfig, *, layout: str = "cxywh",
                     xyxy: bool = False) -> Tensor:
    """One ``[n_i, 5]`` tensor per image in ``layout`` -> darknet's truth ``[len(boxes), max, 6]``."""
    if layout not in LIST_LAYOUTS:
        raise InputError(f"targets layout {layout!r}: expected one of {', '.join(LIST_LAYOUTS)}")
    parts = []
    for k, b in enumerate(boxes):
        if b.dim() != 2 or b.shape[1] != 5:
            raise InputError(f"targets[{k}]: shape {tuple(b.shape)}, expected [n, 5] ({layout})")
        img = torch.full((b.shape[0], 1), float(k), dtype=torch.float32, device=b.device)
        cls, box = (b[:, :1], b[:, 1:5]) if layout == "cxywh" else (b[:, 4:5], b[:, 0:4])
        parts.append(torch.cat([img, cls.float(), box.float()], 1))
    rows = torch.cat(parts) if parts else torch.zeros(0, 6)
    return truth_from_rows(rows, len(boxes), config, xyxy=xyxy)


def _check_whole_images(index: Tensor) -> None:
    """Image indices (the first column) must be whole numbers: name the first row that is not."""
    whole = index == torch.trunc(index)
    if index.numel() and not bool(whole.all()):
        bad = int(torch.nonzero(~whole)[0, 0])
        raise InputError(f"targets: row {bad} has image index {float(index[bad])!r}; image indices are whole "
                         "numbers (the first column)")


def _pack(img: Tensor, cls: Tensor, box: Tensor, batch_size: int, max_boxes: int) -> Tensor:
    if img.numel() and (int(img.min()) < 0 or int(img.max()) >= batch_size):
        raise InputError(f"targets: image indices must lie in [0, {batch_size}), got "
                         f"[{int(img.min())}, {int(img.max())}]")
    order = torch.argsort(img, stable=True)
    img_sorted = img[order]
    counts = torch.bincount(img_sorted, minlength=batch_size)
    starts = torch.cumsum(counts, 0) - counts
    slot = torch.arange(img_sorted.shape[0], device=img.device) - starts[img_sorted]
    keep = slot < max_boxes
    if not bool(keep.all()):
        warnings.warn(DarknetInputWarning(f"targets: {int((~keep).sum())} boxes beyond max={max_boxes} per image "
                                          "dropped (darknet reads at most max boxes)"), stacklevel=3)
    src_box, src_cls = box[order][keep].to(torch.float32), cls[order][keep].to(torch.float32)
    if bool((src_box[:, 0] == 0).any()):
        warnings.warn(DarknetInputWarning("targets: a box with x == 0 ends darknet's list for its image: "
                                          "the boxes after it are not read"), stacklevel=3)
    truth = torch.zeros(batch_size, max_boxes, 6, dtype=torch.float32, device=img.device)
    truth[img_sorted[keep], slot[keep], 0:4] = src_box
    truth[img_sorted[keep], slot[keep], 4] = src_cls
    return truth
