"""Recordings of a real darknet training run (fixtures/darknet-train/, ``record --darknet-train``).

The committed recordings come from Debian's library training yolov3-tiny
(128x128, batch 4, seed 0, 3 iterations) on the package's photographs with
the boxes of fixtures/darknet-train/labels.yaml. They must load with the
right provenance and replay through the C reference and the PyTorch port
with no decision mismatch and every element within 1e-5 + 1e-4*|darknet|.

With Debian's library present (CI installs it: there its absence FAILS;
elsewhere these tests skip), a fresh recording must be deterministic, agree
with the committed one, agree with the C reference, and be exactly what the
library's own forward_yolo_layer gives on the recorded input. Bad options
give a ParityError naming the problem; most are caught before darknet runs,
so those tests need no library.
"""
from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from parity.compare import compare
from parity.diff import Agreement
from parity.tolerance import within
from parity.case import load_case
from parity.cli import main as cli_main
from parity.darknet_train import (DEFAULT_CFG, DEFAULT_IMAGE_DIR, DEFAULT_LABELS, TrainSettings, case_stem,
                                  load_labels, record_training, write_recording)
from parity.errors import ParityError
from parity.backends.darknet_library import DEFAULT_INCLUDE, DEFAULT_LIB
from parity.reference import run_reference
from parity.replay import FIXTURES_DIR, case_paths
from parity.torch import yolo_forward

from measured import record

FOLDER = FIXTURES_DIR / "darknet-train"
FIXTURES = sorted(FOLDER.glob("*.npz"))
ITERATIONS, LAYERS = 3, (16, 23)
GRIDS = {16: 4, 23: 8}               # yolov3-tiny at 128: strides 32 and 16
MASKS = {16: (3, 4, 5), 23: (0, 1, 2)}
PHOTOGRAPHS = ("dog.jpg", "eagle.jpg", "giraffe.jpg", "horses.jpg", "kite.jpg", "person.jpg", "scream.jpg")


def _agree(label: str, agreement) -> None:
    record(label, agreement.max_abs, agreement.max_rel)
    assert agreement.decision_mismatches == 0, agreement
    assert agreement.value_mismatches == 0, agreement
    assert not agreement.stats_mismatches, agreement


def _replay_c(case):
    res = run_reference(case.config, case.input, case.truth, flavor=case.flavor, decisions=True)
    return Agreement.of(compare(case.recorded_run(), res, case=case, decisions=res))


def _replay_torch(case):
    run = yolo_forward(torch.from_numpy(case.input), torch.from_numpy(case.truth), case.config, flavor=case.flavor)
    judge = run_reference(case.config, case.input, case.truth, flavor=case.flavor, decisions=True)
    return Agreement.of(compare(case.recorded_run(), run, case=case, decisions=judge))


# --------------------------------------------------------------------------
# The committed recordings


