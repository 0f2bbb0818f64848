"""Seeded case generation (parity.generate): determinism, every feature present, darknet reaching it.

A feature counts as present only if the C reference shows darknet taking the
branch it is meant to reach (``LayerRun.branches``), or, where darknet
must ignore rows, if deleting those rows changes nothing.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from parity.case import Case, load_case
from parity.config import FLT_MAX, YoloConfig
from parity.errors import ParityError
from parity.generate import (BRANCHES, FORCEABLE, CaseFeatures, CaseShape, HeadGrid, enabled_branches,
                             generate_cases, random_case, random_config)
from parity.layer_input import active_rows
from parity.reference import run_reference

COCO = (10, 13, 16, 30, 33, 23, 30, 61, 62, 45, 59, 119, 116, 90, 156, 198, 373, 326)
# yolov4-like: three heads of one network at net 256 (grids 32, 16, 8), CIoU, iou_thresh, max_delta.
YOLOV4 = dict(classes=20, num=9, anchors=COCO, net_w=256, net_h=256, ignore_thresh=0.7, iou_thresh=0.213,
              iou_loss="ciou", iou_normalizer=0.07, max_delta=5.0)
HEADS = [HeadGrid(YoloConfig(mask=(0, 1, 2), **YOLOV4), 32, 32),
         HeadGrid(YoloConfig(mask=(3, 4, 5), **YOLOV4), 16, 16),
         HeadGrid(YoloConfig(mask=(6, 7, 8), **YOLOV4), 8, 8)]
PJ_HEADS = [HeadGrid(YoloConfig(classes=20, num=9, anchors=COCO, mask=m, net_w=320, net_h=320, ignore_thresh=0.7,
                                flavor="pjreddie"), g, g) for m, g in (((6, 7, 8), 10), ((3, 4, 5), 20))]


GENERATED = Path(__file__).resolve().parent.parent / "fixtures" / "generated"


def digest(cases: list[Case]) -> str:
    """Hash of every byte a case carries: input, truth, cfg and meta."""
    h = hashlib.sha256()
    for case in cases:
        for part in (case.input.tobytes(), case.truth.tobytes(), case.cfg.encode(), json.dumps(case.meta).encode()):
            h.update(part)
    return h.hexdigest()


def sample(seed, heads=HEADS, *, batch=2, truths=(2, 10), **features) -> list[Case]:
    return generate_cases(seed, heads, batch=batch, truths=truths, features=CaseFeatures(**features))


def forced(name: str, seed: int = 0, heads=HEADS, **extra) -> list[Case]:
    """A sample with feature ``name`` forced, as suites force it."""
    features = CaseFeatures(**extra).forcing(name)
    return generate_cases(seed, heads, batch=2, truths=(5, 10), features=features)


def branches(case: Case) -> dict[str, int]:
    return run_reference(case.config, case.input, case.truth, flavor=case.flavor).branches


def same_run(case: Case, truth: np.ndarray) -> bool:
    """Whether darknet gives the same output, delta and stats with ``truth`` instead."""
    a = run_reference(case.config, case.input, case.truth, flavor=case.flavor)
    b = run_reference(case.config, case.input, truth, flavor=case.flavor)
    return (np.array_equal(a.output, b.output, equal_nan=True) and np.array_equal(a.delta, b.delta, equal_nan=True)
            and json.dumps(a.stats.as_dict()) == json.dumps(b.stats.as_dict()))


class TestDeterminism:
    def test_same_seed_gives_the_same_bytes(self):
        assert digest(sample(7)) == digest(sample(7))
        assert digest(sample([3, 4, 5])) == digest(sample([3, 4, 5]))

    def test_different_seeds_differ(self):
        digests = {digest(sample(seed)) for seed in range(6)}
        assert len(digests) == 6

    def test_every_head_sees_the_same_truths(self):
        cases = sample(11)
        for case in cases[1:]:
            np.testing.assert_array_equal(case.truth, cases[0].truth)

    def test_random_case_with_features_is_deterministic(self):
        config = random_config(np.random.default_rng([1, 2]), "alexeyab")
        a = random_case(5, config, features=CaseFeatures())
        b = random_case(5, config, features=CaseFeatures())
        assert digest([a]) == digest([b])
        assert digest([a]) != digest([random_case(6, config, features=CaseFeatures())])
        assert "probabilities" in a.meta["features"] and a.meta["generator"].startswith("parity.generate.random_case")

    def test_random_case_reproduces_the_committed_case_field_by_field(self):
        # fixtures/generated/random-2024-9.npz was written by parity.case.save_case from this call.
        # A deliberate change to the generator regenerates it (same call, save_case), nothing else.
        committed = load_case(GENERATED / "random-2024-9.npz")
        config = random_config(np.random.default_rng([2024, 9]), "alexeyab")
        case = random_case(10_009, config, flavor="alexeyab", nonfinite=3)
        assert case.cfg == committed.cfg and case.config == committed.config and case.flavor == committed.flavor
        assert case.input.tobytes() == committed.input.tobytes() and case.input.shape == committed.input.shape
        assert case.truth.tobytes() == committed.truth.tobytes() and case.truth.shape == committed.truth.shape
        assert json.loads(json.dumps(case.meta)) == {k: v for k, v in committed.meta.items() if k != "format"}

    @pytest.mark.parametrize("k", range(12))
    def test_random_case_without_features_has_the_properties_its_callers_rely_on(self, k):
        flavor = "pjreddie" if k % 5 == 0 else "alexeyab"
        config = random_config(np.random.default_rng([2024, k]), flavor)
        planted = 3 if k % 9 == 0 else 0
        case = random_case(10_000 + k, config, flavor=flavor, nonfinite=planted)
        b, c, h, w = case.input.shape
        assert c == config.n * (5 + config.classes) and case.input.dtype == np.float32
        assert int((~np.isfinite(case.input)).sum()) == planted
        assert case.truth.shape[0] == b and case.truth.shape[2] in (5, 6)
        assert case.flavor == flavor and case.config == config
        rows = case.truth[..., 0] != 0
        assert np.isfinite(case.truth[rows][:, :4]).all()

    def test_random_case_refuses_nonfinite_count_with_features(self):
        config = random_config(np.random.default_rng([1, 2]), "alexeyab")
        with pytest.raises(ParityError, match="CaseFeatures.nonfinite"):
            random_case(5, config, features=CaseFeatures(), nonfinite=2)

    def test_random_case_with_features_keeps_the_shape(self):
        config = random_config(np.random.default_rng([1, 3]), "alexeyab")
        case = random_case(3, config, shape=CaseShape(2, 5, 7, 4), features=CaseFeatures())
        assert case.input.shape == (2, config.channels, 5, 7)


class TestTruthsDarknetAccepts:
    """Centres in [0, 1) whose float32 cell (int)(x*w) stays inside every head's grid."""

    @staticmethod
    def check(case: Case, grids) -> None:
        active = active_rows(case.truth, case.config.max_boxes)
        xy = case.truth[..., :2][active]
        assert (xy >= 0).all() and (xy < 1).all() and (case.truth[..., 0][active] > 0).all()
        for w, h in grids:
            assert (np.trunc(xy[:, 0] * np.float32(w)) < w).all()
            assert (np.trunc(xy[:, 1] * np.float32(h)) < h).all()
        run_reference(case.config, case.input, case.truth, flavor=case.flavor)  # raises on a refused truth

    @pytest.mark.parametrize("name", FORCEABLE)
    def test_forced_samples_are_valid(self, name):
        cases = forced(name)
        for case in cases:
            self.check(case, [(h.grid_w, h.grid_h) for h in HEADS])

    @settings(max_examples=40, deadline=None)
    @given(seed=st.integers(0, 2**32 - 1), gw=st.integers(1, 80), gh=st.integers(1, 80),
           flavor=st.sampled_from(["alexeyab", "pjreddie"]))
    def test_any_grid_and_seed(self, seed, gw, gh, flavor):
        config = random_config(np.random.default_rng(seed), flavor)
        features = CaseFeatures(border=0.6, shared_cell=0.3)
        (case,) = generate_cases(seed, [HeadGrid(config, gw, gh)], batch=2, truths=(0, 8), features=features)
        self.check(case, [(gw, gh)])

    def test_border_centres_lie_exactly_on_cell_borders(self):
        case = forced("border")[0]
        active = active_rows(case.truth, case.config.max_boxes)
        x = case.truth[..., 0][active]
        on_border = np.zeros_like(x, dtype=bool)
        for grid in (32, 16, 8):
            k = np.round(x.astype(np.float64) * grid)
            on_border |= (k >= 1) & (np.abs(k / grid - x) < 1e-7)
        assert on_border.mean() > 0.3

    def test_tiny_and_huge_boxes(self):
        tiny = forced("tiny")[0].truth
        huge = forced("huge")[0].truth
        # tiny: 0.001-0.012, huge: 0.7-1; a truth sharing a cell scales its neighbour's size by 0.9-1.1
        assert (tiny[..., 2:4][tiny[..., 0] > 0] < 0.012 * 1.1).all()
        assert (huge[..., 2:4][huge[..., 0] > 0] >= 0.7 * 0.9).all()


