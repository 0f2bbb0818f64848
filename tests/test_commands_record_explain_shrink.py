"""`record`, `explain` and `shrink`: cases written in format v1, one slot's reasoning, minimal failing cases."""
from __future__ import annotations

import dataclasses
import textwrap
from pathlib import Path

import numpy as np
import pytest

import parity
from parity.case import load_case
from parity.cli import main
from parity.commands.shrink import failing_kinds
from parity.config import YoloConfig
from parity.generate import CaseShape, random_case
from parity.layer_input import active_rows, check_layer_input
from parity.reference import run_reference
from parity.roles import ROLE_BEST_ANCHOR, ROLE_EXTRA_ANCHOR, ROLE_IGNORED
from parity.replay import replay_case, replay_paths, shared_recorded_dir
from parity.shrink import _crop, _drop_rows, _keep_classes, case_size, shrink_case
from parity.cases import CaseRef, build_case
from parity.suite import RunOptions, compare_case

REPO = Path(__file__).resolve().parent.parent
CFG_DIR = REPO / "fixtures" / "cfg"
DEBIAN_LIB = Path("/usr/lib/darknet/libdarknet.so")
# A small AlexeyAB case (2 images, 7 truths, 8x8, 20 classes) with best-anchor and ignored slots.
SMALL = "yolov4-tiny#2"
# A small pjreddie case (1 image, 6 truths, 10x10) with ignored slots.
SMALL_PJ = "yolov3-pjreddie/max=6#6"

WRONG = '''
"""Deliberately wrong ports: darknet's delta with one known mistake each."""
from parity.candidates import parity_delta
from parity.torch import yolo_forward


def doubled_x(input, truth, config):
    delta = parity_delta(input, truth, config).clone()
    stride = 5 + config.classes
    for a in range(config.n):
        delta[:, a * stride] *= 2
    return delta


def ignored_not_zeroed(input, truth, config):
    """The plain negative -p written where darknet ignores the objectness."""
    run = yolo_forward(input, truth, config)
    output, delta = run.output, run.delta.clone()
    stride = 5 + config.classes
    for a in range(config.n):
        ignored = (run.roles[:, a] & 1) != 0
        obj = delta[:, a * stride + 4]
        obj[ignored] = -output[:, a * stride + 4][ignored] * config.obj_normalizer
    return delta
'''


