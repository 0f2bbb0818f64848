"""The catalogue: every named way a port departs from darknet's [yolo] training pass.

Each ``Deviation`` names the ``Variant`` switches that make it executable
(``switch``; None: catalogued, not yet executable), its fitted parameters and
how they are fitted, one sentence on what a port does, what darknet does
instead (naming the function of AlexeyAB's ``src/yolo_layer.c`` or
``src/box.c``) and the fix, with a short PyTorch snippet where one helps.
Pure data (no torch): the search and the reports read it.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from .variant import CHOICES, Variant

FAMILIES = ("reduction", "box_gradient", "xy", "objectness", "ignore", "assignment", "slots_written_twice",
            "averaging", "classes", "truth_reading", "non_finite")


@dataclass(frozen=True)
class Deviation:
    """One catalogue entry."""

    id: str
    family: str
    port_does: str
    darknet_does: str
    darknet_function: str
    fix: str
    switch: dict[str, Any] | None = None       # Variant fields set by this deviation (None: not yet executable)
    params: dict[str, str] = field(default_factory=dict)   # fitted parameter -> how it is fitted
    snippet: str = ""
    terms: tuple[str, ...] = ()                # the terms (x, y, w, h, obj, cls) it can change

    @property
    def executable(self) -> bool:
        return self.switch is not None

    def variant(self, **params: Any) -> Variant:
        """darknet's semantics with this one deviation (``params`` override fitted fields)."""
        if self.switch is None:
            raise ValueError(f"deviation {self.id!r} is catalogued but not yet executable")
        return Variant(**{**self.switch, **params})


BOX, ALL = ("x", "y", "w", "h"), ("x", "y", "w", "h", "obj", "cls")
_TERM_ROWS = {"box": BOX, "obj": ("obj",), "cls": ("cls",)}


def _reduction(term: str, quantity: str, what: str) -> Deviation:
    field_ = {"box": "reduce_box", "obj": "reduce_obj", "cls": "reduce_cls"}[term]
    return Deviation(
        f"{term}_mean_over_{quantity}", "reduction",
        f"sums the {term} term and divides by {what} (a mean), so every {term} gradient is that much smaller",
        f"adds every {term} delta into one sum (the cost is the squared magnitude of the delta); nothing is divided",
        "forward_yolo_layer (src/yolo_layer.c)",
        f"sum the {term} term over its elements instead of taking the mean (reduction='sum'), "
        f"or multiply it by {what} to undo the mean",
        {field_: quantity, **({"heads": 3} if quantity == "heads" else {})},
        terms=_TERM_ROWS[term], params={f"weight_{term}": "least squares of the candidate's over the variant's term, "
                                              "then snapped to a plain constant (0.05, 0.5, 1, 2, ...)"},
        snippet=f"loss_{term} = loss_fn(pred, target, reduction='sum')  # not 'mean'")


