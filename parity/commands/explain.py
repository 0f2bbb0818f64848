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
import re
import sys
from pathlib import Path
from typing import Any, Sequence

from ..cases import case_from_spec
from ..errors import EXIT_OK, ParityError
from . import Command, add_reference_arguments

# Width of the output when it is not a terminal (a pipe, a file, a test's capture).
WIDTH = 160
# Truths listed in full up to this many; beyond, only those overlapping the prediction.
MAX_TRUTH_ROWS = 20


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


def parse_cell(text: str, shape: tuple[int, ...], n: int) -> tuple[int, int, int, int]:
    """``b,a,j,i`` checked against the case's batch, anchors and grid."""
    parts = [p.strip() for p in text.split(",")]
    try:
        values = [int(p) for p in parts]
    except ValueError:
        values = []
    if len(values) != 4 or len(parts) != 4:
        raise ParityError(f"--cell {text!r}: expected four integers b,a,j,i (image, anchor, row, column)")
    batch, _, h, w = shape
    for value, name, size, what in zip(values, "baji", (batch, n, h, w),
                                       ("image", "anchor (position in mask)", "row", "column")):
        if not 0 <= value < size:
            raise ParityError(f"--cell {text!r}: {what} index {name}={value} is outside the valid range "
                              f"0..{size - 1} (the case has batch {batch}, n {n}, h {h}, w {w})")
    return values[0], values[1], values[2], values[3]


class Explain(Command):
    __doc__ = __doc__

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        add_case_arguments(parser)
        parser.add_argument("--cell", required=True, metavar="b,a,j,i",
                            help="the slot: image b, anchor a (position in mask), row j, column i")
        parser.add_argument("--all-truths", action="store_true",
                            help=f"list every truth of the image (default: all up to {MAX_TRUTH_ROWS}, else only "
                                 "those overlapping the prediction)")
        add_reference_arguments(parser)

    def run(self, args: argparse.Namespace) -> int:
        from rich.console import Console

        case = case_from_spec(args.case, args.seed, args.profiles_file, args.cases)
        slot = parse_cell(args.cell, case.input.shape, case.config.n)
        view = _SlotView(case, slot, args)
        console = Console(soft_wrap=True, highlight=False, width=None if sys.stdout.isatty() else WIDTH)
        for part in view.render(case_label(case, args.case)):
            console.print(part)
        return EXIT_OK