class TestFeaturesReachDarknet:
    def test_mid_list_terminator_hides_real_rows(self):
        for case in forced("mid_terminator"):
            t = case.truth
            assert branches(case)["zero_x_stop"] > 0
            for b in range(t.shape[0]):
                stop = int(np.flatnonzero(t[b, :, 0] == 0)[0])
                assert stop < case.config.max_boxes - 1
                assert t[b, stop, 2] > 0 and t[b, stop + 1, 0] > 0  # the stop row looks real, a box follows
                cut = t.copy()
                cut[b, stop + 1:] = 0
                assert same_run(case, cut), "darknet must ignore the rows after x == 0"

    def test_rows_past_max_hold_boxes_that_darknet_drops(self):
        heads = [HeadGrid(h.config.replace(max_boxes=5), h.grid_w, h.grid_h) for h in HEADS]
        for case in forced("over_max", heads=heads):
            t = case.truth
            assert t.shape[1] > 5 and (t[:, 5, 0] > 0).all()
            assert branches(case)["max_truncated"] > 0
            cut = t.copy()
            cut[:, 5:] = 0
            assert same_run(case, cut)

    def test_pjreddie_rows_past_max_within_its_90_rows(self):
        heads = [HeadGrid(h.config.replace(max_boxes=6), h.grid_w, h.grid_h) for h in PJ_HEADS]
        for case in forced("over_max", heads=heads):
            assert case.truth.shape[1] == 90
            assert branches(case)["max_truncated"] > 0

    def test_out_of_range_class_ids_alexeyab_only(self):
        cases = forced("class_oob")
        ids = cases[0].truth[..., 4][active_rows(cases[0].truth, 200)]
        assert ((ids < 0) | (ids >= 20)).all()
        assert branches(cases[0])["class_oob"] > 0
        for case in forced("class_oob", heads=PJ_HEADS):  # refused by pjreddie: never generated there
            ids = case.truth[..., 4][active_rows(case.truth, 90)]
            assert ((ids >= 0) & (ids < 20)).all()
            run_reference(case.config, case.input, case.truth, flavor="pjreddie")

    def test_empty_images(self):
        for case in forced("empty_image"):
            assert not case.truth.any()
            assert "empty_image" in case.meta["features"]["applied"]
            res = run_reference(case.config, case.input, case.truth, flavor=case.flavor)
            assert res.stats.count_raw == 0 and res.branches["zero_x_stop"] == case.truth.shape[0]

    def test_nonfinite_logits_reach_both_nan_branches_on_every_head(self):
        for case in forced("nonfinite"):
            assert not np.isfinite(case.input).all()
            hit = branches(case)
            assert hit["obj_nonfinite"] > 0 and hit["fix_nan_inf"] > 0, case.meta["generator"]

    def test_shared_cells_rewrite_box_deltas(self):
        hit = [branches(case) for case in forced("shared_cell")]
        assert all(h["rewritten_bbox"] > 0 and h["class_shortcut"] > 0 for h in hit)
        assert any(h["averaging_divides"] > 0 for h in hit)

    def test_wild_plants_make_max_delta_clip(self):
        assert any(branches(case)["max_delta_clip"] > 0 for case in forced("plant_wild"))

    @pytest.mark.parametrize("match, branch", [(1.0, "ignore"), (0.0, "classmatch_blocked")])
    def test_planted_class_probabilities_pass_or_block_the_class_match(self, match, branch):
        hit = sum(branches(c)[branch] for seed in range(3)
                  for c in sample(seed, plant=1.0, plant_tight=1.0, plant_class_match=match, plant_neighbour=0.0,
                                  plant_wild=0.0, nonfinite=0.0))
        assert hit > 0

    @pytest.mark.parametrize("match", [0.0, 1.0])
    def test_planted_classes_are_all_below_or_exactly_one_above_a_quarter(self, match):
        features = dict(plant=1.0, plant_class_match=match, plant_neighbour=0.0, plant_wild=0.0, shared_cell=0.0,
                        nonfinite=0.0, mid_terminator=0.0, class_oob=0.0)
        for case in sample(4, **features):
            n, classes = case.config.n, case.config.classes
            probs = 1 / (1 + np.exp(-case.input.reshape(case.input.shape[0], n, 5 + classes, *case.input.shape[2:])))
            probs = probs[:, :, 5:]
            active = active_rows(case.truth, case.config.max_boxes)
            for b, t in np.argwhere(active):
                i = int(np.float32(case.truth[b, t, 0]) * np.float32(case.input.shape[3]))
                j = int(np.float32(case.truth[b, t, 1]) * np.float32(case.input.shape[2]))
                above = (probs[b, :, :, j, i] > 0.25).sum(axis=1)  # per anchor slot
                assert (above == (1 if match else 0)).any()

    def test_meta_records_what_the_case_holds(self):
        case = forced("tiny")[0]
        assert "tiny" in case.meta["features"]["applied"]
        assert case.meta["features"]["probabilities"]["tiny"] == 1.0
        assert case.meta["head"] == 0 and case.meta["generator"].endswith("head=0 grid=32x32 batch=2")


