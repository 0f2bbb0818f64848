"""The deviation catalogue as executable semantics (parity.deviations).

For every executable switch: (a) at darknet's value the variant is darknet
bit for bit; (b) changed, it differs from darknet on cases that reach the
branch, only in the terms its entry names; (c) for the common ones, a loss
written the way porters write it (autograd, not assembled from the switch)
is reproduced by the variant within the one tolerance rule.
"""
from __future__ import annotations

import dataclasses
import warnings
from functools import lru_cache

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from parity import roles
from parity.cases import case_from_spec
from parity.compare import compare
from parity.deviations.catalogue import CATALOGUE, FAMILIES, check_catalogue, executable
from parity.deviations.variant import DARKNET, Variant
from parity.deviations.variant_forward import variant_forward
from parity.errors import InputError
from parity.generate import CaseFeatures, CaseShape, random_case
from parity.result import LayerRun
from parity.torch_layer import yolo_forward

torch.set_num_threads(1)
TERMS = ("x", "y", "w", "h", "obj", "cls")
FEATURES = CaseFeatures(nonfinite=0.0, shared_cell=0.45, class_oob=0.0, mid_terminator=0.0, over_max=0.0,
                        empty_image=0.0, plant=0.9, plant_wild=0.3, anchor_sized=0.5)


@lru_cache(maxsize=None)
def _config(profile: str):
    return case_from_spec(f"{profile}#0").config


# entries whose branch only inputs the dense cases leave out reach: those features (or a cfg with class
# multipliers, label smoothing, objectness_smooth or focal_loss)
REACH = {"truth_after_terminator": (("mid_terminator", 1.0),), "truth_past_max": (("over_max", 1.0),),
         "truth_class_out_of_range": (("class_oob", 0.3),), "nonfinite_propagates": (("nonfinite", 1.0),),
         "cls_multipliers": (("multipliers", 1.0),), "cls_label_smoothing_ignored": (("smoothing", 1.0),),
         "objectness_smooth_ignored": (("objectness_smooth", 1.0),), "cls_focal_ignored": (("focal", 1.0),)}


@lru_cache(maxsize=None)
def _cases(profile: str, count: int = 6, reach: tuple = ()):
    """Dense generated cases: many truths, shared cells, planted overlaps, no NaN/Inf (unless ``reach`` says)."""
    config = _config(profile)
    if profile == "yolov3":      # make obj_normalizer reachable too
        config = dataclasses.replace(config, obj_normalizer=0.5)
    extra = dict(reach)
    if extra.pop("multipliers", None):
        config = dataclasses.replace(config, counters_per_class=tuple(10 * (1 + c % 5) for c in range(config.classes)))
    if extra.pop("smoothing", None):
        config = dataclasses.replace(config, label_smooth_eps=0.1)
    if extra.pop("objectness_smooth", None):
        config = dataclasses.replace(config, objectness_smooth=1)
    if extra.pop("focal", None):
        config = dataclasses.replace(config, focal_loss=1)
    features = dataclasses.replace(FEATURES, **extra)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return tuple(random_case(seed, config, shape=CaseShape(2, 8, 8, 12), features=features)
                     for seed in range(count))


def _cases_for(entry, profile: str):
    return _cases(profile, 6, REACH.get(entry.id, ()))


def _same(a: torch.Tensor, b: torch.Tensor):
    """Elementwise: equal, or NaN in both."""
    return (a == b) | (torch.isnan(a) & torch.isnan(b))


def _tensors(case):
    return torch.tensor(case.input), torch.tensor(case.truth)


def _terms_changed(a: torch.Tensor, b: torch.Tensor, config) -> set[str]:
    B, _, H, W = a.shape
    diff = (~_same(a, b)).view(B, config.n, 5 + config.classes, H, W)
    rows = {"x": diff[:, :, 0], "y": diff[:, :, 1], "w": diff[:, :, 2], "h": diff[:, :, 3], "obj": diff[:, :, 4],
            "cls": diff[:, :, 5:]}
    return {t for t, m in rows.items() if bool(m.any())}


