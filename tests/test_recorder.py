"""parity.record.Recorder: format-v1 cases from a user's PyTorch training loop, replayed against the reference."""
from __future__ import annotations

import importlib.util
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from parity.case import load_case, save_case
from parity.cli import main as cli_main
from parity.cfg import parse_cfg
from parity.config import YoloConfig
from parity.errors import InputError, ParityError
from parity.case import case_bytes
from parity.record import IMPLEMENTATION, Recorder, RecorderWarning
from parity.suite import RunOptions, compare_case
from parity.torch import targets_from_rows

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "record_training.py"


def _example():
    spec = importlib.util.spec_from_file_location("record_training_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ex = _example()
CFG = ex.CFG
CHANNELS = 3 * (5 + ex.CLASSES)   # 24


def _batches(count: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return [ex.make_batch(gen, batch=4) for _ in range(count)]


def _model(seed: int = 0):
    torch.manual_seed(seed)
    return ex.TinyYolo()


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("*.npz"))


def _hooked(out: Path, batches, **kwargs) -> Recorder:
    model = _model()
    with Recorder(heads=[model.head1, model.head2], cfg=CFG, out=out, model=model, **kwargs) as rec:
        for images, targets in batches:
            model(images)
            rec.step(targets)
    return rec


# --- writing -----------------------------------------------------------------------------------------


def test_hooks_and_explicit_record_write_identical_files(tmp_path):
    batches = _batches(3)
    _hooked(tmp_path / "hooks", batches, seed=7)
    model = _model()
    with Recorder(cfg=CFG, out=tmp_path / "explicit", model=model, seed=7) as rec:
        for images, targets in batches:
            rec.record(model(images), targets)
    names = _files(tmp_path / "hooks")
    assert names == [f"step{k:08d}_head{h}.npz" for k in range(3) for h in range(2)]
    assert names == _files(tmp_path / "explicit")
    for name in names:
        assert (tmp_path / "hooks" / name).read_bytes() == (tmp_path / "explicit" / name).read_bytes()


def test_case_contents_and_meta(tmp_path):
    (images, targets), = _batches(1)
    model = _model()
    with Recorder(heads=[model.head1, model.head2], cfg=CFG, out=tmp_path, model=model, seed=3) as rec:
        heads = model(images)
        written = rec.step(targets)
    assert [p.name for p in written] == ["step00000000_head0.npz", "step00000000_head1.npz"]
    assert rec.bytes_written == sum(p.stat().st_size for p in written)
    net = parse_cfg(CFG)
    for h, path in enumerate(written):
        case = load_case(path)
        assert case.output is None and case.delta is None and case.stats == {}
        assert case.config == net.yolo_layers[h].config.replace(batch=4)
        assert case.cfg.count("[yolo]") == 1 and "[net]" in case.cfg
        np.testing.assert_array_equal(case.input, heads[h].detach().numpy())
        assert case.input.dtype == np.float32
        np.testing.assert_array_equal(case.truth, targets_from_rows(targets, 4, 200).numpy())
        assert case.meta["implementation"] == IMPLEMENTATION
        assert case.meta["flavor"] == "alexeyab"
        assert case.meta["generator"] == f"training step 0, head {h}"
        assert case.meta["step"] == 0 and case.meta["head"] == h
        assert case.meta["seed"] == 3 and case.meta["model"] == "TinyYolo"
        assert case.meta["format"] == 1


def test_bytes_are_save_case_content(tmp_path):
    (images, targets), = _batches(1)
    _hooked(tmp_path / "rec", [(images, targets)])
    case = load_case(tmp_path / "rec" / "step00000000_head1.npz")
    save_case(tmp_path / "saved.npz", case)
    again = load_case(tmp_path / "saved.npz")
    for key in ("input", "truth"):
        np.testing.assert_array_equal(getattr(case, key), getattr(again, key))
    assert (case.cfg, case.meta, case.stats) == (again.cfg, again.meta, again.stats)
    assert case_bytes(case) == case_bytes(again)      # reproducible bytes


def test_every_n_steps(tmp_path):
    rec = _hooked(tmp_path, _batches(7), every=3)
    assert _files(tmp_path) == [f"step{k:08d}_head{h}.npz" for k in (0, 3, 6) for h in range(2)]
    assert rec.written == [tmp_path / n for n in _files(tmp_path)]


def test_explicit_step_numbers(tmp_path):
    model = _model()
    (images, targets), = _batches(1)
    with Recorder(cfg=CFG, out=tmp_path, every=100) as rec:
        assert rec.record(model(images), targets, step=150) == []
        assert [p.name for p in rec.record(model(images), targets, step=200)] == \
            ["step00000200_head0.npz", "step00000200_head1.npz"]
        assert rec.record(model(images), targets) == []          # counter continues at 201


def _sizes(tmp_path: Path, batches) -> list[int]:
    rec = _hooked(tmp_path / "uncapped", batches)
    return [p.stat().st_size for p in rec.written]


def test_byte_cap_stops_with_one_warning(tmp_path):
    batches = _batches(5)
    sizes = _sizes(tmp_path, batches)                      # 10 files in write order
    cap = sum(sizes[:3]) + sizes[3] - 1                    # the 4th file would cross it
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rec = _hooked(tmp_path / "capped", batches, max_bytes=cap)
    recorder_warnings = [w for w in caught if issubclass(w.category, RecorderWarning)]
    assert len(recorder_warnings) == 1
    assert "max_bytes" in str(recorder_warnings[0].message)
    assert "step 1, head 1" in str(recorder_warnings[0].message)
    assert _files(tmp_path / "capped") == ["step00000000_head0.npz", "step00000000_head1.npz",
                                           "step00000001_head0.npz"]
    on_disk = sum(p.stat().st_size for p in (tmp_path / "capped").iterdir())
    assert rec.bytes_written == on_disk == sum(sizes[:3]) <= cap
    assert rec.stopped
    assert not list((tmp_path / "capped").glob("*.part"))


def test_byte_cap_exactly_reached_and_hooks_released(tmp_path):
    batches = _batches(3)
    sizes = _sizes(tmp_path, batches)
    model = _model()
    rec = Recorder(heads=[model.head1, model.head2], cfg=CFG, out=tmp_path / "capped", max_bytes=sum(sizes[:4]),
                   model=model)
    with pytest.warns(RecorderWarning, match="max_bytes"):
        for images, targets in batches:
            model(images)
            rec.step(targets)
    assert len(rec.written) == 4 and rec.bytes_written == sum(sizes[:4])
    assert not model.head1._forward_hooks and not model.head2._forward_hooks    # nothing more to capture
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model(batches[0][0])
        assert rec.step(batches[0][1]) == []              # stopped: silent from now on
    rec.close()


def test_byte_cap_below_first_file(tmp_path):
    with pytest.warns(RecorderWarning):
        rec = _hooked(tmp_path, _batches(2), max_bytes=100)
    assert rec.written == [] and rec.bytes_written == 0 and _files(tmp_path) == []


# --- conversions -------------------------------------------------------------------------------------


def test_bnhwc_heads_are_converted(tmp_path):
    batches = _batches(2)
    model = _model()
    with Recorder(cfg=CFG, out=tmp_path / "nchw") as a, Recorder(cfg=CFG, out=tmp_path / "bnhwc", layout="bnhwc") as b:
        for images, targets in batches:
            heads = model(images)
            a.record(heads, targets)
            b.record([t.view(t.shape[0], 3, 5 + ex.CLASSES, *t.shape[2:]).permute(0, 1, 3, 4, 2) for t in heads],
                     targets)
    for name in _files(tmp_path / "nchw"):
        x, y = load_case(tmp_path / "nchw" / name), load_case(tmp_path / "bnhwc" / name)
        np.testing.assert_array_equal(x.input, y.input)
        assert y.meta["layout"] == "bnhwc"


def test_targets_as_rows_truth_or_converter(tmp_path):
    (images, rows), = _batches(1)
    model = _model()
    heads = model(images)
    truth = targets_from_rows(rows, 4, 200)
    with Recorder(cfg=CFG, out=tmp_path / "rows") as rec:
        rec.record(heads, rows)
    with Recorder(cfg=CFG, out=tmp_path / "truth") as rec:
        rec.record(heads, truth)
    with Recorder(cfg=CFG, out=tmp_path / "numpy") as rec:
        rec.record(heads, truth.numpy())
    with Recorder(cfg=CFG, out=tmp_path / "conv", convert_targets=lambda t: t["rows"]) as rec:
        rec.record(heads, {"rows": rows})
    with Recorder(cfg=CFG, out=tmp_path / "five") as rec:      # pjreddie-style 5 columns: track id 0 added
        rec.record(heads, truth[..., :5])
    for name in _files(tmp_path / "rows"):
        ref = (tmp_path / "rows" / name).read_bytes()
        for other in ("truth", "numpy", "conv", "five"):
            assert (tmp_path / other / name).read_bytes() == ref, (other, name)


def test_configs_given_directly(tmp_path):
    configs = [layer.config for layer in parse_cfg(CFG).yolo_layers]
    (images, targets), = _batches(1)
    model = _model()
    with Recorder(cfg=configs, out=tmp_path) as rec:
        rec.record(model(images), targets)
    for h, path in enumerate(rec.written):
        assert load_case(path).config == configs[h].replace(batch=4)


def test_no_grad_forward_is_not_captured(tmp_path):
    model = _model()
    (images, targets), (val_images, _) = _batches(2)
    with Recorder(heads=[model.head1, model.head2], cfg=CFG, out=tmp_path) as rec:
        heads = model(images)
        with torch.no_grad():
            model(val_images)                               # a validation pass in between
        rec.step(targets)
    np.testing.assert_array_equal(load_case(rec.written[0]).input, heads[0].detach().numpy())


def test_single_module_returning_all_heads(tmp_path):
    model = _model()
    (images, targets), = _batches(1)
    with Recorder(heads=model, cfg=CFG, out=tmp_path / "one") as rec:
        model(images)
        rec.step(targets)
    _hooked(tmp_path / "two", [(images, targets)])
    assert [p.name for p in rec.written] == _files(tmp_path / "two")
    for p in rec.written:
        np.testing.assert_array_equal(load_case(p).input, load_case(tmp_path / "two" / p.name).input)


def test_close_removes_hooks(tmp_path):
    model = _model()
    rec = Recorder(heads=[model.head1, model.head2], cfg=CFG, out=tmp_path)
    assert len(model.head1._forward_hooks) == 1
    rec.close()
    rec.close()
    assert not model.head1._forward_hooks and not model.head2._forward_hooks
    with pytest.raises(ParityError, match="closed"):
        rec.step(torch.zeros(0, 6))
    with Recorder(heads=[model.head1, model.head2], cfg=CFG, out=tmp_path) as rec:
        assert model.head2._forward_hooks
    assert not model.head2._forward_hooks


# --- replay ------------------------------------------------------------------------------------------


def test_recorded_cases_replay_with_zero_mismatches(tmp_path):
    rec = _hooked(tmp_path, _batches(4), every=2)
    assert len(rec.written) == 4
    for path in rec.written:
        result = compare_case(load_case(path), RunOptions())
        assert result.error is None and result.skipped is None
        assert result.passed, result.mismatches[:3]
        assert result.decision_mismatches == 0 and result.value_mismatches == 0
        assert sum(cell.elements for cell in result.cells) == load_case(path).input.size
    assert cli_main(["replay", str(tmp_path)]) == 0


def test_naive_candidate_is_caught_on_recorded_cases(tmp_path):
    rec = _hooked(tmp_path, _batches(1))
    result = compare_case(load_case(rec.written[1]), RunOptions(candidate="naive"))
    assert not result.passed and result.causes


def test_example_script_agrees(tmp_path):
    out = subprocess.run([sys.executable, str(EXAMPLE), "--steps", "3", "--out", str(tmp_path / "rec")],
                         capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    lines = [line for line in out.stdout.splitlines() if line.strip()]
    assert lines[-1].startswith("verdict: AGREE"), lines[-5:]
    assert _files(tmp_path / "rec") == [f"step{k:08d}_head{h}.npz" for k in (0, 2) for h in range(2)]


# --- errors ------------------------------------------------------------------------------------------


def test_wrong_number_of_heads(tmp_path):
    model = _model()
    with pytest.raises(InputError, match=r"3 modules for 2 \[yolo\] layers"):
        Recorder(heads=[model.head1, model.head2, model.fuse], cfg=CFG, out=tmp_path)
    (images, targets), = _batches(1)
    with Recorder(cfg=CFG, out=tmp_path) as rec:
        with pytest.raises(InputError, match=r"1 head outputs for 2 \[yolo\] layers"):
            rec.record(model(images)[0], targets)
    with Recorder(heads=model.head1, cfg=CFG, out=tmp_path) as rec:       # one module, one tensor: 1 of 2
        with pytest.raises(InputError, match=r"returned 1 head tensors for 2 \[yolo\] layers"):
            model(images)
    assert _files(tmp_path) == []


def test_head_with_wrong_channels_names_head_and_shape(tmp_path):
    model = _model()
    (images, targets), = _batches(1)
    heads = model(images)
    with Recorder(cfg=CFG, out=tmp_path) as rec:
        with pytest.raises(InputError) as err:
            rec.record([heads[0], heads[1][:, :20]], targets)
    message = str(err.value)
    assert "head 1" in message and "(4, 20, 8, 8)" in message and f"[b, {CHANNELS}, h, w]" in message
    assert _files(tmp_path) == []                           # nothing written for a bad step
    with Recorder(cfg=CFG, out=tmp_path, layout="bnhwc") as rec:
        with pytest.raises(InputError, match=r"head 0 \(.*\): shape \(4, 24, 4, 4\), expected \[b, 3, h, w, 8\]"):
            rec.record(heads, targets)


def test_bad_targets(tmp_path):
    model = _model()
    (images, rows), = _batches(1)
    heads = model(images)
    with Recorder(cfg=CFG, out=tmp_path) as rec:
        for bad in (rows[:, :5], rows[None, None], torch.zeros(5), torch.zeros(4, 10, 7)):
            with pytest.raises(InputError, match=r"targets: shape .* expected darknet truth \[b, max_boxes, 6\]"):
                rec.record(heads, bad, step=0)
        with pytest.raises(InputError, match="truth batch 3 does not match head 0's batch 4"):
            rec.record(heads, torch.zeros(3, 10, 6), step=0)
        outside = rows.clone()
        outside[0, 2] = 1.0                                 # x = 1.0: darknet indexes past the row
        with pytest.raises(InputError, match="step 0, head 0"):
            rec.record(heads, outside, step=0)
    assert _files(tmp_path) == []


def test_bad_arguments(tmp_path):
    (tmp_path / "file").write_text("x")
    for kwargs, match in ((dict(every=0), "every"), (dict(max_bytes=0), "max_bytes"), (dict(layout="nhwc"), "layout"),
                          (dict(out=tmp_path / "file"), "not a folder"), (dict(convert_targets=3), "callable")):
        args = dict(cfg=CFG, out=tmp_path / "rec")
        args.update(kwargs)
        with pytest.raises(InputError, match=match):
            Recorder(**args)
    with pytest.raises(InputError, match="no \\[yolo\\]"):
        Recorder(cfg="[net]\nwidth=64\nheight=64\n", out=tmp_path)
    with Recorder(cfg=[YoloConfig(classes=3, num=1)], out=tmp_path) as rec:
        with pytest.raises(ParityError, match="needs heads="):
            rec.step(torch.zeros(0, 6))
    model = _model()
    with Recorder(heads=[model.head1, model.head2], cfg=CFG, out=tmp_path) as rec:
        with pytest.raises(ParityError, match="no forward output of head 0"):
            rec.step(torch.zeros(0, 6))


def test_pjreddie_flavor_from_a_real_cfg(tmp_path):
    cfg = ROOT / "fixtures" / "cfg" / "yolov3-tiny.cfg"
    gen = torch.Generator().manual_seed(1)
    heads = [torch.randn(2, 255, 13, 13, generator=gen), torch.randn(2, 255, 26, 26, generator=gen)]
    rows = torch.tensor([[0, 5, 0.3, 0.4, 0.2, 0.3], [0, 79, 0.7, 0.2, 0.05, 0.1], [1, 1, 0.5, 0.5, 0.6, 0.7]])
    with Recorder(cfg=cfg, flavor="pjreddie", out=tmp_path) as rec:
        rec.record(heads, rows)
    for h, path in enumerate(rec.written):
        case = load_case(path)
        assert case.flavor == "pjreddie" and case.config.max_boxes == 90 and case.truth.shape == (2, 90, 6)
        assert f"yolov3-tiny.cfg line {(132, 174)[h]}" in case.meta["cfg_source"]
        assert compare_case(case, RunOptions()).passed


def test_grid_differing_from_the_cfg_warns_once(tmp_path):
    (images, targets), = _batches(1)
    model = _model()
    heads = model(images)
    with Recorder(cfg=CFG, out=tmp_path) as rec:
        small = [torch.nn.functional.interpolate(heads[0], size=(5, 5)), heads[1]]
        with pytest.warns(RecorderWarning, match="head 0 .*grid 5x5 .*differs from the cfg's 4x4"):
            rec.record(small, targets)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            rec.record(small, targets)
    assert load_case(rec.written[0]).input.shape == (4, CHANNELS, 5, 5)
