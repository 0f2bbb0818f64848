"""Named case profiles (parity.profiles): real cfgs' options, user YAML, errors, cases, branch coverage.

The coverage test is the point of the suite: a profile that enables a darknet
branch (``enabled_branches``) and never takes it in its default cases would
pass while testing less than it claims.
"""
from __future__ import annotations

import dataclasses
import re
import subprocess
import time
import warnings
from functools import lru_cache
from pathlib import Path

import pytest

from parity.case import Case
from parity.cfg import load_cfg, parse_cfg, yolo_config_from_cfg
from parity.config import FLT_MAX, IOU_KINDS, THRESH_KINDS
from parity.errors import ConfigError, ParityError
from parity.profiles import (SHIPPED_YAML, Profile, case_id, cfg_cases, default_profile_names, get_profile,
                             load_profiles, profile_cases, suite_cases)
from parity.reference import run_reference

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "cfg"
MIRROR = Path("/work/.mirror/AlexeyAB+darknet/repo")
BASES = ("yolov3", "yolov3-tiny", "yolov4", "yolov4-tiny", "yolov4-csp", "yolov7-tiny", "yolov3-pjreddie")

# AlexeyAB/darknet cfg/yolov3.cfg @59596d78 (not among the fixtures): its three [yolo]
# sections verbatim; its grids are 13, 26, 52 at width 416 (strides 32, 16, 8).
YOLOV3_YOLO_SECTIONS = """\
[yolo]
mask = 6,7,8
anchors = 10,13,  16,30,  33,23,  30,61,  62,45,  59,119,  116,90,  156,198,  373,326
classes=80
num=9
jitter=.3
ignore_thresh = .7
truth_thresh = 1
random=1
[yolo]
mask = 3,4,5
anchors = 10,13,  16,30,  33,23,  30,61,  62,45,  59,119,  116,90,  156,198,  373,326
classes=80
num=9
jitter=.3
ignore_thresh = .7
truth_thresh = 1
random=1
[yolo]
mask = 0,1,2
anchors = 10,13,  16,30,  33,23,  30,61,  62,45,  59,119,  116,90,  156,198,  373,326
classes=80
num=9
jitter=.3
ignore_thresh = .7
truth_thresh = 1
random=1
"""


@lru_cache(maxsize=None)
def profiles() -> dict[str, Profile]:
    return load_profiles()