def _darknet(case) -> LayerRun:
    x, t = _tensors(case)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return yolo_forward(x, t, case.config)


def _variant(case, variant) -> LayerRun:
    x, t = _tensors(case)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return variant_forward(x, t, case.config, variant)


class TestCatalogue:
    def test_is_well_formed(self):
        check_catalogue()

    def test_every_family_of_the_issue_has_an_entry(self):
        assert {d.family for d in CATALOGUE} == set(FAMILIES)

    def test_every_entry_names_a_darknet_function_and_a_fix(self):
        for d in CATALOGUE:
            assert "src/yolo_layer.c" in d.darknet_function or "src/box.c" in d.darknet_function, d.id
            assert d.port_does and d.darknet_does and d.fix, d.id

    def test_every_entry_is_executable_and_a_catalogued_only_one_would_say_so(self):
        assert len(CATALOGUE) >= 53 and all(d.executable for d in CATALOGUE)
        with pytest.raises(ValueError, match="not yet executable"):
            dataclasses.replace(CATALOGUE[0], switch=None).variant()

    def test_a_bad_switch_value_is_one_clear_error(self):
        with pytest.raises(InputError, match="Variant.ignore='sometimes'"):
            Variant(ignore="sometimes")

    @pytest.mark.parametrize("field,value", [("focal_alpha", 1.5), ("assign_cap", -1), ("cls_smooth_eps", "0.1"),
                                             ("obj_loss", "quality_focal")])
    def test_a_bad_parameter_is_the_same_one_error(self, field, value):
        with pytest.raises(InputError, match=f"Variant.{field}={value!r}: expected") as err:
            Variant(**{field: value})
        assert len(err.value.args) == 1


class TestDarknetValue:
    """(a) darknet's values give darknet's run, bit for bit, through every hook."""

    @pytest.mark.parametrize("profile", ["yolov3", "yolov4"])
    def test_hooks_given_darknets_variant_change_nothing(self, profile):
        for case in _cases(profile):
            x, t = _tensors(case)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                plain = yolo_forward(x, t, case.config)
                hooked = yolo_forward(x, t, case.config, variant=Variant())
            for name in ("output", "delta", "roles"):
                assert torch.equal(getattr(plain, name), getattr(hooked, name)), name
            assert plain.stats.host() == hooked.stats.host()
            assert torch.equal(plain.decisions.assignments.b, hooked.decisions.assignments.b)

    @pytest.mark.parametrize("entry", executable(), ids=lambda d: d.id)
    def test_each_switch_at_darknets_value_is_darknet(self, entry):
        back = Variant(**{k: getattr(DARKNET, k) for k in entry.switch})
        for profile in ("yolov3", "yolov4"):
            for case in _cases_for(entry, profile)[:2]:
                assert bool(_same(_variant(case, back).delta, _darknet(case).delta).all())