class TestCommittedRecordings:
    def test_one_file_per_iteration_and_yolo_layer_under_3_mb(self):
        names = {p.name for p in FIXTURES}
        expected = {f"yolov3-tiny-128-b4-seed0-it{it}-layer{layer}.npz" for it in range(ITERATIONS) for layer in LAYERS}
        assert names == expected
        assert sum(p.stat().st_size for p in FIXTURES) < 3_000_000

    @pytest.mark.parametrize("path", FIXTURES, ids=lambda p: p.stem)
    def test_meta_names_the_darknet_training_run(self, path):
        case = load_case(path)
        meta = case.meta
        assert meta["implementation"] == "pjreddie/darknet"
        assert case.flavor == meta["flavor"] == "pjreddie"
        assert meta["commit"] == "61c9d02e"                    # Debian's 0.0.0+git20180914.61c9d02e
        assert "Debian package darknet 0.0.0+git20180914.61c9d02e" in meta["build"]
        assert "-Ofast" in meta["build"]                       # its FTZ/DAZ mode was seen on loading
        assert meta["generator"].startswith("darknet training run: yolov3-tiny.cfg at 128x128, batch 4, seed 0")
        assert meta["darknet_cfg"] == os.fspath(DEFAULT_CFG)
        assert meta["labels"] == "fixtures/darknet-train/labels.yaml"
        assert (meta["size"], meta["batch"], meta["seed"], meta["iterations"]) == (128, 4, 0, ITERATIONS)
        assert meta["net_overrides"] == {"width": "128", "height": "128", "batch": "4", "subdivisions": "1",
                                         "burn_in": "0", "policy": "constant"}
        assert path.stem == case_stem(case)
        assert f"iteration {meta['iteration']} of {ITERATIONS}" in meta["generator"]
        assert meta["layer"] in LAYERS and meta["input_layer"] == meta["layer"] - 1
        assert meta["learning_rate"] == 0.001                  # the cfg's, with burn_in 0
        assert meta["seen"] == 4 * (meta["iteration"] + 1)
        assert [Path(p).name for p in meta["run_images"]] == list(PHOTOGRAPHS)
        first = meta["iteration"] * 4
        assert meta["images"] == [PHOTOGRAPHS[(first + j) % 7] for j in range(4)]

    @pytest.mark.parametrize("path", FIXTURES, ids=lambda p: p.stem)
    def test_cfg_and_arrays_are_the_layers(self, path):
        case = load_case(path)
        layer, g = case.meta["layer"], GRIDS[case.meta["layer"]]
        c = case.config
        assert (c.classes, c.num, c.mask, c.net_w, c.net_h, c.batch, c.max_boxes) == (80, 6, MASKS[layer], 128, 128,
                                                                                       4, 90)
        assert (c.ignore_thresh, c.truth_thresh) == (0.7, 1.0)
        assert c.anchors == (10, 14, 23, 27, 37, 58, 81, 82, 135, 169, 344, 319)
        for name in ("input", "output", "delta"):
            arr = getattr(case, name)
            assert arr.shape == (4, 255, g, g) and arr.dtype == np.float32 and np.isfinite(arr).all(), name
        assert case.truth.shape == (4, 90, 6)
        assert np.isfinite(case.stats["cost"]) and case.stats["cost"] > 0

    @pytest.mark.parametrize("path", FIXTURES, ids=lambda p: p.stem)
    def test_truth_is_the_labels_file(self, path):
        case = load_case(path)
        labels = load_labels(DEFAULT_LABELS)
        for b, image in enumerate(case.meta["images"]):
            boxes = labels[image]
            rows = np.array([[x.x, x.y, x.w, x.h, x.cls, 0] for x in boxes], dtype=np.float32).reshape(-1, 6)
            np.testing.assert_array_equal(case.truth[b, :len(boxes)], rows)
            assert not case.truth[b, len(boxes):].any()       # zero padding: x == 0 ends the list

    @pytest.mark.parametrize("path", FIXTURES, ids=lambda p: p.stem)
    def test_replays_through_the_c_reference(self, path):
        _agree("C reference vs darknet training run", _replay_c(load_case(path)))

    @pytest.mark.parametrize("path", FIXTURES, ids=lambda p: p.stem)
    def test_replays_through_the_pytorch_port(self, path):
        _agree("parity.torch vs darknet training run", _replay_torch(load_case(path)))

    def test_the_default_suite_replays_them(self):
        from parity.commands.run import default_recordings

        assert os.fspath(FIXTURES_DIR) in default_recordings()
        assert set(FIXTURES) <= set(case_paths([FIXTURES_DIR]))

    def test_labels_name_coco_classes(self):
        labels = load_labels(DEFAULT_LABELS)
        assert set(labels) == set(PHOTOGRAPHS)
        assert sum(len(b) for b in labels.values()) == 29
        names = DEFAULT_IMAGE_DIR / "coco.names"
        if names.is_file():
            coco = names.read_text().splitlines()
            for image, boxes in labels.items():
                for box in boxes:
                    assert coco[box.cls] == box.name, (image, box)


# --------------------------------------------------------------------------
# Fresh recordings (Debian's library)


@pytest.fixture(scope="module")
def debian():
    """Debian's library, cfg and photographs; skip without them, except under CI where they must exist."""
    needed = [DEFAULT_LIB, DEFAULT_INCLUDE / "darknet.h", DEFAULT_CFG] + [DEFAULT_IMAGE_DIR / p for p in PHOTOGRAPHS]
    missing = [os.fspath(p) for p in needed if not p.is_file()]
    if missing:
        reason = f"Debian's darknet package is not installed ({', '.join(missing[:3])} missing); apt-get install darknet"
        if os.environ.get("CI"):
            pytest.fail(f"{reason} (CI installs it: this must not be missing)")
        pytest.skip(reason)


