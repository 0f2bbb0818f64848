"""The libdarknet backend: a real darknet library against our C reference.

Debian's ``darknet`` package (pjreddie, 2018) is the library CI installs: when
it is missing these tests skip locally but FAIL under ``CI``. An AlexeyAB
library is compared only when ``DARKNET_PARITY_ALEXEYAB_LIB`` (its
``libdarknet.so``) and ``DARKNET_PARITY_ALEXEYAB_INCLUDE`` (the folder of its
``darknet.h``) are set.

Agreement rule: identical decisions (delta zero vs nonzero everywhere) and
every element of output and delta, and the cost, within
``1e-5 + 1e-4 * |darknet|``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from parity.config import FLT_MAX, YoloConfig
from parity.errors import BuildError, InputError
from parity.backends.darknet_library import DEFAULT_INCLUDE, DEFAULT_LIB, find_library, header_flavor
from parity.backends.libdarknet import one_layer_key
from parity.reference import run_reference
from parity.result import LayerRun

PJ_CASES = 240
AB_CASES = 120
ABS_TOL, REL_TOL = 1e-5, 1e-4
AB_LIB = os.environ.get("DARKNET_PARITY_ALEXEYAB_LIB")
AB_INCLUDE = os.environ.get("DARKNET_PARITY_ALEXEYAB_INCLUDE")


# --------------------------------------------------------------------------
# Libraries


@pytest.fixture(scope="session")
def debian_lib() -> dict[str, str]:
    """Debian's library paths; skip without it, except under CI where it must exist."""
    if not (DEFAULT_LIB.is_file() and (DEFAULT_INCLUDE / "darknet.h").is_file()):
        reason = (f"Debian's darknet library is not installed ({DEFAULT_LIB}, {DEFAULT_INCLUDE}/darknet.h); "
                  "apt-get install darknet")
        if os.environ.get("CI"):
            pytest.fail(f"{reason} (CI installs it: this must not be missing)")
        pytest.skip(reason)
    return {"darknet_lib": os.fspath(DEFAULT_LIB), "darknet_include": os.fspath(DEFAULT_INCLUDE)}


@pytest.fixture(scope="session")
def alexeyab_lib() -> dict[str, str]:
    if not AB_LIB:
        pytest.skip("DARKNET_PARITY_ALEXEYAB_LIB is not set (path to an AlexeyAB libdarknet.so, with "
                    "DARKNET_PARITY_ALEXEYAB_INCLUDE the folder of its darknet.h)")
    include = AB_INCLUDE or os.fspath(Path(AB_LIB).parent / "include")
    return {"darknet_lib": AB_LIB, "darknet_include": include}


# --------------------------------------------------------------------------
# Random cases


@dataclass
class Case:
    config: YoloConfig
    input: np.ndarray
    truth: np.ndarray


def _anchors(rng: np.random.Generator, num: int, net_w: int, net_h: int) -> tuple[float, ...]:
    """Anchor sizes in pixels, log-uniform from a few pixels to beyond the net."""
    w = np.exp(rng.uniform(np.log(2), np.log(1.3 * net_w), num))
    h = np.exp(rng.uniform(np.log(2), np.log(1.3 * net_h), num))
    return tuple(float(v) for pair in zip(w, h) for v in np.round(pair, 2))


def _centre(rng: np.random.Generator, cells: int, anchor_cell: float | None) -> float:
    """A centre in [0, 1): uniform, on a cell border, at the last float below 1, or in a given cell."""
    kind = rng.integers(0, 6)
    if anchor_cell is not None and kind < 3:
        return float(np.float32((anchor_cell + rng.uniform(0.05, 0.95)) / cells))
    if kind == 3 and cells > 1:
        return float(np.float32(rng.integers(1, cells) / cells))  # a cell border
    if kind == 4 and rng.random() < 0.3:
        return float(np.nextafter(np.float32(1), np.float32(0)))
    return float(np.float32(rng.uniform(1e-3, 1)))