class TestSwitchChanged:
    """(b) a changed switch reaches its branch and changes only its entry's terms."""

    @pytest.mark.parametrize("entry", executable(), ids=lambda d: d.id)
    def test_changes_exactly_the_named_terms(self, entry):
        changed: set[str] = set()
        for profile in ("yolov3", "yolov4"):
            for case in _cases_for(entry, profile):
                terms = _terms_changed(_variant(case, entry.variant()).delta, _darknet(case).delta, case.config)
                assert terms <= set(entry.terms), (entry.id, case.name, terms)
                changed |= terms
        assert changed, f"{entry.id}: no generated case reached the branch"

    def test_exact_box_gradient_halves_darknets_w_h_on_the_plain_iou_path(self):
        """dx_box_iou's w, h partials are twice the exact derivative; x, y agree (plain IoU, overlapping boxes).

        Only slots written once by a truth its prediction overlaps: where the boxes are apart darknet's
        plain-IoU derivative is not zero (a negative overlap enters its quotient) while the exact one is.
        """
        checked = 0
        for case in _cases("yolov4")[:3]:
            config = dataclasses.replace(case.config, iou_loss="iou", iou_thresh=1.0, max_delta=3.4e38)
            case = dataclasses.replace(case, config=config)
            run = _darknet(case)
            ex = _variant(case, Variant(box_grad="exact")).delta
            B, _, H, W = run.delta.shape
            r, e = run.delta.view(B, config.n, -1, H, W), ex.view(B, config.n, -1, H, W)
            asg = run.decisions.assignments
            key = ((asg.b * config.n + asg.a) * H + asg.j) * W + asg.i
            once = (key[:, None] == key[None, :]).sum(dim=1) == 1
            use = once & (asg.iou > 0)
            b, a, j, i = asg.b[use], asg.a[use], asg.j[use], asg.i[use]
            rb, eb = r[b, a, 0:4, j, i], e[b, a, 0:4, j, i]
            assert torch.allclose(eb[:, 0:2], rb[:, 0:2], rtol=1e-3, atol=1e-6)
            assert torch.allclose(eb[:, 2:4] * 2, rb[:, 2:4], rtol=1e-3, atol=1e-6)
            checked += int(use.sum())
        assert checked >= 5

    def test_slot_mean_divides_objectness_by_b_n_h_w(self):
        case = _cases("yolov3")[0]
        ref, var = _darknet(case).delta, _variant(case, Variant(reduce_obj="slots")).delta
        B, _, H, W = ref.shape
        n = case.config.n
        r, v = ref.view(B, n, -1, H, W), var.view(B, n, -1, H, W)
        assert torch.allclose(v[:, :, 4] * (B * n * H * W), r[:, :, 4], rtol=1e-6)
        assert torch.equal(v[:, :, :4], r[:, :, :4])


# ---------------------------------------------------------------------------------------------------------
# (c) porter-style losses, each doing one documented thing; the terms it does not concern are darknet's,
# carried by a surrogate whose gradient is darknet's delta (-(delta.detach() * x).sum()).

def _rows(run: LayerRun, config, B, H, W):
    return run.delta.view(B, config.n, 5 + config.classes, H, W)


def _porter_delta(case, loss_fn, own_rows) -> LayerRun:
    """-(d loss / d input): the porter's own terms from ``loss_fn``, the others darknet's surrogate."""
    x, t = _tensors(case)
    ref = _darknet(case)
    B, _, H, W = x.shape
    cfg = case.config
    keep = torch.ones(B, cfg.n, 5 + cfg.classes, H, W)
    keep[:, :, own_rows] = 0
    head = x.clone().requires_grad_(True)
    view = head.view(B, cfg.n, 5 + cfg.classes, H, W)
    rest = -(ref.delta.view_as(view).detach() * keep * view).sum()
    (rest + loss_fn(view, ref, t)).backward()
    return LayerRun(None, -head.grad, None, backend="candidate")


def _pairs(run: LayerRun):
    a = run.decisions.assignments
    return a.b, a.t, a.a, a.anchor, a.j, a.i


def _plain_iou(p, t):
    """IoU of centre/size boxes, written from the definition."""
    w = (torch.minimum(p[0] + p[2] / 2, t[0] + t[2] / 2) - torch.maximum(p[0] - p[2] / 2, t[0] - t[2] / 2)).clamp(0)
    h = (torch.minimum(p[1] + p[3] / 2, t[1] + t[3] / 2) - torch.maximum(p[1] - p[3] / 2, t[1] - t[3] / 2)).clamp(0)
    inter = w * h
    return inter / (p[2] * p[3] + t[2] * t[3] - inter)


def _decode(view, cfg, b, a, anchor, j, i, H, W, logistic_xy=True):
    anchors = torch.tensor(cfg.anchors, dtype=torch.float32).view(-1, 2)
    s = cfg.scale_x_y
    ox = torch.sigmoid(view[b, a, 0, j, i]) * s - (s - 1) / 2
    oy = torch.sigmoid(view[b, a, 1, j, i]) * s - (s - 1) / 2
    return ((i + ox) / W, (j + oy) / H, torch.exp(view[b, a, 2, j, i]) * anchors[anchor, 0] / cfg.net_w,
            torch.exp(view[b, a, 3, j, i]) * anchors[anchor, 1] / cfg.net_h)


