"""Explain darknet's reasoning at one slot (image, anchor, cell) of a case.

CASE is a format-v1 case file (.npz) or a case id: "PROFILE#K" (the K-th
case of the profile's sweep, as `run` numbers them), "PROFILE#S/headN"
(sample S, head N, as recorded files name them) or "FILE.cfg#K"; --seed
picks the sweep. --cell b,a,j,i names the slot: image b, anchor a (position
in mask), row j, column i.

Prints the predicted box, its IoU with every truth of the image (which one
is best, which classes are in range), the class-match test (AlexeyAB: the
largest class probability vs 0.25), the thresholds, the path darknet took,
why the decision is borderline if it is, the truths assigned at the slot
(best anchor, extra anchor through iou_thresh, truth_thresh) and the
slot's deltas from the reference (and from the recording, for a recorded
case).
"""
from __future__ import annotations

import argparse
import sys
from typing import Any

from ..errors import EXIT_OK, ParityError
from . import Command, add_reference_arguments

# Width of the output when it is not a terminal (a pipe, a file, a test's capture).
WIDTH = 160


def add_case_arguments(parser: argparse.ArgumentParser) -> None:
    """CASE, --seed and --profiles-file: how a case id is turned back into a case."""
    parser.add_argument("case", metavar="CASE",
                        help='a case file (.npz) or a case id: "PROFILE#K", "PROFILE#S/headN" or "FILE.cfg#K"')
    parser.add_argument("--seed", type=int, default=0, help="seed of the sweep a case id refers to (default 0)")
    parser.add_argument("--cases", type=int, metavar="N",
                        help="samples of the run the case id comes from (run --cases N; default: the profile's "
                             "own count, 4 per cfg)")
    parser.add_argument("--profiles-file", metavar="YAML", action="append", default=[],
                        help="extra profile file(s) merged over the shipped ones (for ids of their profiles)")


def case_label(case: Any, spec: str) -> str:
    from ..profiles import case_id

    cid = case_id(case)
    return spec if cid == spec or case.path else f"{spec} ({cid})"


def parse_cell(text: str) -> tuple[int, int, int, int]:
    """``b,a,j,i`` as four integers (ranges are checked against the case by ``parity.explain``)."""
    parts = [p.strip() for p in text.split(",")]
    try:
        values = [int(p) for p in parts]
    except ValueError:
        values = []
    if len(values) != 4:
        raise ParityError(f"--cell {text!r}: expected four integers b,a,j,i (image, anchor, row, column)")
    return values[0], values[1], values[2], values[3]


class Explain(Command):
    __doc__ = __doc__

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        add_case_arguments(parser)
        parser.add_argument("--cell", required=True, metavar="b,a,j,i",
                            help="the slot: image b, anchor a (position in mask), row j, column i")
        parser.add_argument("--all-truths", action="store_true",
                            help="list every truth of the image (default: all up to 20, else only "
                                 "those overlapping the prediction)")
        add_reference_arguments(parser)

    def run(self, args: argparse.Namespace) -> int:
        from rich.console import Console

        from ..cases import case_from_spec   # lazy: the CLI's --help stays light (no numpy/torch)
        from ..explain import explain_slot

        case = case_from_spec(args.case, args.seed, args.profiles_file, args.cases)
        view = explain_slot(case, parse_cell(args.cell), reference=args.reference, darknet_lib=args.darknet_lib,
                            darknet_include=args.darknet_include, all_truths=args.all_truths)
        console = Console(soft_wrap=True, highlight=False, width=None if sys.stdout.isatty() else WIDTH)
        for part in render(view, case_label(case, args.case)):
            console.print(part)
        return EXIT_OK


def render(view: Any, label: str) -> list[Any]:
    """rich renderables for a ``parity.explain.SlotExplanation``."""
    from rich.text import Text

    case, (b, a, j, i) = view.case, view.slot
    cfg = case.config
    B, _, H, W = case.input.shape
    anchor = cfg.mask[a]
    px, py, pw, ph = view.pred
    out: list[Any] = [
        Text(f"case {label}: {case.flavor}, input [{B}, {cfg.channels}, {H}, {W}], classes {cfg.classes}, "
             f"n {cfg.n}", style="bold"),
        Text(f"slot: image b={b}, anchor a={a} (mask entry {anchor}: anchor "
             f"{_g(cfg.anchors[2 * anchor])}x{_g(cfg.anchors[2 * anchor + 1])} px of net "
             f"{cfg.net_w}x{cfg.net_h}), cell j={j}, i={i}; role: {view.role}"),
        Text(f"predicted box: x={_g(px)}, y={_g(py)}, w={_g(pw)}, h={_g(ph)} "
             f"(relative to the network input); objectness {_g(view.objectness)}"),
        _iou_table(view),
        _class_match(view),
        _thresholds(view),
        Text("path darknet took:", style="bold"),
    ]
    out.extend(Text(f"  {k}. {step}") for k, step in enumerate(view.path, 1))
    out.append(Text("borderline: " + ("; ".join(view.borderline) if view.borderline else
                                      "no (no deciding quantity within tolerance of its threshold)")))
    out.append(_assignments_table(view))
    out.append(_delta_table(view))
    return out