def _committed_settings(iterations: int) -> TrainSettings:
    """The committed run's settings, read back from its meta, for its first ``iterations``."""
    meta = load_case(FIXTURES[0]).meta
    return TrainSettings(cfg=Path(meta["darknet_cfg"]), images=tuple(Path(p) for p in meta["run_images"]),
                         labels=DEFAULT_LABELS, iterations=iterations, size=meta["size"], batch=meta["batch"],
                         seed=meta["seed"])


@pytest.fixture(scope="module")
def fresh_first_iteration(debian):
    return record_training(_committed_settings(1))


SMALLEST = TrainSettings(size=32, batch=2, iterations=2, seed=7,
                         images=(DEFAULT_IMAGE_DIR / "dog.jpg", DEFAULT_IMAGE_DIR / "person.jpg"))


@pytest.fixture(scope="module")
def smallest(debian):
    """yolov3-tiny at its smallest size (32: grids 1x1 and 2x2), 2 iterations on the same 2 images."""
    return record_training(SMALLEST)


def _same_bits(a, b) -> bool:
    return all(np.array_equal(getattr(a, k), getattr(b, k)) for k in ("input", "truth", "output", "delta")) and \
        a.stats == b.stats


class TestFreshRecording:
    def test_is_deterministic(self, smallest):
        again = record_training(SMALLEST)
        assert len(again.cases) == len(smallest.cases) == 4
        for a, b in zip(smallest.cases, again.cases):
            assert _same_bits(a, b), case_stem(a)

    def test_reproduces_the_committed_first_iteration(self, fresh_first_iteration):
        # Same library, cfg, images, labels and seed. Bit for bit on the machine that
        # made them; another CPU may pick other libm/libmvec code paths for -Ofast's
        # vector math, so the bar is the agreement rule (and equal truths and cfgs).
        for case in fresh_first_iteration.cases:
            committed = load_case(FOLDER / f"{case_stem(case)}.npz")
            assert case.cfg == committed.cfg
            np.testing.assert_array_equal(case.truth, committed.truth)
            assert np.array_equal(case.input.shape, committed.input.shape)
            judge = run_reference(committed.config, committed.input, committed.truth, flavor=committed.flavor,
                                  decisions=True)
            agreement = Agreement.of(compare(committed.recorded_run(), case.recorded_run(), case=committed,
                                             decisions=judge, name=case_stem(case)))
            _agree("fresh vs committed darknet training run", agreement)
            assert within(case.input, committed.input).all(), "the fresh run's head input differs"

    def test_agrees_with_the_c_reference_and_pytorch(self, smallest):
        assert [c.input.shape for c in smallest.cases] == [(2, 255, 1, 1), (2, 255, 2, 2)] * 2
        assert [int((c.truth[..., 0] > 0).sum()) for c in smallest.cases] == [7] * 4     # dog.jpg 4, person.jpg 3
        for case in smallest.cases:
            _agree("C reference vs darknet training run", _replay_c(case))
            _agree("parity.torch vs darknet training run", _replay_torch(case))

    def test_is_what_the_librarys_yolo_layer_gives_on_its_input(self, smallest, fresh_first_iteration):
        # The one-layer shim runs the same library's forward_yolo_layer on the recorded
        # input and truth: equal bits show the recorder copied the right buffers.
        for case in smallest.cases + fresh_first_iteration.cases:
            res = run_reference(case.config, case.input, case.truth, flavor="pjreddie", backend="libdarknet")
            np.testing.assert_array_equal(res.output, case.output)
            np.testing.assert_array_equal(res.delta, case.delta)
            assert np.float32(res.stats["cost"]) == np.float32(case.stats["cost"])

    def test_weights_change_between_iterations(self, smallest):
        # The same images in both iterations: with update_network in between, the
        # second forward pass sees other weights.
        first, second = smallest.cases[0], smallest.cases[2]
        assert first.meta["images"] == second.meta["images"] == ["dog.jpg", "person.jpg"]
        assert [first.meta["learning_rate"], first.meta["seen"], second.meta["seen"]] == [0.001, 2, 4]
        assert not np.array_equal(first.input, second.input)

    def test_seed_changes_the_initial_weights(self, smallest):
        other = record_training(replace(SMALLEST, iterations=1, seed=8))
        assert not np.array_equal(other.cases[0].input, smallest.cases[0].input)

    def test_diverging_training_stops_before_darknets_backward_pass(self, debian):
        # NaN reaching a max-pool leaves its argmax at -1, and darknet's backward pass
        # would write before the previous layer's delta: the run stops with a message.
        with pytest.raises(ParityError, match=r"darknet's training diverged: after the forward pass of iteration \d+, "
                                              r"layer \d+ .* outputs NaN or Inf; stopped before backward_network"):
            record_training(TrainSettings(size=64, batch=2, iterations=6, learning_rate=1000.0))

    def test_record_command_writes_the_cases(self, debian, tmp_path, capsys):
        code = cli_main(["record", "--darknet-train", "--size", "32", "--batch", "2", "--iterations", "1",
                         "--seed", "3", "--out", os.fspath(tmp_path)])
        assert code == 0, capsys.readouterr()
        files = sorted(tmp_path.glob("*.npz"))
        assert [p.name for p in files] == ["yolov3-tiny-32-b2-seed3-it0-layer16.npz",
                                           "yolov3-tiny-32-b2-seed3-it0-layer23.npz"]
        case = load_case(files[1])
        assert case.meta["layer"] == 23 and case.meta["images"] == ["dog.jpg", "eagle.jpg"]
        assert "2 case(s) written" in capsys.readouterr().out
        _agree("C reference vs darknet training run", _replay_c(case))

    def test_learning_rate_option_reaches_darknet(self, debian):
        run = record_training(TrainSettings(size=64, batch=1, iterations=1, learning_rate=0.01))
        assert run.steps[0]["learning_rate"] == 0.01
        assert run.cases[0].meta["net_overrides"]["learning_rate"] == "0.01"

    def test_an_undecodable_image_is_refused_before_darknet_reads_it(self, debian, tmp_path, monkeypatch):
        monkeypatch.chdir(tmp_path)
        bad = tmp_path / "broken.jpg"
        bad.write_bytes(b"\xff\xd8\xff\xe0" + b"not a jpeg" * 20)
        labels = tmp_path / "labels.yaml"
        labels.write_text("images:\n  broken.jpg: []\n")
        with pytest.raises(ParityError, match=r"broken\.jpg: darknet's image decoder cannot read this JPEG"):
            record_training(TrainSettings(size=64, batch=1, iterations=1, images=(bad,), labels=labels))
        assert not (tmp_path / "bad.list").exists()      # darknet's OpenCV path never ran