def _objectness_bce(view, ref, tobj, mask, reduction_divisor=1.0):
    bce = F.binary_cross_entropy_with_logits(view[:, :, 4], tobj, reduction="none")
    return (bce * mask).sum() / reduction_divisor


def _obj_targets(ref: LayerRun, view, ignore=True):
    """Target 1 at assigned slots; the noobj mask leaves out darknet's ignored slots (unless assigned)."""
    b, _, a, _, j, i = _pairs(ref)
    tobj = torch.zeros_like(view[:, :, 4])
    tobj[b, a, j, i] = 1.0
    mask = torch.ones_like(tobj)
    if ignore:
        mask[(ref.roles & roles.ROLE_IGNORED) != 0] = 0
    mask[b, a, j, i] = 1.0
    return tobj, mask


def porter_obj_mean(view, ref, truth):
    """Objectness as many ports write it: BCE with logits, mean over every slot."""
    tobj, mask = _obj_targets(ref, view)
    return _objectness_bce(view, ref, tobj, mask, reduction_divisor=tobj.numel())


def porter_obj_iou_target(view, ref, truth):
    """Objectness target = IoU of the prediction with its truth (detached), BCE summed."""
    B, _, _, H, W = view.shape
    b, t, a, anchor, j, i = _pairs(ref)
    cfg = _PORTER_CFG[0]
    tobj, mask = _obj_targets(ref, view)
    with torch.no_grad():
        pbox = _decode(view, cfg, b, a, anchor, j, i, H, W)
        tb = truth[b, t]
        tobj[b, a, j, i] = _plain_iou(pbox, (tb[:, 0], tb[:, 1], tb[:, 2], tb[:, 3]))
    return _objectness_bce(view, ref, tobj, mask)


_PORTER_CFG: list = []


def porter_no_ignore(view, ref, truth):
    """Objectness with no ignore mask: every unassigned slot is a negative."""
    tobj, mask = _obj_targets(ref, view, ignore=False)
    return _objectness_bce(view, ref, tobj, mask)


def porter_xy_through_logistic(view, ref, truth):
    """yolov3-style MSE of x, y computed on sigmoid(logit) (autograd differentiates the logistic)."""
    B, _, _, H, W = view.shape
    cfg = _PORTER_CFG[0]
    b, t, a, anchor, j, i = _pairs(ref)
    tb = truth[b, t]
    weight = (2 - tb[:, 2] * tb[:, 3]) * cfg.iou_normalizer
    px, py = torch.sigmoid(view[b, a, 0, j, i]), torch.sigmoid(view[b, a, 1, j, i])
    tx, ty = tb[:, 0] * W - i, tb[:, 1] * H - j
    return 0.5 * (weight * ((px - tx) ** 2 + (py - ty) ** 2)).sum()


def _ciou(p, t):
    """CIoU from the paper (Zheng et al. 2020), alpha treated as a constant as common ports do."""
    iou = _plain_iou(p, t)
    cw = torch.maximum(p[0] + p[2] / 2, t[0] + t[2] / 2) - torch.minimum(p[0] - p[2] / 2, t[0] - t[2] / 2)
    ch = torch.maximum(p[1] + p[3] / 2, t[1] + t[3] / 2) - torch.minimum(p[1] - p[3] / 2, t[1] - t[3] / 2)
    rho2 = (p[0] - t[0]) ** 2 + (p[1] - t[1]) ** 2
    v = (4 / np.pi ** 2) * (torch.atan(t[2] / t[3]) - torch.atan(p[2] / p[3])) ** 2
    with torch.no_grad():
        alpha = v / (1 - iou + v + 1e-6)
    return iou - (rho2 / (cw ** 2 + ch ** 2) + alpha * v)


def porter_ciou_autograd(view, ref, truth):
    """yolov4-style box loss: iou_normalizer * sum(1 - CIoU) over pairs, autograd through the decoding."""
    B, _, _, H, W = view.shape
    cfg = _PORTER_CFG[0]
    b, t, a, anchor, j, i = _pairs(ref)
    tb = truth[b, t]
    p = _decode(view, cfg, b, a, anchor, j, i, H, W)
    return cfg.iou_normalizer * (1 - _ciou(p, (tb[:, 0], tb[:, 1], tb[:, 2], tb[:, 3]))).sum()