def _iou_table(view: Any) -> Any:
    from rich.table import Table
    from rich.text import Text

    case, b = view.case, view.slot[0]
    cfg = case.config
    if not view.truths_read:
        return Text(f"IoU with the truths of image {b}: no truth is read for this image (best IoU 0)")
    table = Table(title=f"IoU of the predicted box with each truth of image {b}: {view.truths_read} row(s) read "
                        f"(up to the first x == 0, at most max={cfg.max_boxes})"
                        + (f"; {view.truths_unread} more row(s) are not read" if view.truths_unread > 0 else ""),
                  title_justify="left")
    for col in ("truth", "x", "y", "w", "h", "class", "class in range", "IoU", "best"):
        table.add_column(col, justify="left" if col in ("class in range", "best") else "right", no_wrap=True)
    for row in view.truths:
        cls = row.class_value
        note = "yes" if row.class_in_range else ("no (skipped)" if case.flavor == "alexeyab" else "no")
        table.add_row(str(row.index), *(_g(v) for v in row.box),
                      str(int(cls)) if cls == cls and abs(cls) != float("inf") and cls == int(cls) else _g(cls),
                      note, _g(row.iou), "<- best" if row.best else "")
    if view.truths_hidden:
        table.caption = (f"{view.truths_hidden} other truth(s) read have IoU 0 with the prediction "
                         "(--all-truths lists them)")
        table.caption_justify = "left"
    return table


def _class_match(view: Any) -> Any:
    from rich.text import Text

    from ..roles import CLASS_MATCH_THRESH

    if view.max_class_prob is None:
        return Text("class-match test: none (pjreddie's darknet ignores on IoU alone)")
    return Text(f"class-match test (alexeyab): largest class probability {_g(view.max_class_prob)} "
                f"{'>' if view.class_match else '<='} {CLASS_MATCH_THRESH}: "
                + ("passes (the ignore test may ignore this slot)" if view.class_match else
                   "fails (the slot is not ignored whatever its IoU)"))


def _thresholds(view: Any) -> Any:
    from rich.table import Table

    cfg = view.case.config
    table = Table(title="thresholds", title_justify="left")
    table.add_column("option")
    table.add_column("value", justify="right")
    table.add_column("compared with")
    table.add_row("ignore_thresh", _g(cfg.ignore_thresh), f"best IoU {_g(view.best_iou)}")
    table.add_row("truth_thresh", _g(cfg.truth_thresh), f"best IoU {_g(view.best_iou)}")
    if view.case.flavor == "alexeyab":
        table.add_row("iou_thresh", _g(cfg.iou_thresh),
                      f"{cfg.iou_thresh_kind} of a truth's shape with each anchor of the mask"
                      + (" (off: 1 or more)" if cfg.iou_thresh >= 1 else ""))
        table.add_row("iou_thresh_kind", cfg.iou_thresh_kind, "")
    else:
        table.add_row("iou_thresh", "n/a", "pjreddie assigns the best anchor only")
    return table


def _assignments_table(view: Any) -> Any:
    from rich.table import Table
    from rich.text import Text

    cfg = view.case.config
    if not view.assigned:
        return Text("truths assigned at this slot: none (no truth's box or class deltas are written here; "
                    "objectness only, as a negative or ignored)")
    table = Table(title="truths assigned at this slot", title_justify="left")
    for col in ("truth", "through", "anchor", "anchor shape (px)", "shape IoU"):
        table.add_column(col, justify="left" if col == "through" else "right")
    how = {"best": "best anchor over all anchors",
           "extra": f"extra anchor (iou_thresh: {cfg.iou_thresh_kind} > {_g(cfg.iou_thresh)})",
           "truth_thresh": f"truth_thresh (best IoU > {_g(cfg.truth_thresh)})"}
    for row in view.assigned:
        iou = "" if row.shape_iou is None else f"IoU {_g(row.shape_iou)}"
        if row.through == "extra" and cfg.iou_thresh_kind != "iou" and row.thresh_iou is not None:
            iou += f", {cfg.iou_thresh_kind} {_g(row.thresh_iou)}"
        table.add_row(str(row.truth), how[row.through], str(row.anchor),
                      f"{_g(row.anchor_shape[0])}x{_g(row.anchor_shape[1])}", iou)
    return table


def _delta_table(view: Any) -> Any:
    from rich.table import Table

    recorded = any(r.recorded is not None for r in view.deltas)
    table = Table(title=f"deltas at this slot (darknet's sign: target - prediction; reference: "
                        f"{view.reference_name})", title_justify="left")
    table.add_column("term")
    table.add_column("output", justify="right")
    table.add_column("delta", justify="right")
    if recorded:
        table.add_column("recorded delta", justify="right")
    for r in view.deltas:
        table.add_row(r.term, _g(r.output), _g(r.delta), *([_g(r.recorded)] if recorded else []))
    if view.hidden_classes:
        table.caption = f"{view.hidden_classes} other class(es): delta 0"
    return table


def _g(value: Any) -> str:
    return f"{float(value):.6g}"