class TestEnabledBranches:
    def test_names_match_the_c_reference(self):
        from parity.backends.c_reference import load_reference

        lib = load_reference().lib
        ffi = load_reference().ffi
        assert BRANCHES == tuple(ffi.string(lib.yref_branch_name(k)).decode() for k in range(len(BRANCHES)))

    @pytest.mark.parametrize("change, present, absent", [
        ({}, {"iou_loss_ciou", "averaging", "iou_thresh_extra", "max_delta_clip", "anchor_outside_mask"},
         {"iou_loss_mse", "focal", "label_smooth", "objectness_smooth", "truth_thresh"}),
        ({"iou_loss": "giou"}, {"iou_loss_giou"}, {"iou_loss_ciou"}),
        ({"iou_loss": "mse"}, {"iou_loss_mse"}, {"max_delta_clip", "fix_nan_inf"}),   # no clip or NaN fix in MSE
        ({"iou_thresh": 1.0}, set(), {"averaging", "averaging_divides", "iou_thresh_extra"}),
        ({"max_delta": FLT_MAX}, set(), {"max_delta_clip"}),
        ({"focal_loss": 1, "label_smooth_eps": 0.1}, {"focal"}, {"label_smooth"}),   # focal returns first
        ({"label_smooth_eps": 0.1}, {"label_smooth"}, {"focal"}),
        ({"truth_thresh": 0.8}, {"truth_thresh"}, set()),
        ({"objectness_smooth": 1}, {"objectness_smooth"}, set()),
        ({"mask": tuple(range(9))}, set(), {"anchor_outside_mask"}),
    ])
    def test_config_switches(self, change, present, absent):
        enabled = enabled_branches(HEADS[0].config.replace(**change))
        assert present <= enabled and not absent & enabled

    def test_pjreddie_has_no_alexeyab_branches(self):
        enabled = enabled_branches(PJ_HEADS[0].config)
        assert enabled.isdisjoint({"class_oob", "obj_nonfinite", "fix_nan_inf", "classmatch_blocked", "averaging"})
        assert "iou_loss_mse" in enabled and "max_truncated" not in enabled   # 90 rows, max 90: nothing past
        assert "max_truncated" in enabled_branches(PJ_HEADS[0].config.replace(max_boxes=6))

    def test_features_switch_data_branches(self):
        off = CaseFeatures(class_oob=0, nonfinite=0, over_max=0, empty_image=0, mid_terminator=0)
        enabled = enabled_branches(HEADS[0].config, off)
        assert enabled.isdisjoint({"class_oob", "obj_nonfinite", "fix_nan_inf", "max_truncated", "zero_x_stop"})


