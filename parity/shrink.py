"""Reducing a failing case to a small one that still fails: greedy, one valid case per step.

``shrink_case(case, still_fails, max_steps)`` tries reductions one at a time
and keeps each that ``still_fails`` accepts. It knows nothing of candidates
or references: the caller's predicate decides what "still fails" means (the
CLI requires the same failing term and kind of mismatch). Pure: no printing,
no files; the input case is never modified.

Every tried case is a valid [yolo] case (``check_layer_input`` accepts it,
so every reference does); a reduction that would not be is skipped without
spending a try. The reductions, repeated until none applies:

* images: keep one image, else drop images one at a time;
* truth rows, per image: drop chunks of rows, then single rows (darknet's row
  semantics: rows are read until the first ``x == 0`` and at most ``max``, so
  removing a row shifts the rest up and a zero row is appended at the end);
* anchors: drop one entry of ``mask`` and its channel block (``num`` and the
  anchors stay, so the best-anchor search over all anchors is unchanged);
* grid: crop W, then H, to a window (halves, three quarters, one cell less;
  at the start, end or middle). The stride ``net/W`` is kept, so predictions
  in cell units are unchanged: ``net_w' = net_w*W'/W`` when that is an
  integer, else the nearest integer with the anchor widths rescaled by the
  rounding. Truths move with the window, ``x' = (x*W - i0)/W'`` and
  ``w' = w*W/W'``; a truth whose centre leaves the window (or lands exactly
  on ``x' = 0``, which darknet would read as the end of the list) is dropped;
* classes: drop classes no used truth has (all unused at once, then halves,
  ...), remapping class ids, slicing each anchor block's class channels and
  ``counters_per_class``;
* the truth array: trailing all-zero rows cut (never below one row).

Each kept reduction adds one line to the returned step list.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Iterator, Sequence

import numpy as np

from .case import Case
from .cfg import dump_yolo_cfg
from .config import YoloConfig
from .errors import ParityError
from .layer_input import active_rows, check_layer_input

StillFails = Callable[[Case], bool]


class _Budget(Exception):
    """``max_steps`` tries spent."""


def shrink_case(case: Case, still_fails: StillFails, max_steps: int = 200) -> tuple[Case, list[str]]:
    """The smallest case reached from ``case`` by reductions that ``still_fails`` accepts.

    Args:
        case: a valid case; its output, delta and stats are not carried over
            (the returned case has none: they belong to the original input).
        still_fails: called on each tried case; True keeps the reduction.
            It is never called on ``case`` itself (the caller knows it fails).
        max_steps: the most tries (calls of ``still_fails``) to spend.

    Returns:
        (the reduced case, one line per kept reduction in order).
    """
    if max_steps < 0:
        raise ParityError(f"max_steps={max_steps}: must be >= 0")
    shrinker = _Shrinker(_plain(case), still_fails, max_steps)
    try:
        shrinker.run()
    except _Budget:
        pass
    return shrinker.current, shrinker.steps


def case_size(case: Case) -> dict[str, int]:
    """The dimensions a shrink reduces: batch, used truths, classes, anchors, grid, elements."""
    batch, _, h, w = case.input.shape
    used = _used_rows(case)
    return {"batch": int(batch), "truths": int(used.sum()), "classes": case.config.classes,
            "anchors": case.config.n, "h": int(h), "w": int(w), "elements": int(case.input.size)}


# --------------------------------------------------------------------------


@dataclasses.dataclass
class _Shrinker:
    current: Case
    still_fails: StillFails
    max_steps: int
    tries: int = 0
    steps: list[str] = dataclasses.field(default_factory=list)

    def attempt(self, make: Callable[[], Case | None], description: str) -> bool:
        """Build a reduced case; keep it if it is valid and still fails."""
        try:
            candidate = make()
            if candidate is None:
                return False
            check_layer_input(candidate.config, candidate.input, candidate.truth, candidate.flavor)
        except ParityError:
            return False
        if self.tries >= self.max_steps:
            raise _Budget
        self.tries += 1
        if not self.still_fails(candidate):
            return False
        self.current = candidate
        self.steps.append(description)
        return True

    def run(self) -> None:
        passes = (self.images, self.rows, self.anchors, lambda: self.grid("x"), lambda: self.grid("y"),
                  self.classes, self.trim_rows)
        while True:
            progress = False
            for step in passes:
                progress |= step()
            if not progress:
                return

    # ---- images

    def images(self) -> bool:
        batch = self.current.input.shape[0]
        if batch == 1:
            return False
        for b in range(batch):
            if self.attempt(lambda b=b: _select_images(self.current, [b]), f"kept image {b} of {batch}"):
                return True
        progress = False
        for b in reversed(range(self.current.input.shape[0])):
            size = self.current.input.shape[0]
            if size > 1 and self.attempt(
                    lambda b=b, size=size: _select_images(self.current, [k for k in range(size) if k != b]),
                    f"dropped image {b} of {size}"):
                progress = True
        return progress

    # ---- truth rows

    def rows(self) -> bool:
        progress = False
        for b in range(self.current.input.shape[0]):
            progress |= self._rows_of(b)
        return progress

    def _rows_of(self, b: int) -> bool:
        progress = False
        filled = _filled_rows(self.current, b)
        chunk = len(filled)
        while filled and chunk >= 1:
            removed = False
            for start in reversed(range(0, len(filled), chunk)):
                gone = filled[start:start + chunk]
                what = (f"dropped truth row {gone[0]} of image {b}" if len(gone) == 1 else
                        f"dropped truth rows {gone[0]}..{gone[-1]} of image {b}" if gone == list(
                            range(gone[0], gone[-1] + 1)) else
                        f"dropped truth rows {', '.join(map(str, gone))} of image {b}")
                if self.attempt(lambda gone=gone: _drop_rows(self.current, b, gone), what):
                    progress = removed = True
                    filled = _filled_rows(self.current, b)
                    break
            if not removed:
                chunk //= 2
            else:
                chunk = min(chunk, len(filled))
        return progress

    def trim_rows(self) -> bool:
        truth = self.current.truth
        nonzero = np.flatnonzero((truth != 0).any(axis=(0, 2)))
        keep = max(1, int(nonzero[-1]) + 1 if nonzero.size else 1)
        if keep >= truth.shape[1]:
            return False
        return self.attempt(lambda: _replace(self.current, truth=truth[:, :keep].copy()),
                            f"cut the truth array from {truth.shape[1]} to {keep} rows (trailing zero rows)")

    # ---- anchors

    def anchors(self) -> bool:
        progress = False
        a = self.current.config.n - 1
        while a >= 0 and self.current.config.n > 1:
            mask = self.current.config.mask
            if self.attempt(lambda a=a: _drop_anchor(self.current, a),
                            f"dropped anchor {a} of {len(mask)} (mask entry {mask[a]})"):
                progress = True
            a = min(a - 1, self.current.config.n - 1)
        return progress

    # ---- grid

    def grid(self, axis: str) -> bool:
        progress = False
        while True:
            size = self.current.input.shape[3 if axis == "x" else 2]
            if size <= 1:
                return progress
            for keep, start in _windows(size):
                name = "W" if axis == "x" else "H"
                what = (f"cropped the grid {name} {size} -> {keep} (cells {start}..{start + keep - 1}"
                        f" along {axis})")
                if self.attempt(lambda keep=keep, start=start: _crop(self.current, axis, start, keep), what):
                    progress = True
                    break
            else:
                return progress

    # ---- classes

    def classes(self) -> bool:
        C = self.current.config.classes
        used = sorted(set(_used_classes(self.current)))
        unused = [k for k in range(C) if k not in used]
        if not used:         # no truth needs a class, but a layer has at least one: class 0 stays
            unused = unused[1:]
            used = [0]
        progress = False
        chunk = len(unused)
        while unused and chunk >= 1:
            removed = False
            for start in range(0, len(unused), chunk):
                gone = set(unused[start:start + chunk])
                keep = [k for k in range(self.current.config.classes) if k not in gone]
                if len(keep) < 1:
                    continue
                what = f"reduced classes {self.current.config.classes} -> {len(keep)} (kept {_ranges(keep)})"
                if self.attempt(lambda keep=keep: _keep_classes(self.current, keep), what):
                    progress = removed = True
                    # ids were remapped: recompute what is unused in the new numbering
                    unused = [k for k in range(self.current.config.classes)
                              if k not in set(_used_classes(self.current))]
                    if not set(_used_classes(self.current)):
                        unused = unused[1:]
                    break
            if not removed:
                chunk //= 2
            else:
                chunk = min(chunk, len(unused))
        return progress


def _windows(size: int) -> Iterator[tuple[int, int]]:
    """(cells kept, first cell) to try, smallest windows first."""
    seen = set()
    for keep in sorted({max(1, size // 2), max(1, (3 * size) // 4), size - 1}):
        if not 1 <= keep < size:
            continue
        for start in (0, size - keep, (size - keep) // 2):
            if (keep, start) not in seen:
                seen.add((keep, start))
                yield keep, start


def _ranges(values: Sequence[int]) -> str:
    """[0, 1, 2, 5] -> '0-2, 5' (old class ids)."""
    out, run = [], [values[0]] if values else []
    for v in values[1:]:
        if v == run[-1] + 1:
            run.append(v)
        else:
            out.append(run)
            run = [v]
    if run:
        out.append(run)
    return ", ".join(f"{r[0]}-{r[-1]}" if len(r) > 2 else ", ".join(map(str, r)) for r in out)


# --------------------------------------------------------------------------
# Case transformations (each returns a new case; output/delta/stats dropped)


def _plain(case: Case) -> Case:
    """The case without results: shrinking changes input and truth, so they would be stale."""
    return Case(case.cfg, case.config, case.flavor, np.array(case.input, np.float32, copy=True),
                np.array(case.truth, np.float32, copy=True), None, None, {}, dict(case.meta), None)


def _replace(case: Case, *, config: YoloConfig | None = None, input: np.ndarray | None = None,
             truth: np.ndarray | None = None) -> Case:
    config = config or case.config
    x = case.input if input is None else input
    if config.batch != x.shape[0]:
        config = config.replace(batch=int(x.shape[0]))
    cfg = case.cfg if config == case.config and config.extra == case.config.extra else dump_yolo_cfg(config)
    return Case(cfg, config, case.flavor, np.ascontiguousarray(x, np.float32),
                np.ascontiguousarray(case.truth if truth is None else truth, np.float32), None, None, {},
                dict(case.meta), None)


def _select_images(case: Case, images: list[int]) -> Case:
    return _replace(case, input=case.input[images].copy(), truth=case.truth[images].copy())


def _filled_rows(case: Case, b: int) -> list[int]:
    """Rows of image ``b`` holding anything (active truths, terminators with data, rows past them)."""
    return [int(r) for r in np.flatnonzero((case.truth[b] != 0).any(axis=1))]


def _drop_rows(case: Case, b: int, rows: Sequence[int]) -> Case:
    truth = case.truth.copy()
    kept = np.delete(truth[b], list(rows), axis=0)
    truth[b] = np.concatenate([kept, np.zeros((len(rows), truth.shape[2]), np.float32)])
    return _replace(case, truth=truth)


def _drop_anchor(case: Case, a: int) -> Case:
    config = case.config
    E = 5 + config.classes
    mask = tuple(m for k, m in enumerate(config.mask) if k != a)
    channels = [c for c in range(config.channels) if c // E != a]
    return _replace(case, config=config.replace(mask=mask), input=case.input[:, channels].copy())


def _used_rows(case: Case) -> np.ndarray:
    """[batch, rows]: rows darknet reads whose class is in range (the rows it uses)."""
    truth = case.truth
    active = active_rows(truth, case.config.max_boxes)
    cls = truth[..., 4].astype(np.float64)
    whole = np.trunc(np.nan_to_num(cls))
    ok = np.isfinite(cls) & (whole >= 0) & (whole < case.config.classes)
    return active & ok


def _used_classes(case: Case) -> list[int]:
    used = _used_rows(case)
    return [int(np.trunc(v)) for v in case.truth[..., 4][used]]


def _keep_classes(case: Case, keep: Sequence[int]) -> Case:
    """Only classes ``keep`` (old ids, sorted): ids remapped, channels and counters sliced."""
    config = case.config
    C, E, C2 = config.classes, 5 + config.classes, len(keep)
    new_id = {old: new for new, old in enumerate(keep)}
    channels = [a * E + e for a in range(config.n) for e in [0, 1, 2, 3, 4] + [5 + k for k in keep]]
    truth = case.truth.copy()
    cls = truth[..., 4]
    filled = (truth != 0).any(axis=2)
    with np.errstate(invalid="ignore"):
        finite = np.isfinite(cls)
        whole = np.trunc(np.where(finite, cls, 0))
    for idx in zip(*np.nonzero(filled)):
        if not finite[idx]:
            continue
        old = int(whole[idx]) if abs(whole[idx]) < 2 ** 31 else None
        if old is None or old < 0:
            continue                                  # out of range below: stays so
        if old >= C:
            cls[idx] = np.float32(cls[idx] - C + C2)  # out of range above: same distance past the end
        elif old in new_id:
            cls[idx] = np.float32(new_id[old] + (cls[idx] - old))
        else:
            cls[idx] = 0.0                            # a row darknet does not use (after the end)
    changes: dict = {"classes": C2}
    if config.counters_per_class is not None:
        changes["counters_per_class"] = tuple(config.counters_per_class[k] for k in keep)
    return _replace(case, config=config.replace(**changes), input=case.input[:, channels].copy(), truth=truth)


def _crop(case: Case, axis: str, start: int, keep: int) -> Case:
    """A window of ``keep`` cells from ``start`` along ``axis`` ("x": W, "y": H), stride kept."""
    config = case.config
    x_axis = axis == "x"
    size = case.input.shape[3 if x_axis else 2]
    net = config.net_w if x_axis else config.net_h
    anchors = list(config.anchors)
    if (net * keep) % size == 0:
        new_net = net * keep // size
    else:
        new_net = max(1, round(net * keep / size))
        # anchor/net in cells is what darknet's box decoding uses: keep anchor*size/net constant
        factor = new_net * size / (net * keep)
        anchors = [v * factor if k % 2 == (0 if x_axis else 1) else v for k, v in enumerate(anchors)]
    changes = {"net_w" if x_axis else "net_h": int(new_net), "anchors": tuple(anchors)}
    window = slice(start, start + keep)
    x = case.input[:, :, :, window] if x_axis else case.input[:, :, window, :]
    col, span = (0, 2) if x_axis else (1, 3)
    truth = np.zeros_like(case.truth)
    for b in range(case.truth.shape[0]):
        rows = []
        for row in case.truth[b]:
            if row[0] == 0:                      # a terminator (or padding) stays what it is
                rows.append(row)
                continue
            new = row.astype(np.float64).copy()
            new[col] = (float(row[col]) * size - start) / keep
            new[span] = float(row[span]) * size / keep
            new = new.astype(np.float32)
            c = new[col]
            with np.errstate(invalid="ignore", over="ignore"):
                inside = np.isfinite(c) and 0 < c < 1 and int(np.float32(c) * np.float32(keep)) < keep
            if inside:
                rows.append(new)
        if rows:
            truth[b, :len(rows)] = np.stack(rows)
    return _replace(case, config=config.replace(**changes), input=np.ascontiguousarray(x), truth=truth)