CATALOGUE: tuple[Deviation, ...] = (
    # ---- reduction and weights per term
    *(_reduction(t, q, w) for t in ("box", "obj", "cls") for q, w in (
        ("batch", "the batch size"), ("slots", "b*n*h*w slots"), ("positives", "the number of truth-anchor "
                                                                               "pairs written"),
        ("heads", "the number of heads"))),
    _reduction("cls", "positives_classes", "positives x classes"),
    *(_reduction(t, "positive_slots", "the number of distinct slots a truth writes (a mean over a masked "
                                      "target tensor)") for t in ("box", "obj", "cls")),
    _reduction("cls", "positive_slots_classes", "the written slots x classes"),
    Deviation("term_weight", "reduction", "multiplies a term by its own constant (a hyperparameter such as "
              "box=0.05, obj=1.0, cls=0.5)",
              "weights terms only by the cfg's iou_normalizer, obj_normalizer and cls_normalizer",
              "delta_yolo_box, forward_yolo_layer (src/yolo_layer.c)",
              "drop the extra weight, or move it into the cfg's normalizer for that term",
              {"weight_box": 0.5}, {"weight_box": "fitted per term, snapped to a plain constant",
                                    "weight_obj": "as weight_box", "weight_cls": "as weight_box"}),
    Deviation("sign_flipped", "reduction",
              "returns the gradient where darknet's delta is expected (or the reverse): every term has the "
              "opposite sign",
              "writes delta = -(d loss / d input): target minus prediction, the direction that lowers the loss",
              "forward_yolo_layer (src/yolo_layer.c)",
              "negate the result, or declare what it is (--convention grad / delta, convention= in check)",
              {"weight_box": -1.0, "weight_obj": -1.0, "weight_cls": -1.0}, {},
              "return -grad  # darknet's delta"),
    # ---- box gradient
    Deviation("box_grad_exact", "box_gradient",
              "differentiates its IoU-kind loss exactly with respect to x, y, w, h, so w and h come out at half "
              "darknet's value (and CIoU/DIoU/GIoU differ where darknet's derivative simplifies)",
              "uses its own derivative dx_box_iou, whose w and h partials are twice the exact ones, then "
              "multiplies w, h by exp(tw), exp(th)",
              "dx_box_iou (src/box.c), delta_yolo_box (src/yolo_layer.c)",
              "use darknet's gradient: parity.DarknetYoloLoss, or a custom autograd.Function whose backward "
              "returns dx_box_iou's partials (w, h doubled)",
              {"box_grad": "exact"}, {"ciou_alpha": "decision: 'differentiated' or 'detached'"},
              "from parity.torch import DarknetYoloLoss\n"
              "loss = DarknetYoloLoss('yolov4.cfg')(outputs, targets)  # backward leaves -delta in each head"),
    Deviation("box_grad_autograd", "box_gradient",
              "back-propagates its IoU-kind loss through the box decoding: 1/grid on x, y and the anchor over the "
              "network size times exp(tw) on w, h (and the exact, not darknet's, IoU derivative)",
              "stops the chain at the decoded box: x, y get dx_box_iou's partials as they are, w, h only "
              "times exp(tw), exp(th)",
              "delta_yolo_box (src/yolo_layer.c), dx_box_iou (src/box.c)",
              "give the head darknet's delta instead of autograd's: parity.DarknetYoloLoss, or a custom "
              "autograd.Function for the box term",
              {"box_grad": "autograd"}, {"ciou_alpha": "decision: 'differentiated' or 'detached'"},
              "from parity.torch import yolo_forward\n"
              "class DarknetBoxGrad(torch.autograd.Function):  # your box loss's value, darknet's gradient\n"
              "    @staticmethod\n"
              "    def forward(ctx, head, truth, cfg, box_loss):\n"
              "        b, _, h, w = head.shape\n"
              "        d = yolo_forward(head.detach(), truth, cfg).delta.view(b, cfg.n, -1, h, w)\n"
              "        keep = torch.zeros_like(d); keep[:, :, 0:4] = 1  # the x, y, w, h rows\n"
              "        ctx.save_for_backward((d * keep).view_as(head)); return box_loss.detach()\n"
              "    @staticmethod\n"
              "    def backward(ctx, g):\n"
              "        (delta,) = ctx.saved_tensors; return -g * delta, None, None, None"),
    Deviation("box_kind_other", "box_gradient",
              "uses another box loss than the cfg's iou_loss (CIoU where the cfg says mse, or any other pair)",
              "computes the box delta of the cfg's iou_loss: the MSE of tx, ty, tw, th, or dx_box_iou of "
              "IoU/GIoU/DIoU/CIoU",
              "delta_yolo_box (src/yolo_layer.c)",
              "use the loss the cfg names (iou_loss=...), or change the cfg to the loss you train with",
              {"box_kind": "ciou"}, {"box_kind": "decision: mse, iou, giou, diou or ciou"}),
    Deviation("scale_2wh_missing", "box_gradient",
              "leaves out the (2 - w*h) weight of the MSE box loss",
              "multiplies each MSE box delta by (2 - truth.w*truth.h)",
              "delta_yolo_box (src/yolo_layer.c)",
              "weight the MSE box term by (2 - w*h) of the truth box (network-relative sizes)",
              {"scale_2wh": "missing"}, {},
              "lbox = ((2 - tw * th) * (pbox - tbox) ** 2).sum() / 2"),
    Deviation("scale_2wh_on_iou", "box_gradient",
              "applies the (2 - w*h) weight to an IoU-kind box loss too",
              "applies (2 - w*h) only on the MSE path; IoU paths get iou_normalizer alone",
              "delta_yolo_box (src/yolo_layer.c)",
              "drop the (2 - w*h) factor from the IoU-kind loss",
              {"scale_2wh": "everywhere"}),
    Deviation("iou_normalizer_ignored", "box_gradient",
              "ignores the cfg's iou_normalizer (the box term keeps weight 1)",
              "multiplies every box delta by iou_normalizer",
              "delta_yolo_box (src/yolo_layer.c)",
              "multiply the box loss by the cfg's iou_normalizer",
              {"iou_normalizer": "ignored"}),
    Deviation("max_delta_ignored", "box_gradient",
              "does not clip the IoU-kind box gradient at max_delta",
              "clips each IoU-kind box delta to [-max_delta, max_delta] (and class multipliers at max_delta)",
              "delta_yolo_box (src/yolo_layer.c)",
              "clamp the box gradient: a custom autograd.Function, or grad.clamp_(-max_delta, max_delta) in a hook",
              {"max_delta": "ignored"}, {},
              "pbox.register_hook(lambda g: g.clamp(-max_delta, max_delta))"),
    # ---- x, y
    Deviation("xy_logistic_derivative", "xy",
              "differentiates through the logistic of x, y, multiplying their gradient by s*(1 - s)",
              "writes the x, y delta on the activated output; the logistic's backward is the identity there",
              "forward_yolo_layer, delta_yolo_box (src/yolo_layer.c)",
              "compute the x, y loss on the logit's activation but pass darknet's delta to the logit "
              "(parity.DarknetYoloLoss), or divide the x, y gradient by s*(1 - s)",
              {"xy_logistic_grad": True}),
    Deviation("xy_scale_derivative", "xy",
              "differentiates through scale_x_y, multiplying the x, y gradient by scale_x_y",
              "applies scale_x_y in the forward pass only; the delta is not multiplied by it",
              "forward_yolo_layer (src/yolo_layer.c)",
              "leave scale_x_y out of the gradient (darknet's delta), or divide the x, y gradient by scale_x_y",
              {"xy_scale_grad": True}),
    # ---- objectness
    Deviation("obj_target_iou", "objectness",
              "uses the IoU of the prediction with its truth (detached) as the objectness target of a positive",
              "writes the target 1 for every assigned slot (objectness_smooth aside)",
              "forward_yolo_layer (src/yolo_layer.c)",
              "set the objectness target of assigned slots to 1",
              {"obj_target": "iou"}, {"obj_target": "decision: 'iou' (plain) or 'iou_kind' (the box loss's, "
                                                    "clamped at 0)"},
              "tobj[b, a, gj, gi] = 1.0  # not iou.detach().clamp(0)"),
    Deviation("obj_mse", "objectness",
              "takes an MSE of the logistic's objectness, so the gradient carries p*(1 - p) (and a factor 2 "
              "in the weight)",
              "writes target - p, the gradient of a binary cross-entropy on the logit",
              "forward_yolo_layer (src/yolo_layer.c)",
              "use BCEWithLogitsLoss on the objectness logit (reduction='sum')",
              {"obj_loss": "mse"}, {"weight_obj": "fitted (2 for a plain squared error)"},
              "lobj = F.binary_cross_entropy_with_logits(raw_obj, tobj, reduction='sum')"),
    Deviation("obj_normalizer_ignored", "objectness",
              "ignores the cfg's obj_normalizer",
              "multiplies every objectness delta by obj_normalizer",
              "forward_yolo_layer (src/yolo_layer.c)",
              "multiply the objectness loss by the cfg's obj_normalizer",
              {"obj_normalizer": "ignored"}),
    Deviation("objectness_smooth_ignored", "objectness",
              "leaves out the cfg's objectness_smooth: positives target 1 and negatives 0, whatever the IoU",
              "with objectness_smooth=1 targets the IoU squared at positives and keeps the larger of the "
              "smoothed and the plain negative delta where a slot is ignored",
              "forward_yolo_layer (src/yolo_layer.c)",
              "use the cfg's objectness_smooth targets (IoU-based), or set objectness_smooth=0 in the cfg",
              {"objectness_smooth": "ignored"}),
    Deviation("obj_focal", "objectness",
              "uses a focal loss on objectness: alpha_t * (1 - p_t)**gamma * BCE (Lin et al., torchvision's "
              "sigmoid_focal_loss), so easy slots get almost no gradient",
              "writes target - p, the plain binary cross-entropy's delta (the cfg's focal_loss applies to "
              "classes only)",
              "forward_yolo_layer (src/yolo_layer.c)",
              "use plain BCEWithLogitsLoss on the objectness logit (reduction='sum')",
              {"obj_loss": "focal"}, {"focal_gamma": "fitted (2 in most ports; 1.5 in yolov5's FocalLoss)",
                                      "focal_alpha": "decision: 0.25 (torchvision) or None (no alpha weighting)"},
              "lobj = F.binary_cross_entropy_with_logits(raw_obj, tobj, reduction='sum')  # no focal factor"),
    # ---- ignore
    Deviation("ignore_none", "ignore",
              "pushes every unassigned prediction's objectness towards 0, however well it overlaps a truth",
              "writes no negative objectness where the best IoU over the image's truths exceeds ignore_thresh "
              "(and some class probability exceeds 0.25)",
              "forward_yolo_layer (src/yolo_layer.c)",
              "mask out of the negative objectness loss the slots whose best IoU with any truth exceeds "
              "ignore_thresh",
              {"ignore": "none"}, {},
              "noobj &= ~(best_iou > ignore_thresh)"),
    Deviation("ignore_no_class_match", "ignore",
              "ignores by IoU alone, without darknet's class test",
              "counts a slot's best IoU only where some class probability of that prediction exceeds 0.25",
              "forward_yolo_layer, compare_yolo_class (src/yolo_layer.c)",
              "ignore only where the best IoU exceeds ignore_thresh and any class probability exceeds 0.25",
              {"ignore": "no_class_match"}),
    Deviation("ignore_threshold", "ignore",
              "uses another ignore threshold than the cfg's",
              "compares the best IoU with the cfg's ignore_thresh",
              "forward_yolo_layer (src/yolo_layer.c)",
              "use the cfg's ignore_thresh",
              {"ignore_thresh": 0.3}, {"ignore_thresh": "the threshold that reproduces every ignored slot "
                                                        "(between the largest kept and smallest ignored IoU)"}),
    Deviation("ignore_own_class", "ignore",
              "ignores a slot only where the prediction's probability of its best truth's own class exceeds 0.25",
              "counts a truth's IoU where any class probability of the prediction exceeds 0.25, whatever the "
              "truth's class",
              "compare_yolo_class, forward_yolo_layer (src/yolo_layer.c)",
              "test every class probability of the prediction against 0.25, not the truth's class alone",
              {"ignore": "own_class"}, {},
              "match = (pcls > 0.25).any(-1)  # not pcls[..., tcls_of_best] > 0.25"),
    Deviation("ignore_assigned_only", "ignore",
              "searches the best IoU only among the truths it assigned to this layer (its target list)",
              "searches over every truth of the image, whichever layer it is assigned to",
              "forward_yolo_layer (src/yolo_layer.c)",
              "take the best IoU over all of the image's truths, not the layer's targets",
              {"ignore_truths": "assigned"}, {},
              "best_iou = box_iou(pred, all_truths_of_image).max(-1).values  # not only this layer's targets"),
    # ---- assignment
    Deviation("assign_best_in_mask", "assignment",
              "assigns each truth to the best of this layer's own anchors, always",
              "takes the best of all anchors and uses it only if it belongs to this layer's mask",
              "forward_yolo_layer, int_index (src/yolo_layer.c)",
              "choose the best anchor over all anchors of the network; skip the truth on this layer if that "
              "anchor is not in the mask (plus the iou_thresh extras)",
              {"assign": "best_in_mask"}),
    Deviation("assign_ratio", "assignment",
              "assigns a truth to every anchor of the layer whose width and height ratios to it are below K "
              "(no best-of-all-anchors, no iou_thresh extras)",
              "assigns the best anchor over all anchors (if in the mask) plus every mask anchor whose IoU "
              "(iou_thresh_kind) with the truth exceeds iou_thresh",
              "forward_yolo_layer (src/yolo_layer.c)",
              "match by anchor IoU as darknet does; a ratio rule drops or adds truth-anchor pairs",
              {"assign": "ratio"}, {"ratio_k": "the K that reproduces every assignment (interval of ratios)"},
              "r = twh[:, None] / anchors[None]; match = torch.max(r, 1 / r).max(2).values < K"),
    Deviation("assign_no_extras", "assignment",
              "assigns only the best anchor, never the iou_thresh extras",
              "also assigns every other mask anchor whose IoU with the truth exceeds iou_thresh",
              "forward_yolo_layer (src/yolo_layer.c)",
              "add the mask anchors whose IoU (iou_thresh_kind) with the truth exceeds iou_thresh",
              {"extras": "none"}),
    Deviation("assign_every_above", "assignment",
              "assigns a truth to every anchor of the layer whose anchor-shape IoU with it exceeds t (ultralytics "
              "yolov3's iou_t), without darknet's best anchor over all anchors",
              "assigns the best anchor over all anchors (if in the mask) plus every mask anchor whose IoU "
              "(iou_thresh_kind) with the truth exceeds iou_thresh",
              "forward_yolo_layer (src/yolo_layer.c)",
              "choose the best anchor over all anchors of the network as darknet does, then the iou_thresh extras",
              {"assign": "every_above"}, {"assign_t": "the t that reproduces every assignment (an interval of "
                                                      "anchor IoUs; 0.2 in ultralytics yolov3)"},
              "j = wh_iou(anchors, twh) > iou_t  # darknet: best anchor of all, then iou_thresh extras"),
    Deviation("assign_neighbour_cells", "assignment",
              "also assigns the two neighbour cells nearest the truth's centre (left or right, up or down, as "
              "yolov5 does), each with the box target relative to its own cell",
              "assigns only the cell containing the truth's centre", "forward_yolo_layer (src/yolo_layer.c)",
              "assign only the cell of the truth's centre (int(x * w), int(y * h))",
              {"neighbour_cells": True}, {},
              "g = 0; off = torch.zeros(1, 2)  # no neighbour offsets in build_targets"),
    Deviation("assign_cap", "assignment",
              "reads at most cap truths per image for the assignment (a fixed-size target list)",
              "assigns every truth it reads (up to max rows, before the terminator)",
              "forward_yolo_layer (src/yolo_layer.c)",
              "remove the cap (or make it at least the cfg's max)", {"assign_cap": 4},
              {"assign_cap": "the count that reproduces the dropped pairs (between the largest number of truths "
                             "assigned in an image and the smallest number dropped)"}),
    # ---- slots written twice
    Deviation("box_last_writer", "slots_written_twice",
              "keeps only the last truth's box target where two truths share a slot",
              "adds each truth's box delta to what the slot holds (AlexeyAB; pjreddie keeps the last)",
              "delta_yolo_box (src/yolo_layer.c)",
              "sum the box loss over every truth-anchor pair, not over a target tensor written in place",
              {"box_writer": "last"}),
    Deviation("box_first_writer", "slots_written_twice",
              "keeps only the first truth's box target where two truths share a slot",
              "adds each truth's box delta to what the slot holds", "delta_yolo_box (src/yolo_layer.c)",
              "sum the box loss over every truth-anchor pair", {"box_writer": "first"}),
    Deviation("class_rewrite", "slots_written_twice",
              "rewrites a shared slot's whole class row for the last truth (one-hot of its class)",
              "rewrites only the truth's class entry when the slot's class row is already set (the 'already "
              "set' shortcut), keeping the earlier truth's class target",
              "delta_yolo_class (src/yolo_layer.c)",
              "build multi-hot class targets for shared slots (set each truth's class to 1, never reset)",
              {"class_write": "rewrite"}, {}, "tcls[b, a, gj, gi, c] = 1.0  # not tcls[b, a, gj, gi] = one_hot(c)"),
    Deviation("class_sum", "slots_written_twice",
              "adds every truth's whole class row (one-hot minus p) to a shared slot, as a loss summed over "
              "truth-anchor pairs does",
              "rewrites only the truth's class entry when the slot's class row is already set (the 'already "
              "set' shortcut), so a shared slot's class delta holds each class once",
              "delta_yolo_class (src/yolo_layer.c)",
              "build one class target per slot (multi-hot over the truths written there) and take the class loss "
              "once per slot, not once per truth-anchor pair",
              {"class_write": "sum"}, {},
              "tcls = torch.zeros_like(pcls); tcls[b, a, gj, gi, c] = 1.0  # then one BCE over slots"),
    Deviation("box_max_iou_writer", "slots_written_twice",
              "keeps only the box target of the truth whose IoU with the prediction is highest where two truths "
              "share a slot (the first on a tie)",
              "adds each truth's box delta to what the slot holds (AlexeyAB; pjreddie keeps the last)",
              "delta_yolo_box (src/yolo_layer.c)",
              "sum the box loss over every truth-anchor pair, not over the best-matching truth of a slot",
              {"box_writer": "max_iou"}),
    # ---- averaging
    Deviation("averaging_none", "averaging",
              "does not divide a slot's box gradient by its number of positive classes",
              "divides the box deltas of a slot with objectness set by its count of positive class deltas "
              "when iou_thresh < 1",
              "averages_yolo_deltas, forward_yolo_layer (src/yolo_layer.c)",
              "divide the accumulated box gradient of each slot by the number of truths (classes) written there",
              {"averaging": "none"}),
    Deviation("averaging_always", "averaging",
              "averages a slot's box gradient over its positive classes even when iou_thresh is 1",
              "averages only when iou_thresh < 1", "forward_yolo_layer (src/yolo_layer.c)",
              "average only with iou_thresh < 1", {"averaging": "always"}),
    Deviation("averaging_classes", "averaging",
              "also divides a slot's class deltas by its number of positive classes",
              "divides only the box deltas (x, y, w, h) of such slots; class deltas stay as written",
              "averages_yolo_deltas (src/yolo_layer.c)",
              "average the box term only", {"averaging_classes": True}),
    # ---- classes
    Deviation("cls_softmax", "classes",
              "uses softmax cross-entropy over the class logits of an assigned slot: onehot - softmax(logits)",
              "writes target - logistic(logit) per class (independent binary cross-entropies)",
              "delta_yolo_class (src/yolo_layer.c)",
              "use BCEWithLogitsLoss per class (reduction='sum')", {"cls_loss": "softmax"}, {},
              "lcls = F.binary_cross_entropy_with_logits(pcls, one_hot, reduction='sum')  # not F.cross_entropy"),
    Deviation("cls_label_smoothing", "classes",
              "smooths class targets as y*(1 - eps) + eps/classes (uniform over the classes)",
              "targets y*(1 - eps) + 0.5*eps with the cfg's label_smooth_eps (none when it is 0)",
              "delta_yolo_class (src/yolo_layer.c)",
              "use target = y*(1 - eps) + 0.5*eps with the cfg's eps (or set label_smooth_eps to the eps you use)",
              {"cls_smooth": "uniform", "cls_smooth_eps": 0.1},
              {"cls_smooth_eps": "the eps that reproduces the class targets (an interval; None: the cfg's)"},
              "tcls = one_hot * (1 - eps) + 0.5 * eps  # not + eps / num_classes"),
    Deviation("cls_label_smoothing_ignored", "classes",
              "leaves out the cfg's label smoothing: class targets are plain one-hot",
              "targets y*(1 - eps) + 0.5*eps with the cfg's label_smooth_eps",
              "delta_yolo_class (src/yolo_layer.c)",
              "smooth the class targets with the cfg's label_smooth_eps: y*(1 - eps) + 0.5*eps",
              {"cls_smooth": "none"}, {},
              "tcls = one_hot * (1 - eps) + 0.5 * eps  # eps = cfg's label_smooth_eps"),
    Deviation("cls_focal_ignored", "classes",
              "leaves out the cfg's focal_loss: plain binary cross-entropy on the classes",
              "with focal_loss=1 scales each class delta by the focal factor of the truth class's probability",
              "delta_yolo_class (src/yolo_layer.c)",
              "apply the focal factor to the class term as the cfg's focal_loss asks",
              {"cls_focal": "ignored"}),
    Deviation("cls_multipliers", "classes",
              "ignores the counters_per_class multipliers (every class weighs 1)",
              "multiplies the truth class's delta, box and objectness deltas by the class multiplier "
              "max(counters) / counter (clipped at max_delta)",
              "delta_yolo_class, delta_yolo_box (src/yolo_layer.c)",
              "weight each truth's box, objectness and class loss by its class multiplier, as darknet does",
              {"cls_multipliers": "ignored"}),
    # ---- truth reading
    Deviation("truth_after_terminator", "truth_reading",
              "reads the rows after the first x == 0 row, skipping only the x == 0 rows themselves (a mask "
              "x != 0 over the padded rows)",
              "stops reading an image's truths at the first row with x == 0", "forward_yolo_layer (src/yolo_layer.c)",
              "drop every row from the first x == 0 on (parity.targets.read_rows)", {"truth_terminator": "skip"}),
    Deviation("truth_past_max", "truth_reading",
              "reads every row of the truth tensor, past the cfg's max (the tensor may hold more rows than "
              "max: AlexeyAB's buffer, or a port's padded targets)",
              "reads at most max rows per image (the loops run t < max_boxes)",
              "forward_yolo_layer (src/yolo_layer.c)", "keep at most max rows per image",
              {"truth_max": "ignored"}),
    Deviation("truth_class_out_of_range", "truth_reading",
              "keeps a truth whose class id is outside [0, classes), its id clamped into range (a finite id; a "
              "port that indexes a one-hot instead raises for ids >= classes and wraps -1 to the last class)",
              "skips such truths (AlexeyAB, with a warning; pjreddie refuses them)",
              "forward_yolo_layer (src/yolo_layer.c)",
              "drop rows whose class id is outside [0, classes)", {"truth_class": "clamped"}),
    # ---- non-finite
    Deviation("nonfinite_propagates", "non_finite",
              "propagates NaN/Inf from the input into the gradient (no guard on any term)",
              "zeroes a non-finite objectness while scanning an image's truths, zeroes non-finite IoU-kind "
              "box deltas (fix_nan_inf) and keeps the earlier value of a non-finite class delta",
              "forward_yolo_layer, delta_yolo_box, delta_yolo_class (src/yolo_layer.c)",
              "guard the terms as darknet does (torch.nan_to_num on the affected deltas)",
              {"nonfinite": "propagates"}),
)