def real_heads(profile: Profile) -> list[tuple]:
    """(config, stride) of each [yolo] of the real cfg ``profile`` is modelled on."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if profile.cfg == "yolov3.cfg":
            sections = ["[yolo]" + s for s in YOLOV3_YOLO_SECTIONS.split("[yolo]")[1:]]
            configs = [yolo_config_from_cfg("[net]\nwidth=416\nheight=416\n" + s) for s in sections]
            return list(zip(configs, (32, 16, 8)))
        net = load_cfg(FIXTURES / profile.cfg, flavor=profile.flavor)
        return [(y.config, net.width // y.grid_w) for y in net.yolo_layers]


def write(tmp_path: Path, text: str, name: str = "user.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


class TestShippedProfiles:
    def test_every_base_and_variant_is_listed(self):
        names = default_profile_names()
        assert set(BASES) <= set(names)
        assert names == list(profiles())  # the shipped file, in its order
        assert all("/" in n for n in names if n not in BASES)  # variants are named base/option=value

    @pytest.mark.parametrize("name", BASES)
    def test_options_equal_the_real_cfg(self, name):
        profile = profiles()[name]
        real = real_heads(profile)
        assert len(profile.heads) == len(real)
        for head, (config, stride) in zip(profile.heads, real):
            # net size (grids) and, where the profile says so, the class count are reduced for speed
            expected = dataclasses.replace(config, net_w=head.config.net_w, net_h=head.config.net_h,
                                           batch=head.config.batch, classes=head.config.classes)
            assert head.config == expected, name
            assert head.stride == (stride, stride)
            assert head.grid_w == head.config.net_w // stride

    def test_yolov3_sections_match_the_alexeyab_repository(self):
        if not MIRROR.exists():
            pytest.skip("no AlexeyAB/darknet mirror on this machine")
        text = subprocess.run(["git", "-C", str(MIRROR), "show", "HEAD:cfg/yolov3.cfg"], capture_output=True,
                              text=True, check=True).stdout
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            net = parse_cfg(text)
        assert [y.config.replace(extra={}) for y in net.yolo_layers] == [c for c, _ in real_heads(profiles()["yolov3"])]
        assert [y.grid_w for y in net.yolo_layers] == [13, 26, 52]

    def test_variants_change_only_their_set_options(self):
        for profile in profiles().values():
            if profile.base is None:
                continue
            base = profiles()[profile.base]
            changes = {("max_boxes" if k == "max" else k): v for k, v in profile.changes}
            for head, base_head in zip(profile.heads, base.heads, strict=True):
                assert head.config == base_head.config.replace(**changes), profile.name

    def test_options_darknet_treats_specially_all_have_a_profile(self):
        configs = [h.config for p in profiles().values() for h in p.heads]
        ab = [c for c in configs if c.flavor == "alexeyab"]
        assert {c.iou_loss for c in ab} == set(IOU_KINDS)
        assert {c.iou_thresh_kind for c in ab if c.iou_thresh < 1} == set(THRESH_KINDS)
        assert any(c.label_smooth_eps > 0 for c in ab) and any(c.focal_loss for c in ab)
        assert any(c.counters_per_class for c in ab) and any(c.objectness_smooth for c in ab)
        assert any(c.new_coords for c in ab) and {c.scale_x_y for c in ab} >= {1.0, 1.05, 2.0}
        assert any(c.max_delta < 1 for c in ab)  # small: clipping is common
        assert any(c.truth_thresh < 1 for c in ab)
        assert any(c.truth_thresh < 1 for c in configs if c.flavor == "pjreddie")
        assert any(c.classes == 80 for c in configs)
        for flavor in ("alexeyab", "pjreddie"):  # a small max, with boxes past it
            assert any(c.max_boxes < 10 for c in configs if c.flavor == flavor)

    def test_sizes_stay_small(self):
        for profile in profiles().values():
            assert 128 <= min(profile.net) and max(profile.net) <= 320
            assert all(4 <= h.grid_w <= 40 and 4 <= h.grid_h <= 40 for h in profile.heads)
            assert profile.batch[1] <= 2


class TestUserProfiles:
    def test_a_user_file_adds_profiles(self, tmp_path):
        path = write(tmp_path, "profiles:\n  mine/giou:\n    base: yolov4-tiny\n    set: {iou_loss: giou}\n")
        loaded = load_profiles([path])
        assert loaded["mine/giou"].heads[0].config.iou_loss == "giou"
        assert loaded["mine/giou"].description == "yolov4-tiny with iou_loss=giou"
        assert loaded["mine/giou"].source == str(path)
        assert set(profiles()) < set(loaded)

    def test_a_user_file_overrides_by_name_and_variants_follow(self, tmp_path):
        path = write(tmp_path, "profiles:\n  yolov4:\n    description: mine\n    flavor: alexeyab\n    net: 128\n"
                               "    yolo: {classes: 3, num: 1, anchors: [20, 20]}\n"
                               "    heads: [{mask: [0], stride: 16}]\n")
        loaded = load_profiles([path])
        assert loaded["yolov4"].description == "mine" and loaded["yolov4"].heads[0].grid_w == 8
        variant = loaded["yolov4/iou_loss=giou"]
        assert len(variant.heads) == 1 and variant.heads[0].config.classes == 3
        assert variant.heads[0].config.iou_loss == "giou"

    def test_later_files_win_and_defaults_stay_in_their_file(self, tmp_path):
        first = write(tmp_path, "defaults: {count: 3}\nprofiles:\n  a: {base: yolov4, count: 5}\n"
                                "  b:\n    net: 128\n    yolo: {classes: 2}\n    heads: [{mask: [0], stride: 32}]\n",
                      "first.yaml")
        second = write(tmp_path, "profiles:\n  a: {base: yolov4, count: 7}\n", "second.yaml")
        loaded = load_profiles([first, second])
        assert loaded["a"].count == 7 and loaded["b"].count == 3
        assert loaded["yolov4"].count == profiles()["yolov4"].count  # a user's defaults leave shipped ones alone

    def test_features_merge_over_the_base(self, tmp_path):
        path = write(tmp_path, "profiles:\n  m: {base: yolov4/max=5, features: {nonfinite: 0.5}}\n")
        m = load_profiles([path])["m"]
        assert m.features.nonfinite == 0.5 and m.features.over_max == profiles()["yolov4/max=5"].features.over_max


class TestErrors:
    @pytest.mark.parametrize("text, pattern", [
        ("profiles:\n  m: {base: yolov4, sett: {iou_loss: giou}}\n", r"line 2: option 'sett': profile 'm': unknown key"),
        ("profiles:\n  m: {base: yolov4, set: {iou_los: giou}}\n",
         r"profile 'm': unknown \[yolo\] option 'iou_los'"),
        ("profiles:\n  m: {base: yolov4, set: {iou_loss: foo}}\n", r"profile 'm': heads\[0\]: \[yolo\] option refused: "
                                                                 r"unknown iou_loss 'foo'"),
        ("profiles:\n  m: {base: yolov3-pjreddie, set: {iou_loss: giou}}\n",
         r"profile 'm': heads\[0\]: \[yolo\] option refused: iou_loss='giou': pjreddie darknet does not read"),
        ("profiles:\n  m: {base: yolov4, set: {classes: 0}}\n", r"option 'classes': profile 'm'.*at least one class"),
        ("profiles:\n  m: {base: yolov4, set: {classes: two}}\n", r"profile 'm': \[yolo\] option classes: 'two' has "
                                                                "the wrong type"),
        ("profiles:\n  m: {base: nowhere}\n", r"profile 'm': base 'nowhere' is not a known profile"),
        ("profiles:\n  a: {base: b}\n  b: {base: a}\n", r"base chain loops: (a -> b -> a|b -> a -> b)"),
        ("profiles:\n  m: {base: yolov4, features: {plant: 2}}\n", r"profile 'm': features: CaseFeatures.plant=2"),
        ("profiles:\n  m: {base: yolov4, features: {plnt: 0.2}}\n", r"profile 'm': features: .*known features"),
        ("profiles:\n  m: {base: yolov4, batch: [3, 1]}\n", r"profile 'm': batch \[3, 1\]: the low end"),
        ("profiles:\n  m: {base: yolov4, net: 250}\n", r"heads\[0\]: net width 250 is not a multiple of stride 8"),
        ("profiles:\n  m: {base: yolov4, flavor: darknet}\n", r"profile 'm': flavor 'darknet'"),
        ("profiles:\n  m:\n    net: 128\n    yolo: {classes: 1}\n", r"profile 'm': 'heads' must be a non-empty list"),
        ("profiles:\n  m: {base: yolov4}\n  m: {base: yolov3}\n", r"line 3: profile 'm' is defined twice"),
        ("profiles:\n  m: {base: yolov4\n", r"line \d+: not valid YAML"),
        ("profile:\n  m: {base: yolov4}\n", r"unknown key 'profile' in top level"),
        ("version: 2\nprofiles: {}\n", r"version 2 is not supported"),
    ])
    def test_bad_user_files_name_file_line_and_profile(self, tmp_path, text, pattern):
        path = write(tmp_path, text)
        with pytest.raises(ConfigError) as err:
            load_profiles([path])
        assert str(err.value).startswith(str(path))
        assert re.search(pattern, str(err.value)), str(err.value)

    def test_missing_file(self, tmp_path):
        with pytest.raises(ConfigError, match="cannot read profile file"):
            load_profiles([tmp_path / "absent.yaml"])

    def test_unknown_profile_name(self):
        with pytest.raises(ParityError, match=r"unknown profile 'yolov5'; known: yolov4, "):
            get_profile("yolov5")
        with pytest.raises(ParityError, match="unknown profile 'yolov5'"):
            list(suite_cases(["yolov5"]))


class TestProfileCases:
    def test_deterministic_and_seeded(self):
        profile = profiles()["yolov4-tiny"]
        a, b = list(profile_cases(profile, 4, 3)), list(profile_cases(profile, 4, 3))
        assert all(x.input.tobytes() == y.input.tobytes() and x.truth.tobytes() == y.truth.tobytes()
                   and x.meta == y.meta for x, y in zip(a, b, strict=True))
        c = list(profile_cases(profile, 4, 4))
        assert not any(x.input.tobytes() == y.input.tobytes() for x, y in zip(a, c))

    def test_one_case_per_head_per_sample_with_meta(self):
        profile = profiles()["yolov4"]
        cases = list(profile_cases(profile, 3, 0))
        assert len(cases) == 3 * len(profile.heads)
        ids = [case_id(c) for c in cases]
        assert ids[:4] == ["yolov4#0/head0", "yolov4#0/head1", "yolov4#0/head2", "yolov4#1/head0"]
        assert len(set(ids)) == len(ids) and len({c.name for c in cases}) == len(cases)
        for case in cases:
            assert case.path is None
            assert case.meta["profile"] == "yolov4" and case.meta["profile_seed"] == 0 and case.meta["seed"]
            assert case.meta["head"] in (0, 1, 2) and "applied" in case.meta["features"]
            head = profile.heads[case.meta["head"]]
            assert case.config == head.config and case.input.shape[2:] == (head.grid_h, head.grid_w)

    def test_first_samples_force_each_rare_feature(self):
        cases = list(profile_cases(profiles()["yolov4"], 10, 0))
        forced = [c.meta["forced"] for c in cases if c.meta["head"] == 0]
        assert forced[:4] == ["empty_image", "mid_terminator", "over_max", "nonfinite"]
        assert all(c.meta["forced"] in c.meta["features"]["applied"] for c in cases if c.meta["forced"])

    def test_pjreddie_profile_never_forces_class_ids_it_refuses(self):
        forced = {c.meta["forced"] for c in profile_cases(profiles()["yolov3-pjreddie"], 12, 0)}
        assert "class_oob" not in forced and "over_max" not in forced   # max=90: no row past it
        assert "over_max" in {c.meta["forced"] for c in profile_cases(profiles()["yolov3-pjreddie/max=6"], 4, 0)}

    def test_case_id_of_other_cases(self):
        case = next(profile_cases(profiles()["yolov4"], 1, 0))
        bare = Case(case.cfg, case.config, case.flavor, case.input, case.truth,
                    meta={"profile": "p", "sample": 2, "head": 1})
        assert case_id(bare) == "p#2/head1"
        recorded = Case(case.cfg, case.config, case.flavor, case.input, case.truth, meta={}, path="/x/c7.npz")
        assert case_id(recorded) == "c7"


class TestCfgCases:
    def test_real_yolov4_cfg_at_608(self):
        cases = list(cfg_cases(FIXTURES / "yolov4.cfg", 1, 0))
        assert [c.input.shape[2:] for c in cases] == [(76, 76), (38, 38), (19, 19)]
        assert [case_id(c) for c in cases] == ["yolov4.cfg#0/head0", "yolov4.cfg#0/head1", "yolov4.cfg#0/head2"]
        assert all(c.input.shape[0] <= 2 and c.meta["profile"] == "cfg:yolov4.cfg" for c in cases)

    def test_grids_come_from_walking_the_layers(self, tmp_path):
        text = (FIXTURES / "yolov4.cfg").read_text()
        text = re.sub(r"(?m)^width=608$", "width=320", text)
        text = re.sub(r"(?m)^height=608$", "height=256", text)
        path = write(tmp_path, text, "yolov4-small.cfg")
        cases = list(cfg_cases(path, 2, 1))
        assert [c.input.shape[2:] for c in cases[:3]] == [(32, 40), (16, 20), (8, 10)]
        for case in cases:
            res = run_reference(case.config, case.input, case.truth, flavor=case.flavor)
            assert res.output.shape == case.input.shape

    def test_pjreddie_cfg(self):
        cases = list(cfg_cases(FIXTURES / "yolov3-pjreddie.cfg", 1, 0, flavor="pjreddie"))
        assert [c.input.shape[2] for c in cases] == [19, 38, 76] and cases[0].truth.shape[1] == 90
        for case in cases:
            run_reference(case.config, case.input, case.truth, flavor="pjreddie")

    def test_a_cfg_without_yolo(self, tmp_path):
        path = write(tmp_path, "[net]\nwidth=32\nheight=32\nchannels=3\n[convolutional]\nfilters=3\nsize=1\n",
                     "plain.cfg")
        with pytest.raises(ConfigError, match="no \\[yolo\\] section"):
            list(cfg_cases(path, 1, 0))


@lru_cache(maxsize=None)
def default_suite_hits() -> tuple[dict[str, list[set[str]]], int, float]:
    """Branches each head of each shipped profile hits over its default cases (seed 0)."""
    start = time.perf_counter()
    hits: dict[str, list[set[str]]] = {}
    total = 0
    for name in default_profile_names():
        profile = profiles()[name]
        hits[name] = [set() for _ in profile.heads]
        for case in profile_cases(profile, profile.count, 0):
            res = run_reference(case.config, case.input, case.truth, flavor=case.flavor)
            hits[name][case.meta["head"]] |= {k for k, v in res.branches.items() if v}
            total += 1
    return hits, total, time.perf_counter() - start


class TestBranchCoverage:
    def test_default_suite_is_large(self):
        _, total, seconds = default_suite_hits()
        assert total >= 1000, f"{total} cases"
        print(f"default suite: {total} cases through the C reference in {seconds:.1f} s")

    def test_every_enabled_branch_of_every_profile_is_hit(self):
        hits, _, _ = default_suite_hits()
        missing = {}
        for name, per_head in hits.items():
            profile = profiles()[name]
            enabled = set().union(*(profile.enabled_branches(h) for h in range(len(profile.heads))))
            if enabled - set().union(*per_head):
                missing[name] = sorted(enabled - set().union(*per_head))
        assert not missing, missing

    def test_every_head_hits_its_branches(self):
        # Per head, all but max_delta_clip: IoU-loss box deltas stay below about
        # iou_normalizer / (the truth's smallest side), and a coarse head's large
        # anchors only take large truths, so max_delta=2..5 clips there only on
        # CIoU's aspect term (and never with new_coords, which has no exp chain).
        hits, _, _ = default_suite_hits()
        missing = {}
        for name, per_head in hits.items():
            profile = profiles()[name]
            for h, seen in enumerate(per_head):
                left = profile.enabled_branches(h) - seen - {"max_delta_clip"}
                if left:
                    missing[f"{name}/head{h}"] = sorted(left)
        assert not missing, missing

    def test_shipped_yaml_is_the_one_loaded(self):
        assert SHIPPED_YAML.name == "profiles.yaml" and SHIPPED_YAML.exists()
        assert FLT_MAX not in {h.config.max_delta for h in profiles()["yolov4"].heads}


class TestTorchPortOnProfileCases:
    def test_forced_samples_agree_with_the_c_reference(self):
        # The samples forcing the edges a port most easily gets wrong: x == 0 mid-list with
        # real rows after it, real rows past max, NaN/Inf (samples 1-3 of every profile).
        import torch

        from parity.compare import compare
        from parity.diff import Agreement
        from parity.torch import yolo_forward

        from measured import record

        failures = []
        for name in default_profile_names():
            for case in profile_cases(profiles()[name], 4, 0):
                if case.meta["sample"] == 0:
                    continue
                ref = run_reference(case.config, case.input, case.truth, flavor=case.flavor, decisions=True)
                run = yolo_forward(torch.from_numpy(case.input), torch.from_numpy(case.truth), case.config,
                                   case.flavor)
                agreement = Agreement.of(compare(ref, run, case=case, name=case_id(case)))
                record("PyTorch on cpu vs C reference (profile edge samples)", agreement.max_abs, agreement.max_rel)
                if not agreement:
                    failures.append(f"{case_id(case)}: {agreement}")
        assert not failures, "\n".join(failures[:10])