def _size(rng: np.random.Generator) -> float:
    kind = rng.integers(0, 10)
    if kind == 0:
        return float(rng.uniform(1e-6, 1e-4))   # tiny
    if kind == 1:
        return float(rng.uniform(1.0, 3.0))     # huge, beyond the image
    return float(np.exp(rng.uniform(np.log(0.01), np.log(0.9))))


def _truths(rng: np.random.Generator, batch: int, w: int, h: int, classes: int,
            bad_classes: bool) -> np.ndarray:
    """[batch, rows, 5|6] truths, 0..12 per image, several often sharing a cell."""
    counts = rng.integers(0, 13, batch)
    rows = int(counts.max(initial=0)) + int(rng.integers(0, 4))
    cols = int(rng.choice([5, 6]))
    truth = np.zeros((batch, rows, cols), np.float32)
    for b in range(batch):
        shared = (int(rng.integers(0, w)), int(rng.integers(0, h))) if rng.random() < 0.6 else None
        for r in range(counts[b]):
            cell = shared if shared is not None and rng.random() < 0.5 else None
            x = _centre(rng, w, None if cell is None else cell[0])
            y = _centre(rng, h, None if cell is None else cell[1])
            cls = int(rng.integers(0, classes))
            if bad_classes and rng.random() < 0.1:
                cls = int(rng.choice([-1, classes, classes + 7]))
            row = [x, y, _size(rng), _size(rng), cls] + ([int(rng.integers(0, 50))] if cols == 6 else [])
            truth[b, r] = row
        if counts[b] > 2 and rng.random() < 0.1:
            truth[b, int(rng.integers(1, counts[b])), 0] = 0.0  # a zero x ends the image's list early
    return truth


def _activated_to_raw(target: float, config: YoloConfig) -> float:
    """The raw x/y input whose (scaled) activation is ``target``."""
    s = config.scale_x_y
    value = (target + 0.5 * (s - 1)) / s
    if config.new_coords:
        return value
    value = min(max(value, 1e-4), 1 - 1e-4)
    return float(np.log(value / (1 - value)))


def _size_to_raw(size_px: float, anchor: float, config: YoloConfig) -> float:
    if config.new_coords:
        return float(np.sqrt(size_px / (4 * anchor)))
    return float(np.log(size_px / anchor))


def _plant(rng: np.random.Generator, x: np.ndarray, truth: np.ndarray, config: YoloConfig) -> None:
    """Put predictions near some truths so the ignore and truth_thresh paths fire."""
    batch, _, h, w = x.shape
    stride = 5 + config.classes
    for b in range(batch):
        for row in truth[b]:
            if row[0] == 0:
                break
            if rng.random() < 0.4 or not 0 <= row[4] < config.classes:
                continue
            a = int(rng.integers(0, config.n))
            anchor = config.mask[a]
            i, j = int(np.float32(row[0]) * np.float32(w)), int(np.float32(row[1]) * np.float32(h))
            noise = rng.uniform(0.002, 0.2)
            base = a * stride
            x[b, base + 0, j, i] = _activated_to_raw(row[0] * w - i + rng.normal(0, noise), config)
            x[b, base + 1, j, i] = _activated_to_raw(row[1] * h - j + rng.normal(0, noise), config)
            pw = row[2] * config.net_w * np.exp(rng.normal(0, noise))
            ph = row[3] * config.net_h * np.exp(rng.normal(0, noise))
            x[b, base + 2, j, i] = _size_to_raw(pw, config.anchors[2 * anchor], config)
            x[b, base + 3, j, i] = _size_to_raw(ph, config.anchors[2 * anchor + 1], config)
            if rng.random() < 0.5:
                x[b, base + 5 + int(row[4]), j, i] = rng.uniform(1, 6)  # a confident class


def _input(rng: np.random.Generator, config: YoloConfig, batch: int, h: int, w: int) -> np.ndarray:
    x = rng.normal(0, 1.5, (batch, config.channels, h, w))
    if rng.random() < 0.2:
        x[rng.random(x.shape) < 0.05] *= 15  # some saturated logits
    return x.astype(np.float32)