# the terms each executable deviation can change (reductions set theirs where they are built)
_TERMS = {
    "term_weight": BOX, "sign_flipped": ALL, "box_grad_exact": BOX, "box_grad_autograd": BOX, "box_kind_other": BOX,
    "scale_2wh_missing": BOX, "scale_2wh_on_iou": BOX, "iou_normalizer_ignored": BOX, "max_delta_ignored": BOX,
    "xy_logistic_derivative": ("x", "y"), "xy_scale_derivative": ("x", "y"), "obj_target_iou": ("obj",),
    "obj_mse": ("obj",), "obj_normalizer_ignored": ("obj",), "ignore_none": ("obj",),
    "ignore_no_class_match": ("obj",), "ignore_threshold": ("obj",), "assign_best_in_mask": ALL,
    "assign_ratio": ALL, "assign_no_extras": ALL, "box_last_writer": BOX, "box_first_writer": BOX,
    "class_rewrite": BOX + ("cls",), "class_sum": BOX + ("cls",), "averaging_none": BOX, "averaging_always": BOX,
    "obj_focal": ("obj",), "ignore_own_class": ("obj",), "ignore_assigned_only": ALL,
    "assign_every_above": ALL, "assign_neighbour_cells": ALL, "assign_cap": ALL, "box_max_iou_writer": BOX,
    "averaging_classes": ("cls",), "cls_softmax": ("cls",), "cls_label_smoothing": BOX + ("cls",),
    "cls_label_smoothing_ignored": BOX + ("cls",), "cls_focal_ignored": ALL, "objectness_smooth_ignored": ALL,
    "cls_multipliers": ALL, "truth_after_terminator": ALL, "truth_past_max": ALL, "truth_class_out_of_range": ALL,
    "nonfinite_propagates": ALL,
}
CATALOGUE = tuple(dataclasses.replace(d, terms=_TERMS[d.id]) if d.id in _TERMS else d for d in CATALOGUE)
BY_ID = {d.id: d for d in CATALOGUE}


def executable() -> tuple[Deviation, ...]:
    return tuple(d for d in CATALOGUE if d.executable)


def check_catalogue() -> None:
    """Every entry well-formed: a known family, unique id, switches that name Variant fields."""
    if len(BY_ID) != len(CATALOGUE):
        raise ValueError("catalogue ids are not unique")
    for d in CATALOGUE:
        if d.family not in FAMILIES:
            raise ValueError(f"{d.id}: unknown family {d.family!r}")
        for name in list((d.switch or {})) + [p for p in d.params if p in CHOICES]:
            if name not in CHOICES:
                raise ValueError(f"{d.id}: {name!r} is not a Variant field")
        if d.switch is not None:
            d.variant()
            if not d.terms:
                raise ValueError(f"{d.id}: an executable deviation must say which terms it changes")
