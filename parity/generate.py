"""Seeded random [yolo] cases that reach darknet's decision boundaries.

Plain random logits almost never overlap a truth, so the ignore test, the
0.25 class-match test and truth_thresh would go untested. The generators
therefore "plant" predictions: for some truths they set the logits of the
truth's cell (or a neighbour) so the decoded box lies near the truth, with
class probabilities deliberately above or below 0.25.

Two generators live here:

* ``generate_cases`` (and ``random_case(..., features=...)``): every edge
  darknet treats specially is a named, seeded feature with a probability
  (``CaseFeatures``): several truths in one cell/anchor, centres exactly on
  cell borders, tiny and huge boxes, out-of-range class ids (AlexeyAB only),
  an ``x == 0`` terminator in the middle of a list with real boxes after it,
  more boxes than ``max``, empty images, NaN/Inf logits. One sample gives one
  case per head, all heads seeing the same truths, as in a darknet network.
  What a case contains is recorded in ``meta["features"]``.
* ``random_case`` without ``features``: the original generator, kept byte for
  byte so the figures measured on its cases stay reproducible.

The same seed gives the same bytes. ``enabled_branches`` says which darknet
branches (``LayerRun.branches``) a config can reach with given
features, so a suite can insist that each one is hit.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .case import Case
from .cfg import dump_yolo_cfg
from .config import FLT_MAX, PJREDDIE_TRUTH_BOXES, YoloConfig
from .errors import ParityError
from .layer_input import active_rows

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
                nonfinite: int = 0, features: CaseFeatures | None = None) -> Case:
    """A reproducible case for ``config``: logits, truths, planted overlaps.

    Without ``features`` this is the original generator (its bytes are pinned:
    measured figures rest on them); ``nonfinite`` NaN/Inf values are placed at
    random positions of the input. With ``features`` the case comes from
    ``generate_cases`` (one head, ``shape.max_truths`` truths at most) and
    ``nonfinite`` must be 0: use ``CaseFeatures.nonfinite`` instead.
    Output and delta are left empty: a reference fills them.
    """
    flavor = flavor or config.flavor
    rng = np.random.default_rng(seed)
    if shape is None:
        shape = CaseShape(batch=int(rng.integers(1, 4)), h=int(rng.integers(1, 14)),
                          w=int(rng.integers(1, 14)), max_truths=int(rng.integers(0, 13)))
    if features is not None:
        if nonfinite:
            raise ParityError("random_case: pass NaN/Inf through CaseFeatures.nonfinite, not nonfinite=, "
                              "when features are given")
        (case,) = generate_cases([seed, 1], [HeadGrid(config, shape.w, shape.h)], batch=shape.batch,
                                 truths=(0, shape.max_truths), features=features, flavor=flavor,
                                 label=f"parity.generate.random_case seed={seed}")
        return case
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


def random_config(rng: np.random.Generator, flavor: str, *, class_map_p: float = 0.0) -> YoloConfig:
    """A plausible [yolo] config with options drawn across their ranges.

    ``class_map_p``: probability of a map= (AlexeyAB). Off by default: a case
    file's cfg can name a map file only, so a saved case would lose it.
    """
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
    opts["class_map"] = random_class_map(rng, common["classes"], class_map_p) if class_map_p > 0 else None
    return YoloConfig(**common, **opts)


def random_class_map(rng: np.random.Generator, classes: int, p: float = 0.15) -> tuple[int, ...] | None:
    """A map= (class id remapping) with probability ``p``, drawn from a child of ``rng``.

    The child stream leaves ``rng``'s own draws as they were, so seeds drawn
    before map= existed give the same configs otherwise.
    """
    child = np.random.default_rng(rng.bit_generator.seed_seq.spawn(1)[0])   # type: ignore[attr-defined]
    if child.random() >= p:
        return None
    return tuple(int(v) for v in child.integers(0, classes, size=classes))


# Option combinations a suite should reach (issue 11): name -> (the config enables it, branches that show it taken).
COMBINATIONS: dict[str, tuple[Any, tuple[str, ...]]] = {
    **{f"new_coords+iou_loss={k}": ((lambda c, k=k: bool(c.new_coords) and c.iou_loss == k), (f"iou_loss_{k}",))
       for k in ("mse", "iou", "giou", "diou", "ciou")},
    "objectness_smooth+new_coords=0": (lambda c: bool(c.objectness_smooth) and not c.new_coords,
                                       ("objectness_smooth",)),
    "objectness_smooth+truth_thresh<1": (lambda c: bool(c.objectness_smooth) and np.float32(c.truth_thresh) < 1,
                                         ("objectness_smooth", "truth_thresh")),
    "objectness_smooth+counters_per_class": (lambda c: bool(c.objectness_smooth) and bool(c.counters_per_class),
                                             ("objectness_smooth",)),
    "counters_per_class+label_smooth": (lambda c: bool(c.counters_per_class) and c.label_smooth_eps != 0,
                                        ("label_smooth",)),
    "counters_per_class+focal_loss": (lambda c: bool(c.counters_per_class) and bool(c.focal_loss), ("focal",)),
    "counters_per_class+max_delta<1": (lambda c: bool(c.counters_per_class) and np.float32(c.max_delta) < 1,
                                       ("max_delta_clip",)),
    "map+counters_per_class": (lambda c: c.class_map is not None and bool(c.counters_per_class), ()),
    "map+truth_thresh<1": (lambda c: c.class_map is not None and np.float32(c.truth_thresh) < 1,
                           ("truth_thresh",)),
}


def reached_combinations(config: YoloConfig, flavor: str, branches: Mapping[str, int]) -> list[str]:
    """The ``COMBINATIONS`` a run took: its config enables them and it took their branches (AlexeyAB only)."""
    if flavor != "alexeyab":
        return []
    return sorted(name for name, (enabled, needs) in COMBINATIONS.items()
                  if enabled(config) and all(branches.get(b) for b in needs))


# --------------------------------------------------------------------------
# Feature-driven generator: every edge case is a named, seeded feature.

# Rows added past ``max`` when images may hold more boxes than ``max``.
OVER_MAX_ROWS = 3
# Plants per image at most: a crowded image (rows past max=200) gains nothing from more.
MAX_PLANTED = 32
_NONFINITE = (np.nan, np.inf, -np.inf)


@dataclass(frozen=True)
class CaseFeatures:
    """How often each input darknet treats specially appears (probabilities in [0, 1]).

    Per truth: ``shared_cell`` (same cell as the previous truth, similar size:
    same anchor, so deltas are rewritten and averaged), ``border`` (a centre
    exactly on a cell border, or the last float below 1), ``tiny`` / ``huge``
    boxes, ``anchor_sized`` (the shape of an anchor of each head in turn, as
    real data clusters around its anchors), ``class_oob`` (class id outside
    ``[0, classes)``; AlexeyAB only, pjreddie refuses them), ``plant`` (a
    prediction planted over it; at most ``MAX_PLANTED`` per image).
    Per planted prediction: ``plant_class_match`` (exactly one class
    probability above 0.25; otherwise all below, so the ignore test's class
    match fails), ``plant_tight`` (IoU near 1: truth_thresh),
    ``plant_neighbour`` (in a neighbouring cell), ``plant_wild`` (box logits
    drawn wide, as a diverging net emits them: IoU-loss deltas then grow
    past ``max_delta`` on every head, not only on tiny boxes).
    Per image: ``empty_image`` (no truths), ``mid_terminator`` (an ``x == 0``
    row inside the list with real boxes after it), ``over_max`` (real boxes
    in the rows past ``max``). Per case: ``nonfinite`` (NaN/Inf logits: in an
    objectness, in box entries of truths' assigned slots, and anywhere).
    """

    plant: float = 0.6
    plant_class_match: float = 0.6
    plant_tight: float = 0.3
    plant_neighbour: float = 0.15
    plant_wild: float = 0.1
    shared_cell: float = 0.15
    border: float = 0.15
    tiny: float = 0.1
    huge: float = 0.1
    anchor_sized: float = 0.3
    class_oob: float = 0.05
    empty_image: float = 0.1
    mid_terminator: float = 0.15
    over_max: float = 0.05
    nonfinite: float = 0.1

    def __post_init__(self) -> None:
        for name, value in self.as_dict().items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
                raise ParityError(f"CaseFeatures.{name}={value!r}: a probability must be a number in [0, 1]")
        if self.tiny + self.huge > 1:
            raise ParityError(f"CaseFeatures: tiny + huge = {self.tiny + self.huge} exceeds 1")

    def as_dict(self) -> dict[str, float]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def forcing(self, name: str) -> CaseFeatures:
        """These features with ``name`` certain (``shared_cell``: 0.5) and the other disruptive ones off.

        Suites force each rare feature once so that a short run still holds
        it. The forced sample holds no other disruptive feature (NaN, wild
        plants, skipped or hidden rows), so it shows its own feature's effect
        alone, and nothing hides it.
        """
        if name not in FORCEABLE:
            raise ParityError(f"cannot force feature {name!r}; forceable: {', '.join(FORCEABLE)}")
        changes: dict[str, float] = {other: 0.0 for other in _DISRUPTIVE}
        changes[name] = _FORCED_VALUE.get(name, 1.0)
        if name.startswith("plant_"):
            changes["plant"] = 1.0
        if name in _NEEDS_EVERY_HEAD and self.anchor_sized > 0:  # truths for every head, in turn
            changes["anchor_sized"] = 1.0
            if name != "shared_cell":  # a copied shape would take a head's turn
                changes["shared_cell"] = 0.0
        if name in ("tiny", "huge"):
            changes.update({"huge" if name == "tiny" else "tiny": 0.0, "anchor_sized": 0.0})
        return dataclasses.replace(self, **changes)


# Features that hide, skip or poison what the others would show.
_DISRUPTIVE = ("empty_image", "mid_terminator", "over_max", "nonfinite", "plant_wild", "class_oob")
# Features whose branch needs a truth assigned to the head itself.
_NEEDS_EVERY_HEAD = ("nonfinite", "plant_wild", "shared_cell")
# Forced below certainty: every truth in its predecessor's cell would make one
# chain of one shape (one head); at 0.5 pairs form, of every head's shapes.
_FORCED_VALUE = {"shared_cell": 0.5}
# Rare features a suite forces once each (order: the order they are forced in).
FORCEABLE = ("empty_image", "mid_terminator", "over_max", "nonfinite", "plant_wild", "class_oob",
             "shared_cell", "border", "tiny", "huge")


@dataclass(frozen=True)
class HeadGrid:
    """One [yolo] head of a sample: its config and the grid it runs on."""

    config: YoloConfig
    grid_w: int
    grid_h: int


@dataclass(frozen=True)
class _TruthSpace:
    """What every head of a sample accepts: the truths are shared by all heads."""

    grids: tuple[tuple[int, int], ...]
    anchors: tuple[tuple[tuple[float, float], ...], ...]  # per head: its anchors' (w, h) / net
    classes: int      # ids below this are in range for every head
    oob_class: int    # ids from this on are out of range for every head
    limit: int        # rows every head reads at most (the smallest max)
    rows: int         # rows of the truth array
    alexeyab: bool

    @classmethod
    def of(cls, heads: Sequence[HeadGrid], flavor: str, features: CaseFeatures) -> _TruthSpace:
        limit = min(h.config.max_boxes for h in heads)
        if flavor == "pjreddie":
            rows = PJREDDIE_TRUTH_BOXES  # darknet's truth buffer holds 90 boxes per image
        else:
            rows = max(h.config.max_boxes for h in heads) + (OVER_MAX_ROWS if features.over_max > 0 else 0)
        anchors = tuple(tuple((h.config.anchors[2 * a] / h.config.net_w, h.config.anchors[2 * a + 1] / h.config.net_h)
                              for a in h.config.mask) for h in heads)
        return cls(tuple((h.grid_w, h.grid_h) for h in heads), anchors, min(h.config.classes for h in heads),
                   max(h.config.classes for h in heads), limit, max(rows, 1), flavor == "alexeyab")

    @property
    def finest(self) -> tuple[int, int]:
        return max(w for w, _ in self.grids), max(h for _, h in self.grids)


def over_max_possible(config: YoloConfig, flavor: str | None = None) -> bool:
    """Whether generated truth arrays can hold rows past ``max`` for this config."""
    flavor = flavor or config.flavor
    return flavor == "alexeyab" or config.max_boxes < PJREDDIE_TRUTH_BOXES


def generate_cases(seed: int | Sequence[int], heads: Sequence[HeadGrid], *, batch: int,
                   truths: tuple[int, int], features: CaseFeatures = CaseFeatures(),
                   flavor: str | None = None, label: str = "parity.generate.generate_cases") -> list[Case]:
    """One sample: a truth array shared by ``heads`` and one case per head.

    ``truths`` bounds the boxes per image before the image-level features
    (``over_max`` goes past it). ``label`` starts each case's
    ``meta["generator"]``, which also names the head, so it is unique per case.
    """
    if not heads:
        raise ParityError("generate_cases needs at least one head")
    flavor = flavor or heads[0].config.flavor
    if batch < 1 or truths[0] < 0 or truths[1] < truths[0]:
        raise ParityError(f"generate_cases: batch={batch} truths={truths} (need batch >= 1, 0 <= lo <= hi)")
    rng = np.random.default_rng(seed)
    space = _TruthSpace.of(heads, flavor, features)
    truth, image_features = _truth_array(rng, space, batch, truths, features)
    cases = []
    for index, head in enumerate(heads):
        x, head_features = _head_input(rng, head, truth, flavor, features)
        applied = sorted(set(head_features).union(*image_features))
        meta = {"flavor": flavor, "seed": _json_seed(seed), "head": index,
                "generator": f"{label} head={index} grid={head.grid_w}x{head.grid_h} batch={batch}",
                "features": {"applied": applied, "probabilities": features.as_dict()}}
        cases.append(Case(dump_yolo_cfg(head.config), head.config, flavor, x, truth.copy(), meta=meta))
    return cases


def _json_seed(seed: int | Sequence[int]) -> int | list[int]:
    return int(seed) if isinstance(seed, (int, np.integer)) else [int(s) for s in seed]


# ---- truths


def _truth_array(rng: np.random.Generator, space: _TruthSpace, batch: int, truths: tuple[int, int],
                 features: CaseFeatures) -> tuple[np.ndarray, list[set[str]]]:
    truth = np.zeros((batch, space.rows, 6), dtype=np.float32)
    applied = []
    for b in range(batch):
        rows, image_applied = _image_rows(rng, space, truths, features)
        for t, row in enumerate(rows):
            truth[b, t, :5] = row
            truth[b, t, 5] = t if space.alexeyab else 0
        applied.append(image_applied)
    return truth, applied


def _image_rows(rng: np.random.Generator, space: _TruthSpace, truths: tuple[int, int],
                features: CaseFeatures) -> tuple[list[list[float]], set[str]]:
    """One image's rows, terminator included, and the features they show."""
    if rng.random() < features.empty_image:
        return [], {"empty_image"}
    applied: set[str] = set()
    hi = min(truths[1], space.rows)
    count = int(rng.integers(min(truths[0], hi), hi + 1))
    over = space.rows > space.limit and rng.random() < features.over_max
    if over:
        count = min(space.limit + int(rng.integers(1, OVER_MAX_ROWS + 1)), space.rows)
        applied.add("over_max")
    rows = _draw_truths(rng, space, count, features, applied)
    if not over and space.limit >= 2 and rng.random() < features.mid_terminator:
        rows = _with_terminator(rng, space, rows, features, applied)
    if not rows:
        applied.add("empty_image")
    return rows, applied


def _with_terminator(rng: np.random.Generator, space: _TruthSpace, rows: list[list[float]],
                     features: CaseFeatures, applied: set[str]) -> list[list[float]]:
    """Insert an ``x == 0`` row that darknet stops at, with real boxes after it.

    The terminator sits at least one row before ``max``, so it (not ``max``)
    is what hides the row after it. Only x is 0: the row otherwise looks real.
    """
    at = min(int(rng.integers(1, len(rows) + 1)) if rows else 0, space.limit - 2)
    terminator = _draw_truth(rng, space, None, features, set())
    terminator[0] = 0.0
    after = _draw_truths(rng, space, int(rng.integers(1, 4)), features, set())
    applied.add("mid_terminator")
    return (rows[:at] + [terminator] + rows[at:] + after)[: space.rows]


def _draw_truths(rng: np.random.Generator, space: _TruthSpace, count: int, features: CaseFeatures,
                 applied: set[str]) -> list[list[float]]:
    rows: list[list[float]] = []
    for index in range(count):
        rows.append(_draw_truth(rng, space, rows[-1] if rows else None, features, applied, index))
    return rows


def _draw_truth(rng: np.random.Generator, space: _TruthSpace, prev: list[float] | None,
                features: CaseFeatures, applied: set[str], index: int = 0) -> list[float]:
    """x, y, w, h, class of one truth (centre valid for every head's grid).

    An anchor-sized truth takes the shape of an anchor of head ``index``
    (round robin), so that with enough truths every head gets its own.
    """
    if prev is not None and rng.random() < features.shared_cell:
        row = _shared_cell_truth(rng, space, prev)
        applied.add("shared_cell")
    else:
        x, y = _centre(rng, space, features, applied)
        w, h = _size(rng, space, features, applied, index)
        row = [x, y, w, h, float(rng.integers(0, space.classes))]
    if space.alexeyab and rng.random() < features.class_oob:
        row[4] = float(rng.choice([-1, space.oob_class, space.oob_class + 7]))
        applied.add("class_oob")
    return row


def _shared_cell_truth(rng: np.random.Generator, space: _TruthSpace, prev: list[float]) -> list[float]:
    """A truth in the previous one's cell with a similar shape (hence the same anchor).

    A third are exact duplicates; half keep the class, the others change it
    (two classes in one cell and anchor: darknet's averaging divides).
    """
    if rng.random() < 0.3:
        x, y, w, h = prev[:4]
    else:
        gw, gh = space.finest
        i = int(np.float32(prev[0]) * np.float32(gw))
        j = int(np.float32(prev[1]) * np.float32(gh))
        x = _valid_centre((i + rng.uniform(0.1, 0.9)) / gw, space, positive=True)
        y = _valid_centre((j + rng.uniform(0.1, 0.9)) / gh, space, positive=False)
        w, h = (float(np.clip(v * rng.uniform(0.9, 1.1), 1e-4, 1.0)) for v in prev[2:4])
    same = 0 <= prev[4] < space.classes and rng.random() < 0.5
    cls = prev[4] if same else float(rng.integers(0, space.classes))
    return [x, y, w, h, cls]


def _centre(rng: np.random.Generator, space: _TruthSpace, features: CaseFeatures,
            applied: set[str]) -> tuple[float, float]:
    x, y = rng.uniform(0.0, 1.0, size=2)
    if rng.random() < features.border:
        gw, gh = space.grids[int(rng.integers(0, len(space.grids)))]
        which = int(rng.integers(0, 3))  # x, y or both on a border
        if which != 1:
            x = int(rng.integers(1, gw + 1)) / gw   # x == 0 would end the list
        if which != 0:
            y = int(rng.integers(0, gh + 1)) / gh   # y == 0 is a valid centre
        applied.add("border")
    return _valid_centre(x, space, positive=True), _valid_centre(y, space, positive=False)


def _valid_centre(v: float, space: _TruthSpace, *, positive: bool) -> float:
    """``v`` as float32, moved down to the nearest value darknet maps inside every grid.

    darknet's cell is ``(int)(v * grid)`` in float32, so 1.0 (and values just
    below it that round up) index past the grid; a border k/grid itself is
    kept. x must stay above 0 (0 ends the list).
    """
    v32 = np.float32(min(max(v, 0.0), 1.0))
    if positive and v32 <= 0:
        v32 = np.float32(1e-6)
    sizes = {g for grid in space.grids for g in grid}
    zero = np.float32(0)
    while v32 >= 1 or any(int(v32 * np.float32(g)) >= g for g in sizes):
        v32 = np.nextafter(v32, zero)
    return float(v32)


def _size(rng: np.random.Generator, space: _TruthSpace, features: CaseFeatures, applied: set[str],
          index: int) -> tuple[float, float]:
    if rng.random() < features.anchor_sized:
        applied.add("anchor_sized")
        anchors = space.anchors[index % len(space.anchors)]
        aw, ah = anchors[int(rng.integers(0, len(anchors)))]
        sw, sh = np.exp(rng.uniform(-0.15, 0.15, size=2))
        return float(np.clip(aw * sw, 1e-3, 1.0)), float(np.clip(ah * sh, 1e-3, 1.0))
    r = rng.random()
    if r < features.tiny:
        applied.add("tiny")
        w, h = np.exp(rng.uniform(np.log(0.001), np.log(0.012), size=2))
    elif r < features.tiny + features.huge:
        applied.add("huge")
        w, h = rng.uniform(0.7, 1.0, size=2)
    else:
        w, h = np.exp(rng.uniform(np.log(0.02), np.log(0.6), size=2))
    return float(w), float(h)


# ---- inputs


def _head_input(rng: np.random.Generator, head: HeadGrid, truth: np.ndarray, flavor: str,
                features: CaseFeatures) -> tuple[np.ndarray, set[str]]:
    """Random logits for one head, predictions planted over its truths, NaN/Inf."""
    config = head.config
    x = _base_logits(rng, config, flavor, truth.shape[0], head.grid_h, head.grid_w)
    active = active_rows(truth, config.max_boxes)
    applied: set[str] = set()
    for b in range(truth.shape[0]):
        for t in np.flatnonzero(active[b])[:MAX_PLANTED]:
            if rng.random() < features.plant:
                _plant_prediction(rng, x, b, truth[b, t], head, flavor, features, applied)
    if rng.random() < features.nonfinite:
        _place_nonfinite(rng, x, truth, active, head, flavor)
        applied.add("nonfinite")
    return x, applied


def _base_logits(rng: np.random.Generator, config: YoloConfig, flavor: str, batch: int, h: int,
                 w: int) -> np.ndarray:
    """Background predictions: logits of a half-trained net (raw values with new_coords)."""
    shape = (batch, config.n, 5 + config.classes, h, w)
    if flavor == "alexeyab" and config.new_coords:
        x = rng.random(shape, dtype=np.float32)
        x[:, :, 2:4] = 0.1 + 1.4 * rng.random((batch, config.n, 2, h, w), dtype=np.float32)
    else:
        x = 2 * rng.standard_normal(shape, dtype=np.float32)
        x[:, :, 2:4] = 0.7 * rng.standard_normal((batch, config.n, 2, h, w), dtype=np.float32)
    return x.reshape(batch, config.channels, h, w)


def _cell(row: np.ndarray, head: HeadGrid) -> tuple[int, int]:
    """darknet's cell of a truth centre: the float32 product truncated."""
    i = int(np.float32(row[0]) * np.float32(head.grid_w))
    j = int(np.float32(row[1]) * np.float32(head.grid_h))
    return min(i, head.grid_w - 1), min(j, head.grid_h - 1)


def _shape_ious(config: YoloConfig, w: float, h: float) -> np.ndarray:
    """IoU of a (w, h) box with every anchor, both centred (how darknet picks anchors)."""
    aw = np.asarray(config.anchors[0::2], dtype=np.float32) / np.float32(config.net_w)
    ah = np.asarray(config.anchors[1::2], dtype=np.float32) / np.float32(config.net_h)
    inter = np.minimum(aw, np.float32(w)) * np.minimum(ah, np.float32(h))
    return inter / (aw * ah + np.float32(w * h) - inter)


def _best_anchor(config: YoloConfig, w: float, h: float) -> int:
    """The anchor (over all layers) darknet assigns a (w, h) truth to, up to float ties."""
    return int(np.argmax(_shape_ious(config, w, h)))


def _assigned_slots(config: YoloConfig, flavor: str, w: float, h: float) -> list[int]:
    """Mask slots a (w, h) truth is likely assigned to: its best anchor's and (AlexeyAB,
    iou_thresh < 1) those passing iou_thresh. Plain IoU bounds the other kinds from
    above for centred boxes, so this may name a slot darknet skips, never miss one.
    """
    ious = _shape_ious(config, w, h)
    best = _best_anchor(config, w, h)
    extra = flavor == "alexeyab" and np.float32(config.iou_thresh) < 1
    return [slot for slot, anchor in enumerate(config.mask)
            if anchor == best or (extra and ious[anchor] > np.float32(config.iou_thresh))]


def _plant_prediction(rng: np.random.Generator, x: np.ndarray, b: int, row: np.ndarray, head: HeadGrid,
                      flavor: str, features: CaseFeatures, applied: set[str]) -> None:
    """Logits at the truth's cell (or a neighbour) that decode to a box near the truth.

    The jitter is relative to the box size, so tiny and huge boxes overlap
    their plants equally well; tight plants reach IoUs near 1.
    """
    config = head.config
    i, j = _cell(row, head)
    if rng.random() < features.plant_neighbour:
        di, dj = (int(v) for v in rng.integers(-1, 2, size=2))
        i, j = min(max(i + di, 0), head.grid_w - 1), min(max(j + dj, 0), head.grid_h - 1)
        applied.add("plant_neighbour")
    assigned = _assigned_slots(config, flavor, float(row[2]), float(row[3]))
    wild = rng.random() < features.plant_wild
    if assigned and (wild or rng.random() < 0.6):
        slot = assigned[int(rng.integers(0, len(assigned)))]
    else:
        slot = int(rng.integers(0, config.n))
    ch = slot * (5 + config.classes)
    if wild:  # at the slot the truth is assigned to, where box deltas are written
        x[b, ch: ch + 4, j, i] = rng.normal(0.0, 5.0, size=4)
        applied.add("plant_wild")
    else:
        x[b, ch: ch + 4, j, i] = _near_box(rng, row, head, config.mask[slot], flavor, features, applied, i, j)
    x[b, ch + 5: ch + 5 + config.classes, j, i] = _planted_classes(rng, row, config, flavor, features, applied)


def _near_box(rng: np.random.Generator, row: np.ndarray, head: HeadGrid, anchor: int, flavor: str,
              features: CaseFeatures, applied: set[str], i: int, j: int) -> list[float]:
    """x, y, w, h inputs at cell (i, j) decoding near the truth, jittered relative to its size."""
    config = head.config
    tight = rng.random() < features.plant_tight
    jitter = rng.normal(0.0, 0.02 if tight else 0.15, size=4)
    applied.add("plant_tight" if tight else "plant")
    bw, bh = max(float(row[2]), 1e-4), max(float(row[3]), 1e-4)
    return [_encode_xy(float(row[0]) * head.grid_w - i + jitter[0] * bw * head.grid_w, config, flavor),
            _encode_xy(float(row[1]) * head.grid_h - j + jitter[1] * bh * head.grid_h, config, flavor),
            _encode_wh(bw, config.anchors[2 * anchor], config.net_w, config, flavor) + jitter[2],
            _encode_wh(bh, config.anchors[2 * anchor + 1], config.net_h, config, flavor) + jitter[3]]


def _planted_classes(rng: np.random.Generator, row: np.ndarray, config: YoloConfig, flavor: str,
                     features: CaseFeatures, applied: set[str]) -> np.ndarray:
    """Class inputs: every probability below 0.25, or exactly one above it (mostly the truth's)."""
    probs = rng.uniform(0.01, 0.24, size=config.classes)
    if rng.random() < features.plant_class_match:
        cls = int(row[4])
        if not (0 <= cls < config.classes and rng.random() < 0.8):
            cls = int(rng.integers(0, config.classes))
        probs[cls] = rng.uniform(0.26, 0.99)
        applied.add("plant_class_match")
    else:
        applied.add("plant_class_blocked")
    if flavor == "alexeyab" and config.new_coords:
        return probs  # no logistic with new_coords: the input is the probability
    return _logit(probs)


def _place_nonfinite(rng: np.random.Generator, x: np.ndarray, truth: np.ndarray, active: np.ndarray,
                     head: HeadGrid, flavor: str) -> None:
    """NaN in box entries of up to 3 truths' assigned slots and in an objectness; NaN/Inf anywhere.

    The objectness NaN goes to an image holding a truth of an in-range class:
    darknet zeroes a non-finite objectness only while scanning truths. Box
    NaNs go where darknet assigns a truth (its best anchor in this head's
    mask, preferably), since only assigned box deltas pass its NaN fix.
    NaN, because +-Inf in x, y or objectness activates to a finite value
    (except with new_coords).
    """
    config = head.config
    stride = 5 + config.classes
    with np.errstate(invalid="ignore"):
        usable = active & (np.trunc(truth[..., 4]) >= 0) & (np.trunc(truth[..., 4]) < config.classes)
    rows = [(int(b), int(t), _assigned_slots(config, flavor, *map(float, truth[b, t, 2:4])))
            for b, t in np.argwhere(usable)]
    certain = [r for r in rows if _best_anchor(config, *map(float, truth[r[0], r[1], 2:4])) in config.mask]
    pool = certain or [r for r in rows if r[2]] or rows
    # w or h: darknet multiplies their IoU derivative by exp(input), so NaN always
    # reaches the delta; NaN in x or y can vanish in darknet's fmin/fmax
    entries = (0, 1, 2, 3) if flavor == "alexeyab" and config.new_coords else (2, 3)
    image = int(rng.integers(0, x.shape[0]))  # kept only if no image has a usable truth
    for k in rng.permutation(len(pool))[:3]:
        image, t, slots = pool[int(k)]
        i, j = _cell(truth[image, t], head)
        entry = int(rng.choice(entries))
        for slot in slots or range(config.n):
            x[image, slot * stride + entry, j, i] = np.nan
    a, j, i = int(rng.integers(0, config.n)), int(rng.integers(0, head.grid_h)), int(rng.integers(0, head.grid_w))
    x[image, a * stride + 4, j, i] = np.nan
    anywhere = tuple(int(rng.integers(0, s)) for s in x.shape)
    x[anywhere] = rng.choice(_NONFINITE)


# --------------------------------------------------------------------------
# Which darknet branches generated cases can reach

# Names of darknet_ref's branch counters (yref_branch_name), in enum order.
BRANCHES = (
    "ignore", "classmatch_blocked", "objectness_smooth", "truth_thresh", "anchor_outside_mask",
    "iou_thresh_extra", "rewritten_bbox", "class_shortcut", "averaging", "averaging_divides",
    "iou_loss_mse", "iou_loss_iou", "iou_loss_giou", "iou_loss_diou", "iou_loss_ciou", "max_delta_clip",
    "fix_nan_inf", "zero_x_stop", "class_oob", "max_truncated", "obj_nonfinite", "focal", "label_smooth",
)


def enabled_branches(config: YoloConfig, features: CaseFeatures | None = None, *,
                     flavor: str | None = None) -> set[str]:
    """The darknet branches that cases generated for ``config`` with ``features`` can reach.

    A branch is enabled when the config turns its code on (``focal`` needs
    ``focal_loss``, ``averaging`` needs ``iou_thresh < 1``, ...) and the
    generator produces the input that takes it (``class_oob`` needs
    ``features.class_oob > 0``, ...). A suite that enables a branch and never
    takes it tests less than it claims; a test checks that none is left.

    It is what a suite must reach, not all that can happen: a NaN x, for
    one, makes darknet's IoU ignore x and exceed 1, so ``truth_thresh`` fires
    even at ``truth_thresh=1``. ``max_truncated`` assumes the heads of a
    sample share ``max`` (rows past the smallest ``max`` are read by the others).
    """
    features = CaseFeatures() if features is None else features
    flavor = flavor or config.flavor
    ab = flavor == "alexeyab"
    f32 = np.float32
    iou_loss = config.iou_loss if ab else "mse"
    thresh_pass = ab and f32(config.iou_thresh) < f32(1.0)
    planted = features.plant > 0
    shared = features.shared_cell > 0
    rules = {
        "ignore": planted and f32(config.ignore_thresh) < 1,
        "classmatch_blocked": ab and planted and f32(config.ignore_thresh) < 1 and features.plant_class_match < 1,
        "objectness_smooth": ab and bool(config.objectness_smooth),
        "truth_thresh": planted and f32(config.truth_thresh) < 1,
        "anchor_outside_mask": config.n < config.num,
        "iou_thresh_extra": thresh_pass and config.num > 1,
        "rewritten_bbox": shared,
        "class_shortcut": shared,
        "averaging": thresh_pass,
        "averaging_divides": thresh_pass and shared and config.classes > 1,
        f"iou_loss_{iou_loss}": True,
        "max_delta_clip": (ab and iou_loss != "mse" and config.max_delta != FLT_MAX and planted
                           and features.plant_wild > 0),
        # new_coords has no exp chain (an infinite logit stays finite through the logistic); with plain
        # IoU loss the generator's NaN/Inf never reached fix_nan_inf there (observed over the profile's
        # samples; GIoU/DIoU/CIoU do reach it), so it is not claimed
        "fix_nan_inf": ab and iou_loss != "mse" and features.nonfinite > 0
                       and not (config.new_coords and iou_loss == "iou"),
        "zero_x_stop": features.empty_image > 0 or features.mid_terminator > 0,
        "class_oob": ab and features.class_oob > 0,
        "max_truncated": features.over_max > 0 and over_max_possible(config, flavor),
        "obj_nonfinite": ab and features.nonfinite > 0,
        "focal": ab and bool(config.focal_loss),
        "label_smooth": ab and config.label_smooth_eps != 0 and not config.focal_loss,
    }
    return {name for name, on in rules.items() if on}


def forced_features(features: CaseFeatures, configs: Iterable[YoloConfig], flavor: str) -> list[str]:
    """The rare features a suite forces once each for these configs (those that can occur)."""
    configs = list(configs)
    names = []
    for name in FORCEABLE:
        if getattr(features, name) <= 0:
            continue
        if name == "class_oob" and flavor != "alexeyab":
            continue
        if name == "over_max" and not all(over_max_possible(c, flavor) for c in configs):
            continue
        names.append(name)
    return names