def _thresholds(rng: np.random.Generator) -> dict[str, float]:
    ignore = float(rng.choice([0.5, 0.7, rng.uniform(0, 1)]))
    truth = 1.0 if rng.random() < 0.4 else float(rng.uniform(0.3, 1.0))
    return {"ignore_thresh": ignore, "truth_thresh": truth}


def _layer(rng: np.random.Generator) -> dict[str, object]:
    num = int(rng.integers(1, 10))
    n = int(rng.integers(1, num + 1))
    net_w, net_h = (int(v) for v in rng.integers(32, 641, 2))
    return {"classes": int(rng.integers(1, 21)), "num": num,
            "mask": tuple(int(m) for m in rng.choice(num, n, replace=False)),
            "anchors": _anchors(rng, num, net_w, net_h), "net_w": net_w, "net_h": net_h}


def pjreddie_case(index: int) -> Case:
    rng = np.random.default_rng([2018, index])
    h, w = (int(v) for v in rng.integers(1, 14, 2))
    batch = int(rng.integers(1, 4))
    max_boxes = 90 if rng.random() < 0.8 else int(rng.integers(1, 13))
    config = YoloConfig.for_flavor("pjreddie", **_layer(rng), **_thresholds(rng), max_boxes=max_boxes)
    truth = _truths(rng, batch, w, h, config.classes, bad_classes=False)
    x = _input(rng, config, batch, h, w)
    _plant(rng, x, truth, config)
    return Case(config, x, truth)


def _alexeyab_options(rng: np.random.Generator, classes: int) -> dict[str, object]:
    new_coords = int(rng.random() < 0.25)
    return {
        "iou_loss": str(rng.choice(["mse", "iou", "giou", "diou", "ciou"])),
        "iou_normalizer": float(rng.choice([0.75, 0.07, 0.5, 1.0])),
        "obj_normalizer": float(rng.choice([1.0, rng.uniform(0.3, 2)])),
        "cls_normalizer": float(rng.choice([1.0, rng.uniform(0.3, 2)])),
        "iou_thresh": 1.0 if rng.random() < 0.4 else float(rng.uniform(0.1, 0.9)),
        "iou_thresh_kind": str(rng.choice(["iou", "giou", "diou", "ciou"])),
        "label_smooth_eps": 0.0 if rng.random() < 0.6 else float(rng.uniform(0, 0.2)),
        "counters_per_class": None if rng.random() < 0.6 else tuple(int(c) for c in rng.integers(0, 1000, classes)),
        "objectness_smooth": int(rng.random() < 0.3),
        "new_coords": new_coords,
        "scale_x_y": 2.0 if new_coords else float(rng.choice([1.0, 1.05, 1.2, rng.uniform(1, 2)])),
        "focal_loss": int(rng.random() < 0.2),
        "max_delta": FLT_MAX if rng.random() < 0.6 else float(rng.uniform(0.5, 10)),
        "show_details": int(rng.random() < 0.7),
    }


def alexeyab_case(index: int) -> Case:
    rng = np.random.default_rng([2020, index])
    h, w = (int(v) for v in rng.integers(1, 14, 2))
    batch = int(rng.integers(1, 4))
    layer = _layer(rng)
    max_boxes = 200 if rng.random() < 0.8 else int(rng.integers(1, 13))
    config = YoloConfig(**layer, **_thresholds(rng), **_alexeyab_options(rng, layer["classes"]),
                        max_boxes=max_boxes)
    truth = _truths(rng, batch, w, h, config.classes, bad_classes=True)
    x = _input(rng, config, batch, h, w)
    if config.new_coords:
        x = np.abs(x) / 4  # new_coords expects activated inputs
    _plant(rng, x, truth, config)
    return Case(config, x, truth)


# --------------------------------------------------------------------------
# Comparison


