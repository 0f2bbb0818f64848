"""yref_forward_decisions: darknet's decisions exported by the C reference's own passes.

Checked against independent evidence: a numpy float32 IoU matrix of the
predicted boxes against the used truths, numpy's class-match test, the shape
IoUs of truths and anchors, the PyTorch port's assignment list, and the
decision bits in ``roles``. Asking for decisions must change nothing else.
"""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from parity.case import load_case
from parity.errors import ParityError
from parity.generate import CaseFeatures, CaseShape, random_case, random_config
from parity.layer_input import check_layer_input
from parity.backends.c_reference import load_reference
from parity.backends.ground import FLAVOR_CODES, fill_layer_struct
from parity.profiles import default_profile_names, get_profile, profile_cases
from parity.roles import (ROLE_AVERAGED, ROLE_BEST_ANCHOR, ROLE_CLASSMATCH_BLOCKED, ROLE_EXTRA_ANCHOR, ROLE_IGNORED,
                          ROLE_TRUTH_THRESH)
from parity.replay import FIXTURES_DIR, case_paths, shared_recorded_dir
from parity.torch import yolo_forward

torch.set_num_threads(1)
F32 = np.float32
SLOT_FLOAT = ("best_iou", "second_iou", "best_match_iou", "max_class_prob")
SLOT_INT = ("best_truth", "class_match", "divisor")
ROW_INT = ("truth_used", "truth_best_anchor", "truth_i", "truth_j")
PAIR_FLOAT = ("anchor_iou", "anchor_thresh_iou")
SENTINEL = 12345
PROFILES = default_profile_names()[:4]


def _call(config, flavor, x, t, want=None, capacity=None):
    """Run yref_forward_decisions; ``want`` names the decision arrays to ask for (None: all; (): NULL)."""
    mod = load_reference()
    ffi, lib = mod.ffi, mod.lib
    keep: list = []
    B, _, H, W = x.shape
    shape = type("S", (), dict(batch=B, n=config.n, h=H, w=W))
    cfg = ffi.new("yref_config *")
    cfg.flavor = FLAVOR_CODES[flavor]
    fill_layer_struct(ffi, cfg, config, flavor, shape, t, keep)
    output, delta = np.empty_like(x), np.empty_like(x)
    roles = np.empty((B, config.n, H, W), np.int32)
    stats = ffi.new("yref_stats *")
    slots, rows = (B, config.n, H, W), (B, t.shape[1])
    sizes = {**{k: (slots, F32) for k in SLOT_FLOAT}, **{k: (slots, np.int32) for k in SLOT_INT},
             **{k: (rows, np.int32) for k in ROW_INT}, **{k: (rows + (config.num,), F32) for k in PAIR_FLOAT}}
    cap = max(B * t.shape[1] * config.n, 1) if capacity is None else capacity
    sizes["assign"] = ((max(cap, 1), 7), np.int32)
    names = list(sizes) if want is None else list(want)
    dec = ffi.new("yref_decisions *") if want != () else ffi.NULL
    arrays = {}
    for name in names:
        shp, dt = sizes[name]
        arr = np.full(shp, SENTINEL, dt)
        arrays[name] = arr
        setattr(dec, name, ffi.from_buffer("float[]" if dt == F32 else "int[]", arr, require_writable=True))
    if dec != ffi.NULL:
        dec.assign_capacity = cap
        dec.assign_count = -5
    status = lib.yref_forward_decisions(cfg, ffi.from_buffer("float[]", x),
                                        ffi.from_buffer("float[]", t) if t.size else ffi.NULL,
                                        ffi.from_buffer("float[]", output, require_writable=True),
                                        ffi.from_buffer("float[]", delta, require_writable=True),
                                        ffi.from_buffer("int[]", roles, require_writable=True), stats, dec)
    assert status == 0
    res = dict(output=output, delta=delta, roles=roles, stats=bytes(ffi.buffer(stats)), **arrays,
               assigned=int(stats.assigned), branches=[int(v) for v in stats.branches])
    if dec != ffi.NULL:
        res["assign_count"] = int(dec.assign_count)
        res["assign_rows"] = arrays.get("assign", np.zeros((0, 7), np.int32))[:min(res["assign_count"], cap)]
    return res


