"""darknet's reasoning at one slot (image, anchor, cell) of a case, as data.

``explain_slot`` gathers what a user needs to understand one decision: the
predicted box, its IoU with every truth of the image, the class-match test,
the thresholds, the path darknet took and why it is borderline if it is,
the truths assigned at the slot and the slot's deltas. Every number comes
from the C reference: its exported decisions, and its own overlap function
(``parity.backends.c_reference.box_overlap``) for the per-truth IoUs. The
``explain`` command only renders a ``SlotExplanation``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .backends.c_reference import box_overlap
from .case import Case
from .errors import ParityError
from .facts import slot_facts, slot_path
from .layer_input import active_rows
from .reference import run_reference
from .roles import CLASS_MATCH_THRESH, ROLE_TRUTH_THRESH
from .tolerance import load_tolerances

# Truths listed in full up to this many; beyond, only those overlapping the prediction.
MAX_TRUTH_ROWS = 20


@dataclass
class TruthRow:
    """One truth of the slot's image, with its IoU against the slot's predicted box."""

    index: int
    box: tuple[float, float, float, float]
    class_value: float
    class_in_range: bool
    iou: float
    best: bool


@dataclass
class AssignedTruth:
    """A truth whose box and class deltas are written at the slot, and through which rule."""

    truth: int
    through: str                 # "best", "extra" (iou_thresh) or "truth_thresh"
    anchor: int
    anchor_shape: tuple[float, float]
    shape_iou: float | None      # the IoU that chose the anchor (truth shape vs anchor shape)
    thresh_iou: float | None     # the iou_thresh_kind value compared with iou_thresh (extras)


@dataclass
class DeltaRow:
    term: str
    output: float
    delta: float
    recorded: float | None


@dataclass
class SlotExplanation:
    """Everything ``explain`` shows about one slot."""

    case: Case
    slot: tuple[int, int, int, int]
    role: str
    pred: tuple[float, float, float, float]
    objectness: float
    truths: list[TruthRow]
    truths_read: int
    truths_unread: int          # rows that hold a box but darknet does not read
    truths_hidden: int          # read rows with IoU 0 left out of ``truths`` (see ``all_truths``)
    best_iou: float
    best_truth: int | None
    max_class_prob: float | None   # AlexeyAB's class-match quantity (None for pjreddie)
    class_match: bool | None
    path: list[str]
    borderline: list[str]
    assigned: list[AssignedTruth]
    deltas: list[DeltaRow]
    hidden_classes: int
    reference_name: str
    thresholds: dict[str, float | str] = field(default_factory=dict)


def check_cell(cell: tuple[int, int, int, int], case: Case) -> tuple[int, int, int, int]:
    """``cell`` (b, a, j, i) checked against the case's batch, anchors and grid."""
    batch, _, h, w = case.input.shape
    n = case.config.n
    for value, name, size, what in zip(cell, "baji", (batch, n, h, w),
                                       ("image", "anchor (position in mask)", "row", "column")):
        if not 0 <= value < size:
            raise ParityError(f"--cell {','.join(map(str, cell))}: {what} index {name}={value} is outside the "
                              f"valid range 0..{size - 1} (the case has batch {batch}, n {n}, h {h}, w {w})")
    return cell


def explain_slot(case: Case, cell: tuple[int, int, int, int], *, reference: str = "c",
                 darknet_lib: str | None = None, darknet_include: str | None = None,
                 all_truths: bool = False) -> SlotExplanation:
    """darknet's reasoning at slot ``cell`` = (image b, anchor a in mask, row j, column i) of ``case``.

    ``reference`` "libdarknet" shows that library's deltas beside the
    reasoning (which always comes from the C reference's decisions).
    """
    b, a, j, i = check_cell(cell, case)
    cfg = case.config
    ours = run_reference(case.config, case.input, case.truth, flavor=case.flavor, decisions=True)
    rule = load_tolerances(None)
    facts = slot_facts(case, ours, rule.default.atol, rule.default.rtol)
    path = slot_path(facts, b, a, j, i)
    if reference == "c":
        delta, reference_name = ours.delta, f"C reference ({case.flavor})"
    else:
        delta = run_reference(case.config, case.input, case.truth, flavor=case.flavor, backend=reference,
                              darknet_lib=darknet_lib, darknet_include=darknet_include).delta
        reference_name = f"libdarknet ({darknet_lib or 'Debian default'})"
    pred = tuple(float(v) for v in ours.decisions.pred_box[b, a, j, i])
    truths, read, unread, hidden = _truth_rows(case, b, pred, path["best_truth"], all_truths)
    E = 5 + cfg.classes
    ab = case.flavor == "alexeyab"
    prob = path["max_class_prob"]
    deltas, hidden_classes = _delta_rows(case, ours.output, delta, b, a, j, i)
    return SlotExplanation(
        case, (b, a, j, i), path["role"], pred, float(ours.output[b, a * E + 4, j, i]), truths, read, unread,
        hidden, path["best_iou"], path["best_truth"], prob if ab else None,
        (prob > CLASS_MATCH_THRESH) if ab else None, path["path"], path["borderline"],
        _assigned(case, facts, ours.decisions, path, b, a, j, i), deltas, hidden_classes, reference_name,
        _thresholds(case))