def porter_obj_focal(view, ref, truth):
    """Focal loss on objectness, written as torchvision's sigmoid_focal_loss (gamma 2, alpha 0.25), summed."""
    tobj, mask = _obj_targets(ref, view)
    logit = view[:, :, 4]
    p = torch.sigmoid(logit)
    ce = F.binary_cross_entropy_with_logits(logit, tobj, reduction="none")
    p_t = p * tobj + (1 - p) * (1 - tobj)
    alpha_t = 0.25 * tobj + 0.75 * (1 - tobj)
    return (alpha_t * ce * (1 - p_t) ** 2 * mask).sum()


def _slot_targets(ref: LayerRun, C: int, multi_hot: bool):
    """Class targets per assigned slot from the pairs in order: multi-hot, or the last pair's class."""
    b, t, a, anchor, j, i = _pairs(ref)
    cls = torch.tensor(_CLASSES[0])[b, t].long()
    slots: dict[tuple, torch.Tensor] = {}
    for k in range(b.shape[0]):
        key = (int(b[k]), int(a[k]), int(j[k]), int(i[k]))
        row = slots.get(key) if multi_hot else None
        row = torch.zeros(C) if row is None else row
        row[int(cls[k])] = 1.0
        slots[key] = row
    idx = torch.tensor(list(slots)).T
    return (idx[0], idx[1], idx[2], idx[3]), torch.stack(list(slots.values()))


_CLASSES: list = []


def porter_cls_softmax(view, ref, truth):
    """Softmax cross-entropy over the classes of each assigned slot; the slot's target is its last truth's class."""
    (b, a, j, i), target = _slot_targets(ref, view.shape[2] - 5, multi_hot=False)
    return F.cross_entropy(view[b, a, 5:, j, i], target.argmax(dim=1), reduction="sum")


def porter_cls_uniform_smoothing(view, ref, truth, eps=0.1):
    """BCE with logits on multi-hot class targets smoothed as y*(1 - eps) + eps/classes, summed."""
    C = view.shape[2] - 5
    (b, a, j, i), target = _slot_targets(ref, C, multi_hot=True)
    smooth = target * (1 - eps) + eps / C
    return F.binary_cross_entropy_with_logits(view[b, a, 5:, j, i], smooth, reduction="sum")


def _grid_boxes(view, cfg):
    """Every slot's predicted box (centre x, y, size w, h over the image), each [B, n, H, W]."""
    B, n, _, H, W = view.shape
    anchors = torch.tensor(cfg.anchors, dtype=torch.float32).view(-1, 2)[list(cfg.mask)]
    s = cfg.scale_x_y
    gx, gy = torch.arange(W).view(1, 1, 1, W), torch.arange(H).view(1, 1, H, 1)
    return ((gx + torch.sigmoid(view[:, :, 0]) * s - (s - 1) / 2) / W,
            (gy + torch.sigmoid(view[:, :, 1]) * s - (s - 1) / 2) / H,
            torch.exp(view[:, :, 2]) * anchors[:, 0].view(1, n, 1, 1) / cfg.net_w,
            torch.exp(view[:, :, 3]) * anchors[:, 1].view(1, n, 1, 1) / cfg.net_h)


def _porter_ignore_bce(view, ref, truth, rows_of, own_class: bool):
    """Objectness BCE whose negatives leave out slots whose best IoU over ``rows_of(b)`` exceeds ignore_thresh.

    ``own_class``: only where the prediction's probability of that best truth's class exceeds 0.25.
    """
    cfg = _PORTER_CFG[0]
    tobj, _ = _obj_targets(ref, view, ignore=False)
    mask = torch.ones_like(tobj)
    with torch.no_grad():
        px, py, pw, ph = _grid_boxes(view, cfg)
        for b in range(view.shape[0]):
            rows = rows_of(b)
            if not rows:
                continue
            tb = truth[b, rows]
            iou = _plain_iou((px[b, ..., None], py[b, ..., None], pw[b, ..., None], ph[b, ..., None]),
                             (tb[:, 0], tb[:, 1], tb[:, 2], tb[:, 3]))          # [n, H, W, T]
            best, which = iou.max(dim=-1)
            ignore = best > cfg.ignore_thresh
            if own_class:
                cls = tb[:, 4].long()[which]                                   # [n, H, W]
                prob = torch.sigmoid(view[b, :, 5:]).gather(1, cls[:, None])[:, 0]
                ignore &= prob > 0.25
            mask[b][ignore] = 0
    b, _, a, _, j, i = _pairs(ref)
    mask[b, a, j, i] = 1.0
    return _objectness_bce(view, ref, tobj, mask)