def _used_rows(config, flavor, t):
    """[B, rows] bool: rows darknet's truth pass uses (numpy, from the rules)."""
    limit = min(config.max_boxes, t.shape[1])
    used = np.zeros(t.shape[:2], bool)
    for b in range(t.shape[0]):
        for r in range(limit):
            if t[b, r, 0] == 0:
                break
            cls = t[b, r, 4]
            ok = np.isfinite(cls) and 0 <= int(cls) < config.classes if abs(cls) < 2**31 else False
            used[b, r] = ok or flavor == "pjreddie"
    return used


def _pred_boxes(config, flavor, out):
    """[B, n, H, W] x, y, w, h of the decoded predictions (darknet's get_yolo_box, independently)."""
    B, _, H, W = out.shape
    E = 5 + config.classes
    o = out.reshape(B, config.n, E, H, W)
    jj, ii = np.meshgrid(np.arange(H, dtype=F32), np.arange(W, dtype=F32), indexing="ij")
    px = (ii + o[:, :, 0]) / F32(W)
    py = (jj + o[:, :, 1]) / F32(H)
    aw = np.array([config.anchors[2 * m] for m in config.mask], F32)[None, :, None, None]
    ah = np.array([config.anchors[2 * m + 1] for m in config.mask], F32)[None, :, None, None]
    if flavor == "alexeyab" and config.new_coords:
        pw = o[:, :, 2] * o[:, :, 2] * F32(4) * aw / F32(config.net_w)
        ph = o[:, :, 3] * o[:, :, 3] * F32(4) * ah / F32(config.net_h)
    else:
        def dexp(v):  # C's exp in double, then * anchor / net in double, one rounding to float
            return np.array([math.exp(float(e)) if np.isfinite(e) or e > 0 else (0.0 if e < 0 else math.nan)
                             for e in v.ravel()], np.float64).reshape(v.shape)
        pw = (dexp(o[:, :, 2]) * aw.astype(np.float64) / config.net_w).astype(F32)
        ph = (dexp(o[:, :, 3]) * ah.astype(np.float64) / config.net_h).astype(F32)
    return px.astype(F32), py.astype(F32), pw.astype(F32), ph.astype(F32)


def _iou(ax, ay, aw, ah, bx, by, bw, bh, guard):
    """darknet's box_iou in float32 numpy (guard: AlexeyAB's 0 for a zero intersection or union)."""
    with np.errstate(all="ignore"):
        def overlap(c1, s1, c2, s2):
            lo1, lo2 = c1 - s1 / F32(2), c2 - s2 / F32(2)
            hi1, hi2 = c1 + s1 / F32(2), c2 + s2 / F32(2)
            return np.where(hi1 < hi2, hi1, hi2) - np.where(lo1 > lo2, lo1, lo2)
        iw, ih = overlap(ax, aw, bx, bw), overlap(ay, ah, by, bh)
        inter = np.where((iw < 0) | (ih < 0), F32(0), iw * ih)
        uni = aw * ah + bw * bh - inter
        iou = inter / uni
        if guard:
            iou = np.where((inter == 0) | (uni == 0), F32(0), iou)
        return iou.astype(F32)