def _closeness(ours: np.ndarray, darknet: np.ndarray) -> tuple[np.ndarray, float]:
    """Elements outside the rule, and the worst error / tolerance ratio."""
    ours64, dk64 = ours.astype(np.float64), darknet.astype(np.float64)
    same = (ours64 == dk64) | (np.isnan(ours64) & np.isnan(dk64))
    with np.errstate(invalid="ignore"):
        err = np.where(same, 0.0, np.abs(ours64 - dk64))
        tol = ABS_TOL + REL_TOL * np.abs(dk64)
        bad = ~(err <= tol)
    return bad, float(np.max(err / tol, initial=0.0))


def assert_agrees(ours: LayerRun, darknet: LayerRun, label: str) -> None:
    decided = (ours.delta != 0) != (darknet.delta != 0)
    assert not decided.any(), (f"{label}: delta zero/nonzero differs at {np.argwhere(decided)[:5].tolist()} "
                               f"(ours {ours.delta[decided][:5]}, darknet {darknet.delta[decided][:5]})")
    for name in ("output", "delta"):
        bad, _ = _closeness(getattr(ours, name), getattr(darknet, name))
        assert not bad.any(), (f"{label}: {name} differs at {np.argwhere(bad)[:5].tolist()}: ours "
                               f"{getattr(ours, name)[bad][:5]}, darknet {getattr(darknet, name)[bad][:5]}")
    cost_bad, _ = _closeness(np.float32([ours.stats["cost"]]), np.float32([darknet.stats["cost"]]))
    assert not cost_bad.any(), f"{label}: cost {ours.stats['cost']} vs darknet {darknet.stats['cost']}"


def _run_both(case: Case, flavor: str, lib: dict[str, str]) -> tuple[LayerRun, LayerRun]:
    ours = run_reference(case.config, case.input, case.truth, flavor, backend="c")
    darknet = run_reference(case.config, case.input, case.truth, flavor, backend="libdarknet", **lib)
    return ours, darknet


# --------------------------------------------------------------------------
# Debian's pjreddie library


@pytest.mark.parametrize("index", range(PJ_CASES))
def test_pjreddie_library_matches_c_reference(debian_lib: dict[str, str], index: int) -> None:
    case = pjreddie_case(index)
    ours, darknet = _run_both(case, "pjreddie", debian_lib)
    assert darknet.backend == "libdarknet" and darknet.roles is None
    assert_agrees(ours, darknet, f"pjreddie case {index}")


def test_pjreddie_cases_reach_every_decision() -> None:
    """The random cases exercise ignore, truth_thresh, shared cells and truncation."""
    totals: dict[str, int] = {}
    cases_with: dict[str, int] = {}
    for index in range(PJ_CASES):
        case = pjreddie_case(index)
        branches = run_reference(case.config, case.input, case.truth, "pjreddie", backend="c").branches
        for name, count in branches.items():
            totals[name] = totals.get(name, 0) + count
            cases_with[name] = cases_with.get(name, 0) + (count > 0)
    for name in ("ignore", "truth_thresh", "anchor_outside_mask", "class_shortcut", "zero_x_stop"):
        assert cases_with.get(name, 0) >= 5, f"only {cases_with.get(name, 0)} cases reach {name!r}"


def test_library_call_is_silent(debian_lib: dict[str, str], capfd: pytest.CaptureFixture[str]) -> None:
    """darknet's "yolo"/"Region" prints are swallowed and the fds come back afterwards."""
    case = pjreddie_case(0)
    print("before", flush=True)
    run_reference(case.config, case.input, case.truth, "pjreddie", backend="libdarknet", **debian_lib)
    print("after", flush=True)
    out, err = capfd.readouterr()
    assert out == "before\nafter\n" and err == ""


def test_debian_header_reads_as_pjreddie(debian_lib: dict[str, str]) -> None:
    library = find_library(debian_lib["darknet_lib"], debian_lib["darknet_include"])
    assert library.flavor == "pjreddie"