# --------------------------------------------------------------------------
# Bad options (caught before the library is needed)

TINY_CFG = """[net]
width=32
height=32
channels=3
batch=1
learning_rate=0.001

[convolutional]
filters=18
size=1
stride=1
pad=1
activation=linear

[yolo]
mask=0,1,2
anchors=10,14,23,27,37,58
classes=1
num=3
"""


@pytest.fixture
def setup(tmp_path):
    """A tiny cfg, two images (only their first bytes are read before darknet) and their labels."""
    cfg = tmp_path / "tiny.cfg"
    cfg.write_text(TINY_CFG)
    images = []
    for name in ("a.jpg", "b.png"):
        path = tmp_path / name
        path.write_bytes(b"\xff\xd8\xff\xe0" if name.endswith(".jpg") else b"\x89PNG\r\n\x1a\n")
        images.append(path)
    labels = tmp_path / "labels.yaml"
    labels.write_text("images:\n  a.jpg:\n    - {class: 0, x: 0.5, y: 0.5, w: 0.2, h: 0.3}\n  b.png: []\n")
    return tmp_path, cfg, tuple(images), labels


def _settings(setup, **changes) -> TrainSettings:
    _, cfg, images, labels = setup
    values = dict(cfg=cfg, images=images, labels=labels, iterations=1, size=32, batch=1,
                  darknet_lib=Path("/nonexistent/libdarknet.so"))
    values.update(changes)
    return TrainSettings(**values)


