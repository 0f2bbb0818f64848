"""One [yolo] layer run, typed: what every backend returns and the comparison reads.

The C reference, a real libdarknet and the PyTorch port all return a
``LayerRun``: the activated ``output``, the ``delta`` (darknet's sign,
target minus prediction), ``LayerStats`` (the figures darknet keeps), the
per-slot role bits and, where the backend made them itself, the
``Decisions`` darknet took (best IoU per slot and which truth gave it, the
class-match test, each truth's best anchor and iou_thresh extras, the
averaging divisor). A real libdarknet exposes no decisions: the harness takes
them from the C reference on the same input.

Arrays are numpy (C reference, libdarknet, recordings) or torch tensors (the
port, on its device); ``numpy()`` gives a host copy of either. Ground floor:
imports nothing from the project.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np


def _host(v: Any) -> Any:
    """A numpy array of ``v`` (tensor, array, scalar); None stays None."""
    if v is None:
        return None
    if hasattr(v, "detach"):   # a torch tensor, on any device
        return v.detach().cpu().numpy()
    return np.asarray(v)


@dataclass
class LayerStats:
    """The figures darknet keeps for one call, under the names recordings use.

    ``count`` is darknet's printed count (AlexeyAB clamps it to at least 1);
    ``count_raw`` the number of truth-to-slot assignments before that clamp.
    Fields darknet's flavor does not keep are None (pjreddie has no
    ``rewritten_bbox``, ``total_bbox`` or loss split). The PyTorch port
    fills them with 0-d tensors on its device (reading them would sync);
    ``host()`` gives Python numbers.
    """

    cost: float
    count: int
    count_raw: int
    tot_iou: float
    avg_iou: float
    rewritten_bbox: int | None = None
    total_bbox: int | None = None
    tot_iou_loss: float | None = None
    tot_giou_loss: float | None = None
    class_loss: float | None = None
    iou_loss: float | None = None
    total_loss: float | None = None

    # Counters must be equal; the cost agrees within the tolerance rule.
    EXACT = ("count", "count_raw", "rewritten_bbox", "total_bbox")
    CLOSE = ("cost",)

    def host(self) -> "LayerStats":
        """The same figures as Python ints and floats."""
        out = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if v is not None:
                v = int(v) if f.name in self.EXACT else float(v)
            out[f.name] = v
        return LayerStats(**out)

    def as_dict(self) -> dict[str, Any]:
        """The fields that are known, as plain Python numbers (a recording's ``stats``)."""
        out = {}
        for k, v in dataclasses.asdict(self.host()).items():
            unknown = v is None or (k in self.EXACT and v < 0) or (isinstance(v, float) and v != v and k != "cost")
            if not unknown:
                out[k] = v
        return out

    def __getitem__(self, key: str) -> Any:
        value = getattr(self, key, None) if key in _STAT_FIELDS else None
        if value is None:
            raise KeyError(key)
        return value

    def get(self, key: str, default: Any = None) -> Any:
        value = getattr(self, key, None) if key in _STAT_FIELDS else None
        return default if value is None else value

    def __contains__(self, key: object) -> bool:
        return key in _STAT_FIELDS and getattr(self, str(key)) is not None

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> "LayerStats":
        """From a recording's (possibly partial) stats; missing numbers become NaN / -1."""
        def num(key: str, kind: type, missing: Any) -> Any:
            v = data.get(key)
            return missing if v is None else kind(v)
        count = num("count", int, -1)
        return cls(num("cost", float, float("nan")), count, num("count_raw", int, num("assigned", int,
                                                                                     _raw_from_printed(count))),
                   num("tot_iou", float, float("nan")), num("avg_iou", float, float("nan")),
                   *(num(k, int, None) for k in ("rewritten_bbox", "total_bbox")),
                   *(num(k, float, None) for k in ("tot_iou_loss", "tot_giou_loss", "class_loss", "iou_loss",
                                                   "total_loss")))


def _raw_from_printed(count: int) -> int:
    """The raw count where the printed one says it: AlexeyAB's clamp turns only 0 into 1, and
    pjreddie prints the raw number; a printed 1 (or none) leaves it unknown (-1)."""
    return count if count >= 0 and count != 1 else -1


_STAT_FIELDS = frozenset(f.name for f in dataclasses.fields(LayerStats))


@dataclass
class Assignments:
    """Step 2's truth-to-slot writes, in darknet's order (one entry per write).

    ``b, t`` name the truth row, ``a`` the mask slot, ``anchor`` the biases
    index, ``j, i`` the cell; ``extra`` is true for iou_thresh extras (false
    for a truth's best anchor); ``iou`` is the IoU of the slot's prediction
    with the truth (None where the backend does not report it).
    """

    b: Any
    t: Any
    a: Any
    anchor: Any
    j: Any
    i: Any
    extra: Any
    iou: Any = None

    def __len__(self) -> int:
        return int(self.b.shape[0])

    def numpy(self) -> "Assignments":
        return Assignments(*(_host(getattr(self, f.name)) for f in dataclasses.fields(self)))

    def at(self, b: int, a: int, j: int, i: int) -> np.ndarray:
        """Indices of the writes on slot (b, a, j, i), in order (numpy arrays only)."""
        return np.nonzero((self.b == b) & (self.a == a) & (self.j == j) & (self.i == i))[0]


@dataclass
class Decisions:
    """What darknet decided, from the pass that decided it. Any field may be None.

    Per slot ([B, n, H, W]): ``best_iou`` (best IoU of the predicted box over
    the image's truths), ``pred_box`` ([B, n, H, W, 4] that predicted box,
    x, y, w, h), ``second_iou`` (the runner-up, for ties),
    ``best_truth`` (its row, -1 if none), ``best_match_iou`` (the best IoU the
    class-match test lets through: what the ignore threshold sees),
    ``max_class_prob`` and ``class_match`` (AlexeyAB's "some class > 0.25"),
    ``divisor`` (the averaging pass's divisor, 0 where it did not divide).
    Per truth row ([B, rows]): ``truth_used``, ``truth_best_anchor`` (over
    all anchors, -1 unused), ``truth_i``, ``truth_j``. Per truth and anchor
    ([B, rows, total]): ``anchor_iou`` (the shape IoU that picks the best
    anchor) and ``anchor_thresh_iou`` (the iou_thresh_kind value compared with
    iou_thresh). ``assignments``: step 2's writes.
    """

    best_iou: Any = None
    pred_box: Any = None
    second_iou: Any = None
    best_truth: Any = None
    best_match_iou: Any = None
    max_class_prob: Any = None
    class_match: Any = None
    divisor: Any = None
    truth_used: Any = None
    truth_best_anchor: Any = None
    truth_i: Any = None
    truth_j: Any = None
    anchor_iou: Any = None
    anchor_thresh_iou: Any = None
    assignments: Assignments | None = None

    def numpy(self) -> "Decisions":
        out = {f.name: _host(getattr(self, f.name)) for f in dataclasses.fields(self) if f.name != "assignments"}
        return Decisions(**out, assignments=self.assignments.numpy() if self.assignments is not None else None)


@dataclass
class LayerRun:
    """One [yolo] training forward pass: the one result type of every backend.

    ``output`` and ``delta`` are float ``[batch, n*(5+classes), h, w]`` in
    darknet's layout; ``roles`` int32 ``[batch, n, h, w]`` role bits
    (``parity.roles``; None from a real libdarknet); ``branches`` darknet
    branch name -> times taken (empty where unknown); ``backend`` says who
    computed it ("c", "libdarknet", "torch", "recorded", "candidate"). A
    candidate that returns only a delta gives ``output`` and ``stats`` None.
    """

    output: Any
    delta: Any
    stats: LayerStats | None
    roles: Any = None
    decisions: Decisions | None = None
    branches: dict[str, int] = field(default_factory=dict)
    backend: str = "c"

    def numpy(self) -> "LayerRun":
        """The same run with every array on the host as numpy."""
        return LayerRun(_host(self.output), _host(self.delta), self.stats.host() if self.stats is not None else None, _host(self.roles),
                        self.decisions.numpy() if self.decisions is not None else None, dict(self.branches),
                        self.backend)