def _cases():
    out = []
    for k in range(36):
        rng = np.random.default_rng([4711, k])
        flavor = "pjreddie" if k % 3 == 0 else "alexeyab"
        config = random_config(rng, flavor)
        try:
            if k % 4 == 0:
                case = random_case(k, config, flavor=flavor, nonfinite=int(rng.integers(0, 20)))
            elif k % 4 == 1:
                case = random_case(k, config, flavor=flavor)
            else:
                feats = CaseFeatures(shared_cell=0.4, plant_tight=0.5, nonfinite=0.3 if k % 4 == 2 else 0.0,
                                     class_oob=0.0 if flavor == "pjreddie" else 0.1, mid_terminator=0.3,
                                     over_max=0.2)
                case = random_case(k, config, flavor=flavor, features=feats,
                                   shape=CaseShape(batch=2, h=int(rng.integers(2, 10)), w=int(rng.integers(2, 10)),
                                                   max_truths=int(rng.integers(1, 25))))
        except ParityError:
            continue
        out.append(pytest.param(case.config, case.flavor, case.input, case.truth, id=f"gen{k}-{flavor}"))
    for name in PROFILES:
        for k, case in enumerate(profile_cases(get_profile(name), 2, 0)):
            out.append(pytest.param(case.config, case.flavor, case.input, case.truth, id=f"profile-{name}-{k}"))
    return out


def _recorded():
    dirs = [FIXTURES_DIR] + ([shared_recorded_dir()] if shared_recorded_dir() else [])
    params = []
    for path in case_paths(dirs):
        try:
            load_case(path)
        except ParityError:
            continue  # a cfg the parser refuses
        params.append(pytest.param(path, id=f"{path.parent.name}/{path.stem}"))
    return params


def _prepare(config, flavor, x, t):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        x2, t2, _ = check_layer_input(config, x, t, flavor)
    return x2, t2