class _SlotView:
    """The numbers of one slot, gathered once, rendered as rich renderables."""

    def __init__(self, case: Any, slot: tuple[int, int, int, int], args: argparse.Namespace) -> None:
        from ..facts import slot_facts, slot_path
        from ..tolerance import load_tolerances
        from ..reference import run_reference

        self.case, self.slot = case, slot
        self.ours = run_reference(case.config, case.input, case.truth, flavor=case.flavor, decisions=True)
        rule = load_tolerances(None)
        self.facts = slot_facts(case, self.ours, rule.default.atol, rule.default.rtol)
        self.path = slot_path(self.facts, *slot)
        self.reference = args.reference
        self.all_truths = bool(getattr(args, "all_truths", False))
        if args.reference == "c":
            self.delta = self.ours.delta
            self.reference_name = f"C reference ({case.flavor})"
        else:
            res = run_reference(case.config, case.input, case.truth, flavor=case.flavor, backend=args.reference,
                                darknet_lib=args.darknet_lib, darknet_include=args.darknet_include)
            self.delta = res.delta
            self.reference_name = f"libdarknet ({args.darknet_lib or 'Debian default'})"

    # ---- rendering

    def render(self, label: str) -> list[Any]:
        from rich.text import Text

        case, (b, a, j, i) = self.case, self.slot
        cfg = case.config
        B, _, H, W = case.input.shape
        anchor = cfg.mask[a]
        out: list[Any] = [
            Text(f"case {label}: {case.flavor}, input [{B}, {cfg.channels}, {H}, {W}], classes {cfg.classes}, "
                 f"n {cfg.n}", style="bold"),
            Text(f"slot: image b={b}, anchor a={a} (mask entry {anchor}: anchor "
                 f"{_g(cfg.anchors[2 * anchor])}x{_g(cfg.anchors[2 * anchor + 1])} px of net "
                 f"{cfg.net_w}x{cfg.net_h}), cell j={j}, i={i}; role: {self.path['role']}"),
        ]
        px, py, pw, ph = self.path["pred"]
        obj = float(self.ours.output[b, a * (5 + cfg.classes) + 4, j, i])
        out.append(Text(f"predicted box: x={_g(px)}, y={_g(py)}, w={_g(pw)}, h={_g(ph)} "
                        f"(relative to the network input); objectness {_g(obj)}"))
        out.append(self._iou_table())
        out.append(self._class_match())
        out.append(self._thresholds())
        out.append(Text("path darknet took:", style="bold"))
        out.extend(Text(f"  {k}. {step}") for k, step in enumerate(self.path["path"], 1))
        reasons = self.path["borderline"]
        out.append(Text("borderline: " + ("; ".join(reasons) if reasons else
                                          "no (no deciding quantity within tolerance of its threshold)")))
        out.append(self._assignments_table())
        out.append(self._delta_table())
        return out

    def _iou_table(self) -> Any:
        import numpy as np
        import torch
        from rich.table import Table

        from ..layer_input import active_rows
        from ..torch_box import Boxes, box_iou

        case, b = self.case, self.slot[0]
        cfg = case.config
        truth = case.truth[b]
        read = active_rows(case.truth, cfg.max_boxes)[b]
        rows = np.flatnonzero(read)
        filled = int((truth != 0).any(axis=1).sum())
        best_t = self.path["best_truth"]
        if not rows.size:
            from rich.text import Text

            return Text(f"IoU with the truths of image {b}: no truth is read for this image (best IoU 0)")
        pred = Boxes(*(torch.tensor([v], dtype=torch.float32) for v in self.path["pred"]))
        tb = Boxes(*(torch.from_numpy(np.ascontiguousarray(truth[rows, k], np.float32)) for k in range(4)))
        iou = box_iou(pred, tb, pjreddie=case.flavor == "pjreddie").numpy()
        show = np.ones(rows.size, bool)
        if rows.size > MAX_TRUTH_ROWS and not self.all_truths:
            show = (iou != 0) | (rows == (-1 if best_t is None else best_t))
        unread = filled - rows.size
        table = Table(title=f"IoU of the predicted box with each truth of image {b}: {rows.size} row(s) read "
                            f"(up to the first x == 0, at most max={cfg.max_boxes})"
                            + (f"; {unread} more row(s) are not read" if unread > 0 else ""),
                      title_justify="left")
        for col in ("truth", "x", "y", "w", "h", "class", "class in range", "IoU", "best"):
            table.add_column(col, justify="left" if col in ("class in range", "best") else "right", no_wrap=True)
        for k, t in enumerate(rows):
            if not show[k]:
                continue
            cls = float(truth[t, 4])
            in_range = bool(np.isfinite(cls) and 0 <= np.trunc(cls) < cfg.classes)
            note = "yes" if in_range else ("no (skipped)" if case.flavor == "alexeyab" else "no")
            mark = "<- best" if best_t is not None and int(t) == best_t else ""
            table.add_row(str(t), *(_g(truth[t, c]) for c in range(4)),
                          str(int(cls)) if np.isfinite(cls) and cls == int(cls) else _g(cls), note,
                          _g(iou[k]), mark)
        hidden = int((~show).sum())
        if hidden:
            table.caption = f"{hidden} other truth(s) read have IoU 0 with the prediction (--all-truths lists them)"
            table.caption_justify = "left"
        return table

    def _class_match(self) -> Any:
        from rich.text import Text

        from ..facts import CLASS_MATCH_THRESH

        if self.case.flavor != "alexeyab":
            return Text("class-match test: none (pjreddie's darknet ignores on IoU alone)")
        prob = self.path["max_class_prob"]
        passes = prob > CLASS_MATCH_THRESH
        return Text(f"class-match test (alexeyab): largest class probability {_g(prob)} "
                    f"{'>' if passes else '<='} {CLASS_MATCH_THRESH}: "
                    + ("passes (the ignore test may ignore this slot)" if passes else
                       "fails (the slot is not ignored whatever its IoU)"))

    def _thresholds(self) -> Any:
        from rich.table import Table

        cfg = self.case.config
        table = Table(title="thresholds", title_justify="left")
        table.add_column("option")
        table.add_column("value", justify="right")
        table.add_column("compared with")
        table.add_row("ignore_thresh", _g(cfg.ignore_thresh), f"best IoU {_g(self.path['best_iou'])}")
        table.add_row("truth_thresh", _g(cfg.truth_thresh), f"best IoU {_g(self.path['best_iou'])}")
        if self.case.flavor == "alexeyab":
            table.add_row("iou_thresh", _g(cfg.iou_thresh),
                          f"{cfg.iou_thresh_kind} of a truth's shape with each anchor of the mask"
                          + (" (off: 1 or more)" if cfg.iou_thresh >= 1 else ""))
            table.add_row("iou_thresh_kind", cfg.iou_thresh_kind, "")
        else:
            table.add_row("iou_thresh", "n/a", "pjreddie assigns the best anchor only")
        return table

    def _assignments_table(self) -> Any:
        import numpy as np
        from rich.table import Table

        from ..roles import ROLE_TRUTH_THRESH

        case, (b, a, j, i) = self.case, self.slot
        asg = self.facts.assignments
        hits = asg.at(b, a, j, i)
        table = Table(title="truths assigned at this slot", title_justify="left")
        for col in ("truth", "through", "anchor", "anchor shape (px)", "shape IoU"):
            table.add_column(col, justify="left" if col == "through" else "right")
        anchor = case.config.mask[a]
        for k in hits:
            t = int(asg.t[k])
            extra = bool(asg.extra[k])
            how = f"extra anchor (iou_thresh: {case.config.iou_thresh_kind} > {_g(case.config.iou_thresh)})" \
                if extra else "best anchor over all anchors"
            table.add_row(str(t), how, str(int(asg.anchor[k])), self._anchor_shape(int(asg.anchor[k])),
                          self._shape_iou(t, int(asg.anchor[k]), extra))
        if int(self.facts.roles[b, a, j, i]) & ROLE_TRUTH_THRESH:
            t = self.path["best_truth"]
            table.add_row(str(t), f"truth_thresh (best IoU > {_g(case.config.truth_thresh)})", str(anchor),
                          self._anchor_shape(anchor), self._shape_iou(t, anchor, False) if t is not None else "")
        if table.row_count == 0:
            from rich.text import Text

            return Text("truths assigned at this slot: none (no truth's box or class deltas are written here; "
                        "objectness only, as a negative or ignored)")
        return table

    def _anchor_shape(self, anchor: int) -> str:
        cfg = self.case.config
        return f"{_g(cfg.anchors[2 * anchor])}x{_g(cfg.anchors[2 * anchor + 1])}"

    def _shape_iou(self, t: int, anchor: int, extra: bool) -> str:
        """IoU of the truth's (0, 0, w, h) with the anchor's shape, as the best-anchor search computes it."""
        import torch

        from ..torch_box import Boxes, box_iou, box_iou_kind

        cfg, b = self.case.config, self.slot[0]
        row = self.case.truth[b, t]
        zero = torch.zeros(1)
        tb = Boxes(zero, zero, torch.tensor([float(row[2])]), torch.tensor([float(row[3])]))
        ab = Boxes(zero, zero, torch.tensor([cfg.anchors[2 * anchor]]) / torch.tensor(float(cfg.net_w)),
                   torch.tensor([cfg.anchors[2 * anchor + 1]]) / torch.tensor(float(cfg.net_h)))
        iou = float(box_iou(ab, tb, pjreddie=self.case.flavor == "pjreddie")[0])
        text = f"IoU {_g(iou)}"
        if extra and cfg.iou_thresh_kind != "iou":
            text += f", {cfg.iou_thresh_kind} {_g(float(box_iou_kind(ab, tb, cfg.iou_thresh_kind)[0]))}"
        return text

    def _delta_table(self) -> Any:
        from rich.table import Table

        case, (b, a, j, i) = self.case, self.slot
        cfg = case.config
        E = 5 + cfg.classes
        base = a * E
        recorded = case.delta
        table = Table(title=f"deltas at this slot (darknet's sign: target - prediction; reference: "
                            f"{self.reference_name})", title_justify="left")
        table.add_column("term")
        table.add_column("output", justify="right")
        table.add_column("delta", justify="right")
        if recorded is not None:
            table.add_column("recorded delta", justify="right")
        names = ["x", "y", "w", "h", "obj"] + [f"class {k}" for k in range(cfg.classes)]
        shown_classes = [k for k in range(cfg.classes) if self.delta[b, base + 5 + k, j, i] != 0
                         or (recorded is not None and recorded[b, base + 5 + k, j, i] != 0)]
        if cfg.classes <= 10:
            shown_classes = list(range(cfg.classes))
        entries = list(range(5)) + [5 + k for k in shown_classes]
        for e in entries:
            row = [names[e], _g(self.ours.output[b, base + e, j, i]), _g(self.delta[b, base + e, j, i])]
            if recorded is not None:
                row.append(_g(recorded[b, base + e, j, i]))
            table.add_row(*row)
        hidden = cfg.classes - len(shown_classes)
        if hidden:
            table.caption = f"{hidden} other class(es): delta 0"
        return table


def _g(value: Any) -> str:
    return f"{float(value):.6g}"