class TestBadOptions:
    @pytest.mark.parametrize("changes, message", [
        ({"iterations": 0}, r"--iterations 0: must be an integer of at least 1"),
        ({"size": 0}, r"--size 0: must be"),
        ({"batch": -1}, r"--batch -1: must be"),
        ({"seed": -1}, r"--seed -1: darknet seeds C's rand\(\) with an unsigned int"),
        ({"learning_rate": float("nan")}, r"--learning-rate nan: must be a finite number"),
    ], ids=["iterations-0", "size-0", "batch-negative", "seed-negative", "learning-rate-nan"])
    def test_out_of_range_option(self, setup, changes, message):
        with pytest.raises(ParityError, match=message):
            record_training(_settings(setup, **changes))

    def test_missing_image(self, setup):
        missing = setup[0] / "nope.jpg"
        with pytest.raises(ParityError, match=r"image .*nope\.jpg: no such file"):
            record_training(_settings(setup, images=(missing,)))

    def test_file_that_is_no_image(self, setup):
        text = setup[0] / "a.jpg"
        text.write_text("hello")
        with pytest.raises(ParityError, match=r"a\.jpg: not a JPEG, PNG or BMP file"):
            record_training(_settings(setup))

    def test_image_without_labels(self, setup):
        other = setup[0] / "c.jpg"
        other.write_bytes(b"\xff\xd8\xff\xe0")
        with pytest.raises(ParityError, match=r"c\.jpg: labels file .* has no entry 'c\.jpg'"):
            record_training(_settings(setup, images=(other,)))

    def test_two_images_of_one_name(self, setup):
        sub = setup[0] / "sub"
        sub.mkdir()
        twin = sub / "a.jpg"
        twin.write_bytes(b"\xff\xd8\xff\xe0")
        with pytest.raises(ParityError, match=r"same file name as"):
            record_training(_settings(setup, images=(setup[2][0], twin)))

    def test_missing_labels_file(self, setup):
        with pytest.raises(ParityError, match=r"labels file .*none\.yaml: no such file"):
            record_training(_settings(setup, labels=setup[0] / "none.yaml"))

    @pytest.mark.parametrize("text, message", [
        ("images: [unclosed", r"not valid YAML"),
        ("- a\n- b\n", r"expected a mapping with an 'images' mapping"),
        ("images: {}\nextra: 1\n", r"unknown top-level key\(s\) extra"),
        ("images:\n  a.jpg: 3\n", r"image 'a\.jpg': expected a list of boxes"),
        ("images:\n  a.jpg:\n    - {class: 0, x: 0.5, y: 0.5, w: 0.2}\n", r"box 0: missing h"),
        ("images:\n  a.jpg:\n    - {class: 0, x: 0, y: 0.5, w: 0.2, h: 0.2}\n",
         r"box 0: x 0 must be in \(0, 1\).*first x == 0"),
        ("images:\n  a.jpg:\n    - {class: 0, x: 0.5, y: 1.0, w: 0.2, h: 0.2}\n", r"box 0: y 1\.0 must be in \[0, 1\)"),
        ("images:\n  a.jpg:\n    - {class: 0, x: 0.5, y: 0.5, w: 1.5, h: 0.2}\n", r"box 0: w 1\.5 must be in \(0, 1\]"),
        ("images:\n  a.jpg:\n    - {class: -1, x: 0.5, y: 0.5, w: 0.2, h: 0.2}\n", r"box 0: class -1 must be a class id"),
        ("images:\n  a.jpg:\n    - {class: 0, x: .nan, y: 0.5, w: 0.2, h: 0.2}\n", r"box 0: x nan must be a finite"),
        ("images:\n  a.jpg:\n    - {class: 0, x: 0.5, y: 0.5, w: 0.2, h: 0.2, colour: red}\n",
         r"box 0: unknown key\(s\) colour"),
        ("images:\n  a.jpg:\n" + "    - {class: 0, x: 0.5, y: 0.5, w: 0.2, h: 0.2}\n" * 91,
         r"has 91 boxes; pjreddie's darknet holds 90 per image"),
    ], ids=["yaml", "not-mapping", "top-key", "not-list", "missing-key", "x-zero", "y-one", "w-big", "class-negative",
            "nan", "box-key", "too-many"])
    def test_bad_labels_file(self, setup, text, message):
        setup[3].write_text(text)
        with pytest.raises(ParityError, match=r"labels file .*labels\.yaml: .*" + message):
            record_training(_settings(setup))

    def test_class_outside_the_cfg_classes(self, setup):
        setup[3].write_text("images:\n  a.jpg:\n    - {class: 1, x: 0.5, y: 0.5, w: 0.2, h: 0.2}\n  b.png: []\n")
        with pytest.raises(ParityError, match=r"box 0: class 1 is outside \[0, 1\) \(the cfg's \[yolo\] classes=1\)"):
            record_training(_settings(setup))

    def test_missing_cfg(self, setup):
        with pytest.raises(ParityError, match=r"--darknet-cfg .*none\.cfg: no such cfg file"):
            record_training(_settings(setup, cfg=setup[0] / "none.cfg"))

    def test_size_darknet_cannot_build(self, setup):
        dog = DEFAULT_IMAGE_DIR / "dog.jpg"
        if not (DEFAULT_CFG.is_file() and dog.is_file()):
            pytest.skip(f"{DEFAULT_CFG} or {dog} is not installed (Debian's darknet package)")
        with pytest.raises(ParityError, match=r"darknet cannot train .*yolov3-tiny\.cfg as asked: .*--size 100.*"
                                              r"routed layers differ in size"):
            record_training(_settings(setup, cfg=DEFAULT_CFG, size=100, labels=DEFAULT_LABELS,
                                      images=(DEFAULT_IMAGE_DIR / "dog.jpg",)))

    def test_batch_norm_over_one_value(self, setup):
        # yolov3-tiny at 32x32 has 1x1 layers: with one image, batch_normalize divides by 0.
        dog = DEFAULT_IMAGE_DIR / "dog.jpg"
        if not (DEFAULT_CFG.is_file() and dog.is_file()):
            pytest.skip(f"{DEFAULT_CFG} or {dog} is not installed (Debian's darknet package)")
        with pytest.raises(ParityError, match=r"--batch 1 at --size 32: \[convolutional\] at line 85 \(layer 10\) "
                                              r"outputs 1x1, and darknet's batch normalization divides by"):
            record_training(_settings(setup, cfg=DEFAULT_CFG, size=32, batch=1, labels=DEFAULT_LABELS,
                                      images=(dog,)))

    @pytest.mark.parametrize("edit, message", [
        (lambda t: t.replace("[convolutional]", "[avgpool]\n\n[convolutional]"),
         r"\[avgpool\] \(layer 0\) is not one the recorder lets darknet train"),
        (lambda t: t + "\n[convolutional]\nfilters=4\nsize=1\n", r"the last layer is \[convolutional\]"),
        (lambda t: t.replace("channels=3", "channels=1"), r"channels=1; darknet's load_image_color gives 3"),
        (lambda t: t.replace("filters=18", "filters=17"), r"needs filters = n\*\(5\+classes\)"),
    ], ids=["layer-type", "yolo-not-last", "channels", "filters"])
    def test_cfg_darknet_would_not_train(self, setup, edit, message):
        setup[1].write_text(edit(TINY_CFG))
        with pytest.raises(ParityError, match=message):
            record_training(_settings(setup))

    def test_library_missing_is_a_build_error(self, setup):
        with pytest.raises(ParityError, match=r"darknet library not found: /nonexistent/libdarknet\.so"):
            record_training(_settings(setup))

    @pytest.mark.parametrize("argv, message", [
        (["--darknet-train", "--iterations", "0"], "--iterations 0: must be"),
        (["--images", "x.jpg"], "--images: only with --darknet-train"),
        (["--darknet-train", "--profile", "yolov4"], "cannot be combined with --profile"),
        (["--darknet-train", "--cases", "3"], "--cases and --profiles-file do not apply"),
    ], ids=["iterations-0", "images-alone", "with-profile", "with-cases"])
    def test_record_command_usage_errors_exit_2(self, tmp_path, capsys, argv, message):
        assert cli_main(["record", *argv, "--out", os.fspath(tmp_path / "out")]) == 2
        assert message in capsys.readouterr().err
        assert not (tmp_path / "out").exists()


def test_write_recording_round_trips(tmp_path):
    cases = [load_case(p) for p in FIXTURES[:2]]
    from parity.darknet_train import TrainingRecording

    paths = write_recording(TrainingRecording(cases), tmp_path)
    for path, case in zip(paths, cases):
        again = load_case(path)
        assert path.name == Path(case.path).name
        assert _same_bits(again, case) and again.meta == case.meta and again.cfg == case.cfg
        assert json.loads(json.dumps(again.meta)) == again.meta