def test_cache_key_follows_header(debian_lib: dict[str, str], tmp_path: Path) -> None:
    (tmp_path / "darknet.h").write_text((DEFAULT_INCLUDE / "darknet.h").read_text() + "\n/* edited */\n")
    original = one_layer_key(find_library(debian_lib["darknet_lib"], debian_lib["darknet_include"]))
    edited = one_layer_key(find_library(debian_lib["darknet_lib"], tmp_path))
    assert original != edited


# --------------------------------------------------------------------------
# Errors


def _small_case(flavor: str) -> Case:
    config = YoloConfig.for_flavor(flavor, classes=2, num=2, mask=(0, 1), anchors=(10.0, 14.0, 60.0, 80.0))
    x = np.zeros((1, config.channels, 3, 3), np.float32)
    truth = np.array([[[0.5, 0.5, 0.2, 0.3, 1, 0]]], np.float32)
    return Case(config, x, truth)


def test_missing_library_is_a_build_error(tmp_path: Path) -> None:
    case = _small_case("pjreddie")
    missing = tmp_path / "nowhere" / "libdarknet.so"
    with pytest.raises(BuildError, match="darknet library not found") as info:
        run_reference(case.config, case.input, case.truth, backend="libdarknet", darknet_lib=os.fspath(missing))
    assert os.fspath(missing) in str(info.value) and "apt-get install darknet" in str(info.value)


def _fake_library(tmp_path: Path) -> Path:
    lib = tmp_path / "libdarknet.so"
    lib.write_bytes(b"\x7fELF not really")
    return lib


def test_missing_header_is_a_build_error(tmp_path: Path) -> None:
    case = _small_case("pjreddie")
    lib = _fake_library(tmp_path)
    include = tmp_path / "include"
    include.mkdir()
    with pytest.raises(BuildError, match="darknet header not found") as info:
        run_reference(case.config, case.input, case.truth, backend="libdarknet",
                      darknet_lib=os.fspath(lib), darknet_include=os.fspath(include))
    assert os.fspath(include / "darknet.h") in str(info.value) and "darknet_include" in str(info.value)


def test_header_lacking_shim_needs_is_a_build_error(tmp_path: Path) -> None:
    (tmp_path / "darknet.h").write_text("typedef struct layer layer;\nstruct layer { int batch; };\n")
    with pytest.raises(BuildError, match="lacks what the libdarknet shim needs") as info:
        find_library(_fake_library(tmp_path), tmp_path)
    assert "free_layer" in str(info.value) and "max_boxes" in str(info.value)


def test_alexeyab_looking_header_lacking_fields_names_them(debian_lib: dict[str, str], tmp_path: Path) -> None:
    text = (DEFAULT_INCLUDE / "darknet.h").read_text() + "\ntypedef struct network_state network_state;\n"
    (tmp_path / "darknet.h").write_text(text)
    with pytest.raises(BuildError, match="AlexeyAB/darknet's darknet.h") as info:
        find_library(debian_lib["darknet_lib"], tmp_path)
    assert "new_coords" in str(info.value) and "total_bbox" in str(info.value)


def test_flavor_header_mismatch_is_a_build_error(debian_lib: dict[str, str]) -> None:
    case = _small_case("alexeyab")
    with pytest.raises(BuildError) as info:
        run_reference(case.config, case.input, case.truth, "alexeyab", backend="libdarknet", **debian_lib)
    message = str(info.value)
    assert os.fspath(DEFAULT_INCLUDE / "darknet.h") in message
    assert "pjreddie/darknet's darknet.h (it declares no network_state)" in message
    assert "'alexeyab' was requested" in message


def test_header_flavor_detection() -> None:
    assert header_flavor("typedef struct network_state {\n int train;\n} network_state;") == "alexeyab"
    assert header_flavor("typedef struct network { int train; } network;") == "pjreddie"
    assert header_flavor("/* unlike network_state in AlexeyAB */ struct network;") == "pjreddie"