@pytest.fixture(scope="module")
def wrong(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("candidates") / "wrong_ports.py"
    path.write_text(textwrap.dedent(WRONG))
    return path


def _case(spec: str):
    source, index = spec.rsplit("#", 1)
    return build_case(CaseRef("profile", source, int(index), 0, int(index) + 1))


def _slot(case, flag: int) -> tuple[int, int, int, int]:
    roles = run_reference(case.config, case.input, case.truth, flavor=case.flavor).roles
    return tuple(int(v) for v in np.argwhere(roles & flag)[0])


# ---------------------------------------------------------------- record


class TestRecord:
    def test_profile_cases_round_trip_through_load_case_and_replay(self, tmp_path, capsys):
        assert main(["record", "--profile", "yolov4-tiny", "--cases", "2", "--seed", "3", "--out", str(tmp_path)]) == 0
        out = capsys.readouterr().out
        files = sorted(tmp_path.glob("*.npz"))
        # 2 samples x 2 heads, named after the case id and the seed
        assert [f.name for f in files] == [f"yolov4-tiny_{s}_head{h}_seed3.npz" for s in (0, 1) for h in (0, 1)]
        assert "4 case(s) written" in out and "yolov4-tiny#1/head1" in out
        for path in files:
            case = load_case(path)
            assert case.output is not None and case.delta is not None and "cost" in case.stats
            meta = case.meta
            assert meta["implementation"] == "darknet-parity C reference (alexeyab semantics)"
            assert meta["flavor"] == "alexeyab" and meta["profile"] == "yolov4-tiny"
            assert meta["generator"].startswith("parity.profiles yolov4-tiny#") and meta["seed"] is not None
            assert meta["parity_version"] == parity.__version__ and meta["profile_seed"] == 3
        results = list(replay_paths([tmp_path], reference="c"))
        assert len(results) == 4 and all(results), results

    def test_the_same_command_writes_the_same_files(self, tmp_path, capsys):
        for folder in ("a", "b"):
            argv = ["record", "--profile", "yolov3-pjreddie", "--cases", "1", "--out", str(tmp_path / folder)]
            assert main(argv) == 0
        names = sorted(p.name for p in (tmp_path / "a").glob("*.npz"))
        assert names == sorted(p.name for p in (tmp_path / "b").glob("*.npz")) and len(names) == 3
        for name in names:
            a, b = load_case(tmp_path / "a" / name), load_case(tmp_path / "b" / name)
            np.testing.assert_array_equal(a.input, b.input)
            np.testing.assert_array_equal(a.delta, b.delta)
            assert a.meta["implementation"] == "darknet-parity C reference (pjreddie semantics)"

    def test_cfg_cases_at_the_cfgs_grids(self, tmp_path, capsys):
        cfg = CFG_DIR / "yolov4-tiny.cfg"
        assert main(["record", "--cfg", str(cfg), "--cases", "1", "--out", str(tmp_path)]) == 0
        files = sorted(tmp_path.glob("*.npz"))
        assert [f.name for f in files] == ["yolov4-tiny.cfg_0_head0_seed0.npz", "yolov4-tiny.cfg_0_head1_seed0.npz"]
        grids = sorted(load_case(f).input.shape[2] for f in files)
        assert grids == [13, 26]                       # 416 / 32 and 416 / 16
        assert load_case(files[0]).meta["profile"] == "cfg:yolov4-tiny.cfg"
        assert all(replay_paths([tmp_path], reference="c"))

    def test_cfg_cases_with_the_pjreddie_flavor(self, tmp_path, capsys):
        cfg = CFG_DIR / "yolov3-pjreddie.cfg"
        assert main(["record", "--cfg", str(cfg), "--cases", "1", "--flavor", "pjreddie", "--out", str(tmp_path)]) == 0
        cases = [load_case(f) for f in sorted(tmp_path.glob("*.npz"))]
        assert len(cases) == 3 and {c.flavor for c in cases} == {"pjreddie"}
        assert all(replay_paths([tmp_path], reference="c"))

    def test_from_files_re_records_their_input_and_truth(self, tmp_path, capsys):
        assert main(["record", "--profile", "yolov4-tiny", "--cases", "1", "--out", str(tmp_path / "a")]) == 0
        assert main(["record", "--from", str(tmp_path / "a"), "--out", str(tmp_path / "b")]) == 0
        for old in sorted((tmp_path / "a").glob("*.npz")):
            new = load_case(tmp_path / "b" / old.name)
            before = load_case(old)
            np.testing.assert_array_equal(new.input, before.input)
            np.testing.assert_array_equal(new.delta, before.delta)
            assert new.meta["recorded_from"]["path"] == str(old)
            assert new.meta["profile"] == "yolov4-tiny" and new.meta["generator"] == before.meta["generator"]
        assert all(replay_paths([tmp_path / "b"], reference="c"))

    def test_from_an_ofast_recording_gives_a_case_that_replays(self, tmp_path, capsys):
        recorded = shared_recorded_dir()
        source = recorded / "alexeyab" / "nan_inf_s1053.npz" if recorded else None
        if source is None or not source.is_file():
            pytest.skip("no recorded dev set (../shared/recorded)")
        assert main(["record", "--from", str(source), "--out", str(tmp_path)]) == 0
        case = load_case(tmp_path / "nan_inf_s1053.npz")
        assert "-Ofast" not in case.meta["build"] and "-Ofast" in case.meta["recorded_from"]["build"]
        result = replay_case(case)
        assert result and result.skipped is None

    @pytest.mark.skipif(not DEBIAN_LIB.exists(), reason="Debian's libdarknet (apt-get install darknet) is absent")
    def test_with_libdarknet_the_library_is_the_implementation(self, tmp_path, capsys):
        assert main(["record", "--profile", "yolov3-pjreddie", "--cases", "1", "--reference", "libdarknet",
                     "--out", str(tmp_path)]) == 0
        case = load_case(sorted(tmp_path.glob("*.npz"))[0])
        assert case.meta["implementation"] == str(DEBIAN_LIB) and case.meta["reference"] == "libdarknet"
        assert all(replay_paths([tmp_path], reference="c"))

    @pytest.mark.parametrize("argv, message", [
        (["--profile", "no-such-profile"], "unknown profile 'no-such-profile'; known: yolov4"),
        (["--cfg", "missing.cfg"], "missing.cfg: no such cfg file"),
        (["--from", "missing.npz"], "missing.npz: no such case file or folder"),
        ([], "nothing to record"),
        (["--profile", "yolov4", "--cases", "0"], "--cases 0: must be at least 1"),
        (["--profile", "yolov4", "--darknet-lib", "/x.so"], "need --reference libdarknet"),
    ])
    def test_bad_options_exit_2_and_write_nothing(self, tmp_path, capsys, argv, message):
        assert main(["record", *argv, "--out", str(tmp_path / "out")]) == 2
        assert message in capsys.readouterr().err
        assert not (tmp_path / "out").exists()

    def test_out_is_required(self, capsys):
        with pytest.raises(SystemExit) as exc:
            main(["record", "--profile", "yolov4"])
        assert exc.value.code == 2


# ---------------------------------------------------------------- explain


class TestExplain:
    def test_a_best_anchor_slot(self, capsys):
        case = _case(SMALL)
        b, a, j, i = _slot(case, ROLE_BEST_ANCHOR)
        assert main(["explain", SMALL, "--cell", f"{b},{a},{j},{i}"]) == 0
        out = capsys.readouterr().out
        for text in ("predicted box: x=", "IoU of the predicted box with each truth", "class in range", "<- best",
                     "class-match test (alexeyab): largest class probability", "ignore_thresh", "truth_thresh",
                     "iou_thresh", "iou_thresh_kind", "path darknet took:", "through its best anchor over all anchors",
                     "truths assigned at this slot", "best anchor over all anchors", "shape IoU", "role: ",
                     "borderline: "):
            assert text in out, text
        delta = run_reference(case.config, case.input, case.truth, flavor=case.flavor).delta
        E = 5 + case.config.classes
        for e in range(5):                                  # x, y, w, h, obj
            assert f"{float(delta[b, a * E + e, j, i]):.6g}" in out
        cls = [k for k in range(case.config.classes) if delta[b, a * E + 5 + k, j, i] != 0]
        assert cls and all(f"class {k}" in out for k in cls)

    def test_an_ignored_slot(self, capsys):
        case = _case(SMALL)
        b, a, j, i = _slot(case, ROLE_IGNORED)
        assert main(["explain", SMALL, "--cell", f"{b},{a},{j},{i}"]) == 0
        out = capsys.readouterr().out
        assert "IoU > ignore_thresh 0.7: ignored" in out and "role: ignored" in out

    def test_pjreddie_has_no_class_match_test(self, capsys):
        case = _case(SMALL_PJ)
        b, a, j, i = _slot(case, ROLE_IGNORED)
        assert main(["explain", SMALL_PJ, "--cell", f"{b},{a},{j},{i}"]) == 0
        out = capsys.readouterr().out
        assert "class-match test: none" in out and "ignored" in out

    def test_sample_head_ids_name_the_same_case(self, capsys):
        # yolov4-tiny has 2 heads: case 2 of the sweep is sample 1, head 0
        assert main(["explain", SMALL, "--cell", "0,0,0,0"]) == 0
        flat = capsys.readouterr().out
        assert main(["explain", "yolov4-tiny#1/head0", "--cell", "0,0,0,0"]) == 0
        by_sample = capsys.readouterr().out
        assert "(yolov4-tiny#1/head0)" in flat
        assert flat.split("\n", 1)[1] == by_sample.split("\n", 1)[1]

    def test_a_case_file(self, tmp_path, capsys):
        assert main(["record", "--profile", "yolov4-tiny", "--cases", "2", "--out", str(tmp_path)]) == 0
        capsys.readouterr()
        path = tmp_path / "yolov4-tiny_1_head0_seed0.npz"
        assert main(["explain", str(path), "--cell", "0,0,0,0"]) == 0
        out = capsys.readouterr().out
        assert "recorded delta" in out and str(path) in out

    def test_a_recorded_darknet_case(self, capsys):
        recorded = shared_recorded_dir()
        files = sorted((recorded / "alexeyab-O2").glob("*.npz")) if recorded else []
        if not files:
            pytest.skip("no recorded dev set (../shared/recorded/alexeyab-O2)")
        for path in files:
            case = load_case(path)
            roles = run_reference(case.config, case.input, case.truth, flavor=case.flavor).roles
            hits = np.argwhere(roles & ROLE_EXTRA_ANCHOR)
            if len(hits):
                break
        else:
            pytest.skip("no recorded case assigns an extra anchor")
        b, a, j, i = (int(v) for v in hits[0])
        assert main(["explain", str(path), "--cell", f"{b},{a},{j},{i}"]) == 0
        out = capsys.readouterr().out
        assert "extra anchor (iou_thresh" in out and "through iou_thresh" in out and "recorded delta" in out
        E = 5 + case.config.classes
        assert f"{float(case.delta[b, a * E, j, i]):.6g}" in out     # the recording's x delta

    @pytest.mark.skipif(not DEBIAN_LIB.exists(), reason="Debian's libdarknet (apt-get install darknet) is absent")
    def test_libdarknet_gives_the_deltas(self, capsys):
        assert main(["explain", SMALL_PJ, "--cell", "0,0,0,0", "--reference", "libdarknet"]) == 0
        assert "reference: libdarknet" in capsys.readouterr().out

    @pytest.mark.parametrize("cell, message", [
        ("2,0,0,0", "image index b=2 is outside the valid range 0..1"),
        ("0,3,0,0", "anchor (position in mask) index a=3 is outside the valid range 0..2"),
        ("0,0,8,0", "row index j=8 is outside the valid range 0..7"),
        ("0,0,0,-1", "column index i=-1 is outside the valid range 0..7"),
        ("0,0,0", "expected four integers b,a,j,i"),
        ("0,0,x,0", "expected four integers b,a,j,i"),
    ])
    def test_bad_cell_exits_2_naming_the_index_and_range(self, capsys, cell, message):
        assert main(["explain", SMALL, "--cell", cell]) == 2
        assert message in capsys.readouterr().err

    @pytest.mark.parametrize("spec, message", [
        ("nope#1", "unknown profile 'nope'"),
        ("missing.npz", "missing.npz: no such case file"),
        ("yolov4-tiny", "expected a case file (.npz) or a case id"),
        ("yolov4-tiny#0/head5", "head must lie in 0..1"),
    ])
    def test_bad_case_exits_2(self, capsys, spec, message):
        assert main(["explain", spec, "--cell", "0,0,0,0"]) == 2
        assert message in capsys.readouterr().err


# ---------------------------------------------------------------- shrink: the algorithm


def _mse_case(w: int = 7, seed: int = 5):
    config = YoloConfig(classes=3, num=3, mask=(0, 1, 2), anchors=(30, 40, 90, 60, 150, 200), net_w=416, net_h=416,
                        iou_loss="mse", ignore_thresh=0.5)
    return random_case(seed, config, shape=CaseShape(batch=1, h=6, w=w, max_truths=4))


class TestShrinkCase:
    def test_reaches_the_smallest_case_the_predicate_allows(self):
        case = _case(SMALL)
        before = (case.input.copy(), case.truth.copy())
        calls = []

        def has_a_truth(c):
            calls.append(1)
            return case_size(c)["truths"] >= 1

        small, steps = shrink_case(case, has_a_truth, 500)
        size = case_size(small)
        dims = ("batch", "truths", "classes", "anchors", "w", "h")
        assert [size[d] for d in dims] == [1] * len(dims)
        assert steps and len(calls) <= 500
        check_layer_input(small.config, small.input, small.truth, small.flavor)
        assert small.delta is None and small.output is None
        np.testing.assert_array_equal(case.input, before[0])       # the original is untouched
        np.testing.assert_array_equal(case.truth, before[1])

    def test_max_steps_bounds_the_tries(self):
        case = _case(SMALL)
        calls = []
        small, steps = shrink_case(case, lambda c: calls.append(1) or True, 3)
        assert len(calls) == 3 and len(steps) == 3
        small, steps = shrink_case(case, lambda c: True, 0)
        assert steps == [] and small.input.shape == case.input.shape

    def test_every_tried_case_is_one_the_reference_accepts(self):
        def accepted(c):
            run_reference(c.config, c.input, c.truth, flavor=c.flavor)   # raises on a case it refuses
            return case_size(c)["truths"] >= 2

        small, steps = shrink_case(_case(SMALL_PJ), accepted, 200)
        assert case_size(small)["truths"] == 2 and small.flavor == "pjreddie"

    @pytest.mark.parametrize("width, start, keep, all_inside", [
        (7, 0, 6, True),     # 416*6/7 is fractional: anchor widths rescaled; every truth stays
        (8, 0, 4, True),     # 416*4/8 = 208 exactly; every truth stays
        (8, 1, 3, True),
        (7, 2, 4, False),    # truths leave the window and are dropped
    ])
    def test_cropping_keeps_the_stride_and_every_decision_in_the_window(self, width, start, keep, all_inside):
        case = _mse_case(width)
        crop = _crop(case, "x", start, keep)
        cfg, new = case.config, crop.config
        # the stride in network pixels is kept (exactly, or through the anchors when net*keep/W is fractional)
        assert new.anchors[0] * keep / new.net_w == pytest.approx(cfg.anchors[0] * width / cfg.net_w, rel=1e-12)
        assert new.net_h == cfg.net_h and crop.input.shape[3] == keep
        old_rows = active_rows(case.truth, cfg.max_boxes)[0]
        kept = [r for r in np.flatnonzero(old_rows) if start <= int(case.truth[0, r, 0] * width) < start + keep]
        assert int(active_rows(crop.truth, new.max_boxes)[0].sum()) == len(kept)
        for r_new, r_old in enumerate(kept):
            np.testing.assert_allclose(crop.truth[0, r_new, 0], (case.truth[0, r_old, 0] * width - start) / keep,
                                       rtol=1e-6)
            np.testing.assert_allclose(crop.truth[0, r_new, 2], case.truth[0, r_old, 2] * width / keep, rtol=1e-6)
        assert (len(kept) == int(old_rows.sum())) == all_inside
        if all_inside:                               # no truth left the window: darknet decides the same there
            ref_old = run_reference(cfg, case.input, case.truth)
            ref_new = run_reference(new, crop.input, crop.truth)
            np.testing.assert_array_equal(ref_new.roles, ref_old.roles[..., start:start + keep])
            np.testing.assert_array_equal(ref_new.delta != 0, ref_old.delta[..., start:start + keep] != 0)

    def test_dropping_a_row_shifts_the_rest_up_as_darknet_reads_them(self):
        case = _mse_case()
        truth = np.zeros_like(case.truth)
        a, b, c = [0.1, 0.2, 0.1, 0.1, 1, 0], [0.5, 0.5, 0.2, 0.2, 2, 0], [0.7, 0.7, 0.2, 0.2, 0, 0]
        truth[0, :4] = [a, b, [0] * 6, c]          # c sits after the x == 0 terminator: not read
        case = dataclasses.replace(case, truth=truth)
        out = _drop_rows(case, 0, [0])
        np.testing.assert_array_equal(out.truth[0, :4], np.array([b, [0] * 6, c, [0] * 6], np.float32))
        assert active_rows(out.truth, out.config.max_boxes)[0].tolist()[:3] == [True, False, False]

    def test_reducing_classes_remaps_ids_and_slices_every_anchor_block(self):
        case = _mse_case()
        case = dataclasses.replace(case, config=case.config.replace(counters_per_class=(5, 6, 7)))
        truth = np.zeros_like(case.truth)
        truth[0, :2] = [[0.3, 0.3, 0.1, 0.1, 2, 0], [0.6, 0.6, 0.1, 0.1, 2, 0]]
        case = dataclasses.replace(case, truth=truth)
        out = _keep_classes(case, [2])
        assert out.config.classes == 1 and out.config.counters_per_class == (7,)
        assert out.truth[0, :2, 4].tolist() == [0, 0]
        E_old, E_new = 8, 6
        for a in range(3):
            np.testing.assert_array_equal(out.input[:, a * E_new:a * E_new + 5],
                                          case.input[:, a * E_old:a * E_old + 5])
            np.testing.assert_array_equal(out.input[:, a * E_new + 5], case.input[:, a * E_old + 7])
        assert "classes=1" in out.cfg
        run_reference(out.config, out.input, out.truth)


# ---------------------------------------------------------------- shrink: the command


class TestShrinkCommand:
    def test_a_doubled_x_term_shrinks_to_a_small_case_that_still_fails(self, tmp_path, capsys, wrong):
        out_path = tmp_path / "min.npz"
        spec = f"{wrong}:doubled_x"
        assert main(["shrink", SMALL, "--candidate", spec, "--convention", "delta", "--out", str(out_path)]) == 1
        out = capsys.readouterr().out
        assert "keeping value mismatches in the x term" in out and "before" in out and "after" in out
        assert f"wrote {out_path}" in out and "remaining mismatches per term" in out
        small, original = load_case(out_path), _case(SMALL)
        before, after = case_size(original), case_size(small)
        assert after["elements"] < before["elements"]
        assert any(after[k] < before[k] for k in ("batch", "truths", "classes", "w", "h"))
        run_reference(small.config, small.input, small.truth, flavor=small.flavor)      # a valid case
        assert replay_case(small)                                  # output/delta/stats are the reference's
        diff = compare_case(small, RunOptions(candidate=spec, convention="delta", diagnose=False))
        assert not diff.passed and ("x", "value") in failing_kinds(diff)
        assert small.meta["shrunk_from"] == SMALL and small.meta["shrink_steps"]
        assert small.meta["implementation"] == "darknet-parity C reference (alexeyab semantics)"

    def test_objectness_written_where_darknet_ignores_keeps_a_decision_mismatch(self, tmp_path, capsys, wrong):
        out_path = tmp_path / "min.npz"
        spec = f"{wrong}:ignored_not_zeroed"
        assert main(["shrink", SMALL_PJ, "--candidate", spec, "--convention", "delta", "--out", str(out_path)]) == 1
        assert "keeping decision mismatches in the obj term" in capsys.readouterr().out
        small = load_case(out_path)
        assert small.flavor == "pjreddie" and case_size(small)["elements"] < case_size(_case(SMALL_PJ))["elements"]
        diff = compare_case(small, RunOptions(candidate=spec, convention="delta", diagnose=False))
        assert ("obj", "decision") in failing_kinds(diff)
        roles = run_reference(small.config, small.input, small.truth, flavor="pjreddie").roles
        assert (roles & ROLE_IGNORED).any()

    def test_a_case_file_shrinks_next_to_itself_within_max_steps(self, tmp_path, capsys, wrong):
        assert main(["record", "--profile", "yolov4-tiny", "--cases", "2", "--out", str(tmp_path)]) == 0
        source = tmp_path / "yolov4-tiny_1_head0_seed0.npz"
        capsys.readouterr()
        assert main(["shrink", str(source), "--candidate", f"{wrong}:doubled_x", "--convention", "delta",
                     "--max-steps", "4"]) == 1
        small = load_case(tmp_path / "yolov4-tiny_1_head0_seed0-min.npz")
        assert 1 <= len(small.meta["shrink_steps"]) <= 4 and small.meta["shrunk_from"] == str(source)

    def test_a_correct_candidate_agrees_and_nothing_is_written(self, tmp_path, capsys, monkeypatch):
        monkeypatch.chdir(tmp_path)
        assert main(["shrink", SMALL, "--candidate", "parity"]) == 0
        assert "agrees" in capsys.readouterr().out
        assert not list(tmp_path.iterdir())

    @pytest.mark.parametrize("argv, message", [
        ([SMALL, "--max-steps", "-1"], "--max-steps -1: must be >= 0"),
        (["missing.npz"], "missing.npz: no such case file"),
        ([SMALL, "--candidate", "no_such_module:fn"], "candidate module 'no_such_module' not found"),
    ])
    def test_bad_input_exits_2(self, capsys, argv, message):
        assert main(["shrink", *argv]) == 2
        assert message in capsys.readouterr().err


def test_help_lists_the_three_commands(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "record" in out and "explain" in out and "shrink" in out
    for name, first_line in (("record", "Record cases"), ("explain", "Explain darknet's reasoning"),
                             ("shrink", "Reduce a case your candidate fails on")):
        with pytest.raises(SystemExit) as exc:
            main([name, "--help"])
        assert exc.value.code == 0
        assert first_line in capsys.readouterr().out