def _image_rows(truth, b, cfg):
    """The rows a port reads: up to max, before the first x == 0."""
    rows = []
    for t in range(min(cfg.max_boxes, truth.shape[1])):
        if truth[b, t, 0] == 0:
            break
        rows.append(t)
    return rows


def porter_ignore_own_class(view, ref, truth):
    """Ignore test on the best truth's own class probability (not any class's)."""
    return _porter_ignore_bce(view, ref, truth, lambda b: _image_rows(truth, b, _PORTER_CFG[0]), own_class=True)


def porter_ignore_assigned_only(view, ref, truth):
    """Ignore by IoU alone, the best IoU taken over the truths this layer was given as targets."""
    b_, t_ = ref.decisions.assignments.b, ref.decisions.assignments.t
    return _porter_ignore_bce(view, ref, truth, lambda b: sorted({int(t) for t in t_[b_ == b]}), own_class=False)


PORTERS = [
    # (loss, its own rows, profile, the variant that documents it)
    (porter_obj_mean, [4], "yolov3", Variant(reduce_obj="slots")),
    (porter_obj_iou_target, [4], "yolov3", Variant(obj_target="iou")),
    (porter_no_ignore, [4], "yolov3", Variant(ignore="none")),
    (porter_xy_through_logistic, [0, 1], "yolov3", Variant(xy_logistic_grad=True)),
    (porter_ciou_autograd, [0, 1, 2, 3], "yolov4",
     Variant(box_grad="autograd", ciou_alpha="detached", xy_logistic_grad=True, xy_scale_grad=True,
             averaging="none", max_delta="ignored")),
    (porter_obj_focal, [4], "yolov3", Variant(obj_loss="focal", focal_gamma=2.0, focal_alpha=0.25)),
    (porter_cls_softmax, slice(5, None), "yolov3", Variant(cls_loss="softmax", class_write="rewrite")),
    (porter_cls_uniform_smoothing, slice(5, None), "yolov3", Variant(cls_smooth="uniform", cls_smooth_eps=0.1)),
    (porter_ignore_own_class, [4], "yolov3", Variant(ignore="own_class")),
    (porter_ignore_assigned_only, [4], "yolov3", Variant(ignore_truths="assigned", ignore="no_class_match")),
]


@pytest.mark.parametrize("loss_fn,rows,profile,variant", PORTERS, ids=[p[0].__name__ for p in PORTERS])
def test_a_porter_style_loss_is_reproduced_by_its_variant(loss_fn, rows, profile, variant):
    """(c) independent evidence: the porter's autograd gradient equals the variant's delta under the rule."""
    reached = 0
    for case in _cases(profile):
        if profile == "yolov3":   # porters here use the cfg's obj_normalizer of 1
            case = dataclasses.replace(case, config=dataclasses.replace(case.config, obj_normalizer=1.0))
        _PORTER_CFG[:] = [case.config]
        _CLASSES[:] = [case.truth[..., 4]]
        ref = _darknet(case)
        cand = _porter_delta(case, loss_fn, rows)
        diff = compare(_variant(case, variant), cand, case=case)
        assert diff.passed, (case.name, diff.decision_mismatches, diff.value_mismatches, [str(m) for m in diff.mismatches[:3]])
        reached += int(not compare(ref, cand, case=case).passed)
    assert reached, "the porter's loss never differed from darknet: the cases do not reach the branch"