def test_pjreddie_out_of_range_class_never_reaches_darknet(debian_lib: dict[str, str]) -> None:
    case = _small_case("pjreddie")
    case.truth[0, 0, 4] = 2
    with pytest.raises(InputError, match="class id"):
        run_reference(case.config, case.input, case.truth, backend="libdarknet", **debian_lib)


# --------------------------------------------------------------------------
# AlexeyAB (local library named by the environment)


def test_alexeyab_library_matches_c_reference(alexeyab_lib: dict[str, str]) -> None:
    for index in range(AB_CASES):
        case = alexeyab_case(index)
        ours, darknet = _run_both(case, "alexeyab", alexeyab_lib)
        assert_agrees(ours, darknet, f"alexeyab case {index}")
        for name in ("total_bbox", "rewritten_bbox"):
            if case.input.shape[0] == 1:
                assert darknet.stats[name] == ours.stats[name], (index, name)
            else:  # one thread per image, non-atomic increments: darknet can only lose counts
                assert darknet.stats[name] <= ours.stats[name], (index, name)


def test_alexeyab_cases_reach_every_option() -> None:
    seen: dict[str, int] = {}
    for index in range(AB_CASES):
        case = alexeyab_case(index)
        branches = run_reference(case.config, case.input, case.truth, "alexeyab", backend="c").branches
        for name, count in branches.items():
            seen[name] = seen.get(name, 0) + (count > 0)
    for name in ("ignore", "truth_thresh", "iou_thresh_extra", "averaging_divides", "class_oob",
                 "objectness_smooth", "max_delta_clip", "focal", "label_smooth", "rewritten_bbox",
                 "iou_loss_mse", "iou_loss_iou", "iou_loss_giou", "iou_loss_diou", "iou_loss_ciou"):
        assert seen.get(name, 0) >= 3, f"only {seen.get(name, 0)} cases reach {name!r}"


def test_alexeyab_wrong_label_never_reaches_darknet(alexeyab_lib: dict[str, str], tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A negative width would make darknet run system() to append to ./bad_label.list."""
    monkeypatch.chdir(tmp_path)
    case = _small_case("alexeyab")
    case.truth[0, 0, 2] = -0.1
    with pytest.raises(InputError, match="Wrong label"):
        run_reference(case.config, case.input, case.truth, "alexeyab", backend="libdarknet", **alexeyab_lib)
    assert not (tmp_path / "bad_label.list").exists()


def test_alexeyab_header_reads_as_alexeyab(alexeyab_lib: dict[str, str]) -> None:
    library = find_library(alexeyab_lib["darknet_lib"], alexeyab_lib["darknet_include"])
    assert library.flavor == "alexeyab"
    case = _small_case("pjreddie")
    with pytest.raises(BuildError, match="AlexeyAB/darknet's darknet.h .it declares network_state."):
        run_reference(case.config, case.input, case.truth, "pjreddie", backend="libdarknet", **alexeyab_lib)


def test_loading_the_library_keeps_the_process_fp_mode(debian_lib: dict[str, str]) -> None:
    """Debian's -Ofast libdarknet turns on flush-to-zero when loaded; the backend undoes that for us."""
    import subprocess
    import sys

    code = (
        "import numpy as np\n"
        "from parity.generate import random_case, random_config\n"
        "from parity.reference import run_reference\n"
        "from parity.backends.c_reference import load_reference\n"
        "fp = load_reference().lib\n"
        "before = fp.yref_fp_mode()\n"
        "cfg = random_config(np.random.default_rng(1), 'pjreddie')\n"
        "case = random_case(1, cfg, flavor='pjreddie')\n"
        f"run_reference(cfg, case.input, case.truth, flavor='pjreddie', backend='libdarknet', "
        f"darknet_lib={debian_lib['darknet_lib']!r}, darknet_include={debian_lib['darknet_include']!r})\n"
        "assert fp.yref_fp_mode() == before, (hex(before), hex(fp.yref_fp_mode()))\n"
        "tiny = np.float32(1e-40)\n"
        "assert tiny * np.float32(1) != 0, 'subnormals flushed'\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