def check_all(config, flavor, x, t, torch_check=True):
    x, t = _prepare(config, flavor, x, t)
    r = _call(config, flavor, x, t)
    B, _, H, W = x.shape
    n, total = config.n, config.num
    roles = r["roles"]

    # Asking for decisions changes nothing: NULL decisions, and only a few of them.
    for want in ((), ("assign",), ("max_class_prob", "divisor")):
        r2 = _call(config, flavor, x, t, want=want)
        for key in ("output", "delta", "roles"):
            assert r2[key].tobytes() == r[key].tobytes(), (want, key)
        assert r2["stats"] == r["stats"], want

    # Per truth row: used rows and their cells, from the rules.
    used = _used_rows(config, flavor, t)
    assert (r["truth_used"] == used).all()
    with np.errstate(all="ignore"):
        ti = np.where(used, (t[..., 0] * F32(W)).astype(np.int64), -1)
        tj = np.where(used, (t[..., 1] * F32(H)).astype(np.int64), -1)
    assert (r["truth_i"] == ti).all() and (r["truth_j"] == tj).all()

    # Shape IoUs of truths against every anchor, and best_n = first strict maximum from 0.
    aw = (np.array(config.anchors[0: 2 * total: 2], F32) / F32(config.net_w)).astype(F32)
    ah = (np.array(config.anchors[1: 2 * total: 2], F32) / F32(config.net_h)).astype(F32)
    z = F32(0)
    shape_iou = _iou(z, z, aw[None, None, :], ah[None, None, :], z, z, t[..., 2:3], t[..., 3:4],
                     guard=flavor == "alexeyab")
    shape_iou = np.where(used[..., None], shape_iou, F32(0))
    assert r["anchor_iou"].tobytes() == shape_iou.tobytes()
    clean = np.where(np.isnan(shape_iou), -np.inf, shape_iou)
    best_n = np.where(clean.max(axis=2) > 0, clean.argmax(axis=2), 0)
    assert (r["truth_best_anchor"] == np.where(used, best_n, -1)).all()
    if flavor == "pjreddie":
        assert (r["anchor_thresh_iou"] == 0).all()
    else:
        assert (r["anchor_thresh_iou"][~used] == 0).all()
        if config.iou_thresh_kind in ("iou", "diou"):  # centred boxes: DIoU's centre term is 0
            assert r["anchor_thresh_iou"].tobytes() == r["anchor_iou"].tobytes()

    # Per slot: the ignore search against a numpy IoU matrix over the used truths.
    px, py, pw, ph = _pred_boxes(config, flavor, r["output"])
    best = np.zeros((B, n, H, W), F32)
    second = np.zeros_like(best)
    best_t = np.full((B, n, H, W), -1, np.int64)
    search_rows = used & ~np.isnan(t[..., 0])
    for b in range(B):
        for row in np.nonzero(search_rows[b])[0]:
            tb = t[b, row]
            iou = _iou(px[b], py[b], pw[b], ph[b], tb[0], tb[1], tb[2], tb[3], guard=flavor == "alexeyab")
            upd = iou > best[b]
            second[b] = np.where(upd, best[b], np.where(iou > second[b], iou, second[b]))
            best[b] = np.where(upd, iou, best[b])
            best_t[b] = np.where(upd, row, best_t[b])
    assert r["best_iou"].tobytes() == best.tobytes()
    assert r["second_iou"].tobytes() == second.tobytes()
    assert (r["best_truth"] == best_t).all()
    assert (r["second_iou"] <= r["best_iou"]).all()
    if search_rows.any():  # the best is the matrix's maximum (NaN never wins), clipped at 0
        assert (r["best_iou"] >= 0).all()

    o = r["output"].reshape(B, n, 5 + config.classes, H, W)
    if flavor == "alexeyab":
        cls = o[:, :, 5:]
        match = (cls > F32(0.25)).any(axis=2)
        assert (r["class_match"] == match).all()
        assert ((r["max_class_prob"] > F32(0.25)) == match).all()
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            mx = np.nanmax(np.where(np.isnan(cls), -np.inf, cls), axis=2)
        assert r["max_class_prob"].tobytes() == mx.astype(F32).tobytes()
        assert r["best_match_iou"].tobytes() == np.where(match, r["best_iou"], F32(0)).astype(F32).tobytes()
        blocked = ~(r["best_match_iou"] > F32(config.ignore_thresh)) & (r["best_iou"] > F32(config.ignore_thresh))
        assert (((roles & ROLE_CLASSMATCH_BLOCKED) != 0) == blocked).all()
    else:
        assert (r["class_match"] == 1).all() and (r["max_class_prob"] == 0).all()
        assert r["best_match_iou"].tobytes() == r["best_iou"].tobytes()

    # Roles from the exported quantities.
    assert (((roles & ROLE_IGNORED) != 0) == (r["best_match_iou"] > F32(config.ignore_thresh))).all()
    assert (((roles & ROLE_TRUTH_THRESH) != 0) == (r["best_iou"] > F32(config.truth_thresh))).all()
    assert ((r["divisor"] > 1) == ((roles & ROLE_AVERAGED) != 0)).all()
    if not (flavor == "alexeyab" and F32(config.iou_thresh) < 1):
        assert (r["divisor"] == 0).all()

    # Step-2 writes: count, slots marked, and each row's reason.
    rows = r["assign_rows"]
    assert r["assign_count"] == r["assigned"] == rows.shape[0]
    for extra, flag in ((0, ROLE_BEST_ANCHOR), (1, ROLE_EXTRA_ANCHOR)):
        marked = np.zeros((B, n, H, W), bool)
        sel = rows[rows[:, 6] == extra]
        marked[sel[:, 0], sel[:, 2], sel[:, 4], sel[:, 5]] = True
        assert (marked == ((roles & flag) != 0)).all()
    for b_, t_, a_, anchor, j_, i_, extra in rows:
        assert used[b_, t_] and config.mask[a_] == anchor and (j_, i_) == (tj[b_, t_], ti[b_, t_])
        if extra:
            assert anchor != best_n[b_, t_] and r["anchor_thresh_iou"][b_, t_, anchor] > F32(config.iou_thresh)
        else:
            assert anchor == best_n[b_, t_]
    keys = [(b_, t_) for b_, t_ in rows[:, :2]]
    assert keys == sorted(keys)  # image by image, truth by truth

    if torch_check:
        asg = yolo_forward(torch.from_numpy(x), torch.from_numpy(t), config, flavor).decisions.assignments
        port = np.stack([getattr(asg, k).cpu().numpy().astype(np.int64)
                         for k in ("b", "t", "a", "anchor", "j", "i", "extra")],
                        axis=1) if asg.b.numel() else np.zeros((0, 7), np.int64)
        assert port.shape == rows.shape and (port == rows).all()
    return r