def _truth_rows(case: Case, b: int, pred: tuple[float, ...], best_t: int | None,
                all_truths: bool) -> tuple[list[TruthRow], int, int, int]:
    cfg = case.config
    truth = case.truth[b]
    rows = np.flatnonzero(active_rows(case.truth, cfg.max_boxes)[b])
    filled = int((truth != 0).any(axis=1).sum())
    if not rows.size:
        return [], 0, filled, 0
    iou = box_overlap(pred, truth[rows, :4], "iou", pjreddie=case.flavor == "pjreddie")
    show = np.ones(rows.size, bool)
    if rows.size > MAX_TRUTH_ROWS and not all_truths:
        show = (iou != 0) | (rows == (-1 if best_t is None else best_t))
    out = []
    for k, t in enumerate(rows):
        if not show[k]:
            continue
        cls = float(truth[t, 4])
        out.append(TruthRow(int(t), tuple(float(v) for v in truth[t, :4]), cls,
                            bool(np.isfinite(cls) and 0 <= np.trunc(cls) < cfg.classes), float(iou[k]),
                            best_t is not None and int(t) == best_t))
    return out, int(rows.size), filled - int(rows.size), int((~show).sum())


def _assigned(case: Case, facts, decisions, path: dict, b: int, a: int, j: int, i: int) -> list[AssignedTruth]:
    cfg = case.config
    asg = facts.assignments
    out = []

    def shapes(t: int, anchor: int) -> tuple[float | None, float | None]:
        if decisions.anchor_iou is None or t >= decisions.anchor_iou.shape[1]:
            return None, None
        thresh = decisions.anchor_thresh_iou
        return (float(decisions.anchor_iou[b, t, anchor]),
                float(thresh[b, t, anchor]) if thresh is not None and case.flavor == "alexeyab" else None)

    for k in asg.at(b, a, j, i):
        t, anchor = int(asg.t[k]), int(asg.anchor[k])
        out.append(AssignedTruth(t, "extra" if bool(asg.extra[k]) else "best", anchor,
                                 (float(cfg.anchors[2 * anchor]), float(cfg.anchors[2 * anchor + 1])),
                                 *shapes(t, anchor)))
    if int(facts.roles[b, a, j, i]) & ROLE_TRUTH_THRESH and path["best_truth"] is not None:
        anchor = cfg.mask[a]
        out.append(AssignedTruth(path["best_truth"], "truth_thresh", anchor,
                                 (float(cfg.anchors[2 * anchor]), float(cfg.anchors[2 * anchor + 1])),
                                 *shapes(path["best_truth"], anchor)))
    return out


def _delta_rows(case: Case, output: np.ndarray, delta: np.ndarray, b: int, a: int, j: int,
                i: int) -> tuple[list[DeltaRow], int]:
    cfg = case.config
    base = a * (5 + cfg.classes)
    recorded = case.delta
    names = ["x", "y", "w", "h", "obj"] + [f"class {k}" for k in range(cfg.classes)]
    shown = [k for k in range(cfg.classes) if delta[b, base + 5 + k, j, i] != 0
             or (recorded is not None and recorded[b, base + 5 + k, j, i] != 0)]
    if cfg.classes <= 10:
        shown = list(range(cfg.classes))
    rows = [DeltaRow(names[e], float(output[b, base + e, j, i]), float(delta[b, base + e, j, i]),
                     None if recorded is None else float(recorded[b, base + e, j, i]))
            for e in list(range(5)) + [5 + k for k in shown]]
    return rows, cfg.classes - len(shown)


def _thresholds(case: Case) -> dict[str, float | str]:
    cfg = case.config
    out: dict[str, float | str] = {"ignore_thresh": cfg.ignore_thresh, "truth_thresh": cfg.truth_thresh}
    if case.flavor == "alexeyab":
        out.update(iou_thresh=cfg.iou_thresh, iou_thresh_kind=cfg.iou_thresh_kind)
    return out