class TestCaseFeatures:
    def test_probabilities_are_checked(self):
        with pytest.raises(ParityError, match=r"CaseFeatures.plant=1.5"):
            CaseFeatures(plant=1.5)
        with pytest.raises(ParityError, match="tiny \\+ huge"):
            CaseFeatures(tiny=0.6, huge=0.6)

    def test_forcing_switches_off_what_would_hide_the_feature(self):
        f = CaseFeatures().forcing("nonfinite")
        assert f.nonfinite == 1 and f.empty_image == 0 and f.mid_terminator == 0 and f.anchor_sized == 1
        g = CaseFeatures().forcing("over_max")
        assert g.over_max == 1 and g.empty_image == 0 and g.mid_terminator == 0
        with pytest.raises(ParityError, match="cannot force"):
            CaseFeatures().forcing("plant_class_match")


class TestOptionCombinations:
    """Issue 11: combinations the profiles and generators once never reached."""

    def test_random_config_enables_every_combination(self):
        from parity.generate import COMBINATIONS
        seen = {name: 0 for name in COMBINATIONS}
        for k in range(3000):
            config = random_config(np.random.default_rng([77, k]), "alexeyab", class_map_p=0.15)
            for name, (enabled, _) in COMBINATIONS.items():
                seen[name] += bool(enabled(config))
        assert all(seen.values()), {k: v for k, v in seen.items() if not v}

    def test_class_map_draw_leaves_the_other_options_as_they_were(self, monkeypatch):
        # map= is drawn from a child stream: without it, every other option and the parent's
        # next draw are the same (seeds drawn before map= existed give the same configs)
        import parity.generate as generate
        with_map, after = [], []
        for k in range(40):
            rng = np.random.default_rng([77, k])
            with_map.append(random_config(rng, "alexeyab", class_map_p=0.15))
            after.append(rng.random())
        assert any(c.class_map is not None for c in with_map)
        monkeypatch.setattr(generate, "random_class_map", lambda rng, classes, p: None)
        for k in range(40):
            rng = np.random.default_rng([77, k])
            assert random_config(rng, "alexeyab", class_map_p=0.15) == with_map[k].replace(class_map=None)
            assert rng.random() == after[k]

    def test_every_combination_has_a_profile(self):
        from parity.generate import COMBINATIONS
        from parity.profiles import load_profiles
        profiles = load_profiles()
        missing = [name for name, (enabled, _) in COMBINATIONS.items()
                   if not any(enabled(h.config) for p in profiles.values() if p.flavor == "alexeyab" for h in p.heads)]
        assert not missing

    def test_reached_needs_the_branches_taken(self):
        from parity.generate import reached_combinations
        config = random_config(np.random.default_rng([77, 0]), "alexeyab").replace(
            objectness_smooth=1, new_coords=0, truth_thresh=0.7)
        assert "objectness_smooth+new_coords=0" in reached_combinations(config, "alexeyab", {"objectness_smooth": 2})
        assert "objectness_smooth+truth_thresh<1" not in reached_combinations(
            config, "alexeyab", {"objectness_smooth": 2})
        assert "objectness_smooth+truth_thresh<1" in reached_combinations(
            config, "alexeyab", {"objectness_smooth": 2, "truth_thresh": 1})
        assert reached_combinations(config, "pjreddie", {"objectness_smooth": 2, "truth_thresh": 1}) == []