@pytest.mark.parametrize("config,flavor,x,t", _cases())
def test_generated_cases(config, flavor, x, t):
    check_all(config, flavor, x, t)


@pytest.mark.parametrize("path", _recorded())
def test_recorded_cases(path):
    case = load_case(path)
    check_all(case.config, case.flavor, case.input, case.truth, torch_check=case.input.size < 400_000)


def test_assign_capacity_is_respected():
    """Rows past the capacity are counted but never written."""
    for seed in range(50):
        config = random_config(np.random.default_rng([3, seed]), "alexeyab")
        case = random_case(seed, config, shape=CaseShape(batch=2, h=6, w=6, max_truths=12))
        x, t = _prepare(config, "alexeyab", case.input, case.truth)
        full = _call(config, "alexeyab", x, t)
        if full["assign_count"] >= 3:
            break
    assert full["assign_count"] >= 3
    small = _call(config, "alexeyab", x, t, want=("assign",), capacity=1)
    assert small["assign_count"] == full["assign_count"]
    assert (small["assign"][0] == full["assign_rows"][0]).all()
    zero = _call(config, "alexeyab", x, t, want=("assign",), capacity=0)
    assert zero["assign_count"] == full["assign_count"] and (zero["assign"] == SENTINEL).all()


def test_unused_entries_are_initialised():
    """Rows past the terminator and slots without any truth read as untouched."""
    rng = np.random.default_rng(8)
    config = random_config(rng, "alexeyab")
    case = random_case(9, config, shape=CaseShape(batch=2, h=4, w=5, max_truths=6))
    t = case.truth.copy()
    t[1] = 0  # image 1: no truths at all
    x, t = _prepare(config, "alexeyab", case.input, t)
    r = _call(config, "alexeyab", x, t)
    assert (r["best_iou"][1] == 0).all() and (r["best_truth"][1] == -1).all() and (r["second_iou"][1] == 0).all()
    assert (r["truth_used"][1] == 0).all() and (r["truth_best_anchor"][1] == -1).all()
    assert (r["truth_i"][1] == -1).all() and (r["anchor_iou"][1] == 0).all()
    assert (r["assign_rows"][:, 0] == 0).all()
    for name in SLOT_FLOAT + SLOT_INT + ROW_INT + PAIR_FLOAT:
        assert not (r[name] == SENTINEL).any(), name


def test_divisor_counts_positive_class_deltas():
    """divisor is the number of positive class deltas of the slot, where the averaging pass divided."""
    hits = 0
    for k in range(40):
        rng = np.random.default_rng([99, k])
        config = random_config(rng, "alexeyab")
        if not np.float32(config.iou_thresh) < 1:
            continue
        case = random_case(k, config, features=CaseFeatures(shared_cell=0.6, nonfinite=0.0),
                           shape=CaseShape(batch=1, h=5, w=5, max_truths=15))
        x, t = _prepare(config, "alexeyab", case.input, case.truth)
        r = _call(config, "alexeyab", x, t)
        d = r["delta"].reshape(1, config.n, 5 + config.classes, 5, 5)
        positive = (d[:, :, 5:] > 0).sum(axis=2)
        div = r["divisor"]
        assert (div[div > 0] == positive[div > 0]).all()
        hits += int((div > 0).sum())
    assert hits > 0
