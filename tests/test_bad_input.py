"""A catalogue of bad input, one row per way to get it wrong (issue 5, part 5).

Every row is either refused with a message naming the problem (file, line and
option for a cfg; the tensor, shape or dtype for a tensor; the row for a
truth; the library, header or candidate), which the CLI prints without a
traceback and exits 2 on, or, where darknet itself accepts the input, mirrored
with one ``DarknetInputWarning`` saying what darknet will do. No row crashes
the process or changes a later good result.

"""
from __future__ import annotations

import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from parity.case import Case, save_case
from parity.cli import main
from parity.cfg import dump_yolo_cfg, load_cfg
from parity.config import YoloConfig
from parity.errors import BuildError, ConfigError, DarknetInputWarning, InputError, ParityError
from parity.reference import run_reference
from parity.suite import RunOptions, compare_case
from parity.torch import yolo_forward

FIXTURES = Path(__file__).resolve().parent / "candidates_fixtures"
BROKEN = FIXTURES / "broken.py"
DEBIAN_LIB = Path("/usr/lib/darknet/libdarknet.so")
DEBIAN_INCLUDE = Path("/usr/lib/darknet/include")

# ---------------------------------------------------------------------------
# Malformed cfg files

# Line numbers matter: rows name the line their error must point at.
BASE_CFG = """[net]
width=64
height=64
channels=3
batch=2

[convolutional]
filters=255
size=1
stride=32
activation=linear

[yolo]
mask=0,1,2
anchors=10,13,16,30,33,23,30,61,62,45,59,119,116,90,156,198,373,326
classes=80
num=9
"""
APPENDED = 18  # the line an appended option lands on (inside [yolo])


def _edit(kind: str, *args: str) -> tuple[str, ...]:
    return (kind, *args)


def add(line: str) -> tuple[str, ...]:
    """Append one line to the [yolo] section."""
    return _edit("add", line)


def sub(old: str, new: str) -> tuple[str, ...]:
    """Replace text of the base cfg (exactly once)."""
    return _edit("sub", old, new)


def text(whole: str) -> tuple[str, ...]:
    """A whole cfg of its own."""
    return _edit("text", whole)


def _cfg_text(edit: tuple[str, ...]) -> str:
    kind, *args = edit
    if kind == "add":
        return BASE_CFG + args[0] + "\n"
    if kind == "sub":
        assert BASE_CFG.count(args[0]) == 1, args[0]
        return BASE_CFG.replace(args[0], args[1])
    return args[0]


def _write_cfg(tmp_path: Path, edit: tuple[str, ...]) -> Path:
    path = tmp_path / "bad.cfg"
    path.write_bytes(_cfg_text(edit).encode("utf-8", "surrogateescape"))
    return path


# (edit, line, option, fragment, flavor): the message must hold "<file>:line <line>", "option '<option>'"
# (when not None) and the fragment.
CFG_ROWS = [
    # atoi("abc") is 0 in darknet: a layer with no classes
    pytest.param(sub("classes=80", "classes=abc"), 16, "classes", "expected an integer, got 'abc'", "alexeyab",
                 id="classes-not-a-number"),
    # a layer needs a class; darknet would size every array with 5+0 entries
    pytest.param(sub("classes=80", "classes=0"), 16, "classes", "at least one class", "alexeyab", id="classes-zero"),
    # a mask index >= num reads anchors past the end of darknet's list
    pytest.param(sub("mask=0,1,2", "mask=0,1,9"), 14, "mask", "mask index 9 is outside 0..8", "alexeyab",
                 id="mask-index-ge-num"),
    # a negative mask index reads before the list
    pytest.param(sub("mask=0,1,2", "mask=-1,1,2"), 14, "mask", "mask index -1 is outside 0..8", "alexeyab",
                 id="mask-index-negative"),
    # pjreddie writes every listed anchor into a buffer of 2*num: a heap overflow
    pytest.param(sub(",373,326", ",373,326,1,1"), 15, "anchors", "heap overflow", "pjreddie",
                 id="anchors-more-than-2num-pjreddie"),
    # a non-positive anchor gives log(0) or log of a negative in the w/h targets
    pytest.param(sub("anchors=10,", "anchors=-10,"), 15, "anchors", "anchor value -10.0", "alexeyab",
                 id="anchors-negative"),
    # one counter per class, or darknet reads past the list
    pytest.param(add("counters_per_class=1,2,3"), APPENDED, "counters_per_class",
                 "3 values in counters_per_class but classes=80", "alexeyab", id="counters_per_class-length"),
    # darknet checks the conv's filters against n*(5+classes) and exits; the error points at the conv's line
    pytest.param(sub("filters=255", "filters=254"), 8, "filters", "n*(5+classes) = 3*(5+80) = 255", "alexeyab",
                 id="filters-before-yolo"),
    # num=0: no anchors at all
    pytest.param(sub("num=9", "num=0"), 17, "num", "at least one anchor", "alexeyab", id="num-zero"),
    # darknet requires [net] first; it would parse the first layer's options as the network's
    pytest.param(sub("[net]", "[convolutional]"), 1, None, "darknet requires [net]", "alexeyab", id="missing-net"),
    # an option before any section: darknet dereferences a NULL section (the message quotes the line)
    pytest.param(text("width=64\n" + BASE_CFG), 1, None, "'width=64' before any [section]", "alexeyab",
                 id="option-before-any-section"),
    # a line without '=': darknet keeps the key with no value, hiding a later line setting it
    pytest.param(add("classes"), APPENDED, "classes", "no '='", "alexeyab", id="line-without-equals"),
    # nothing after '=': darknet prints "Config file error" and drops the line
    pytest.param(add("ignore_thresh="), APPENDED, "ignore_thresh", "nothing after '='", "alexeyab",
                 id="nothing-after-equals"),
    # no option name before '='
    pytest.param(add("=0.7"), APPENDED, None, "no option name before '='", "alexeyab", id="no-option-name"),
    # width/height size every grid; zero or negative ones size none
    pytest.param(sub("width=64", "width=0"), 2, "width", "width=0 in [net] must be >= 1", "alexeyab", id="width-zero"),
    pytest.param(sub("height=64", "height=-1"), 3, "height", "height=-1 in [net] must be >= 1", "alexeyab",
                 id="height-negative"),
    # batch 0: no images
    pytest.param(sub("batch=2", "batch=0"), 5, "batch", "batch=0 in [net] must be >= 1", "alexeyab", id="batch-zero"),
    # max=0 reads no truth at all: nothing would be trained
    pytest.param(add("max=0"), APPENDED, "max", "max=0: darknet would read no truth boxes", "alexeyab", id="max-zero"),
    pytest.param(add("max=-5"), APPENDED, "max", "max=-5", "alexeyab", id="max-negative"),
    # beyond darknet's int
    pytest.param(add("max=99999999999"), APPENDED, "max", "does not fit darknet's 32-bit int", "alexeyab",
                 id="max-overflows-int32"),
    # pjreddie's truth buffer holds 90 boxes per image: max=91 reads the next image's truths
    pytest.param(add("max=91"), APPENDED, "max", "max=91 exceeds 90", "pjreddie", id="pjreddie-max-over-90"),
    # best_iou starts at 0, so every cell would pass truth_thresh < 0 and train towards an all-zero box
    pytest.param(add("truth_thresh=-0.5"), APPENDED, "truth_thresh", "truth_thresh=-0.5 must be >= 0", "alexeyab",
                 id="truth_thresh-negative"),
    # NaN thresholds make every comparison false
    pytest.param(add("ignore_thresh=nan"), APPENDED, "ignore_thresh", "'nan' is NaN", "alexeyab",
                 id="ignore_thresh-nan"),
    # an infinite scale_x_y turns every x/y into NaN
    pytest.param(add("scale_x_y=inf"), APPENDED, "scale_x_y", "'inf' is infinite", "alexeyab", id="scale_x_y-inf"),
    # deltas are clipped to +-max_delta: a negative bound is meaningless
    pytest.param(add("max_delta=-1"), APPENDED, "max_delta", "max_delta=-1.0 must be >= 0", "alexeyab",
                 id="max_delta-negative"),
    # map= names a file darknet's read_map cannot open (file_error)
    pytest.param(add("map=data/coco9k.map"), APPENDED, "map", "cannot read map file", "alexeyab",
                 id="map-missing"),
    # a byte-order mark becomes part of the first header: darknet does not recognise [net] and crashes
    pytest.param(text("\ufeff" + BASE_CFG), 1, None, "byte-order mark", "alexeyab", id="utf8-bom"),
    # a NUL byte ends darknet's line early
    pytest.param(add("jitter=.3\0"), APPENDED, None, "NUL byte", "alexeyab", id="nul-byte"),
]


def _check_cfg_message(message: str, path: Path, line: int, option: str | None, fragment: str) -> None:
    assert f"{path}:line {line}" in message, message
    if option is not None:
        assert f"option '{option}'" in message, message
    assert fragment in message, message


@pytest.mark.parametrize("edit, line, option, fragment, flavor", CFG_ROWS)
def test_bad_cfg_names_file_line_and_option(tmp_path, edit, line, option, fragment, flavor):
    path = _write_cfg(tmp_path, edit)
    with pytest.raises(ConfigError) as err:
        load_cfg(path, flavor=flavor)
    assert (err.value.line, err.value.option) == (line, option)
    _check_cfg_message(str(err.value), path, line, option, fragment)


@pytest.mark.parametrize("edit, line, option, fragment, flavor",
                         [row for row in CFG_ROWS if row.values[4] == "alexeyab"])  # `run --cfg` reads AlexeyAB cfgs
def test_run_on_bad_cfg_exits_2_with_the_message(tmp_path, capsys, edit, line, option, fragment, flavor):
    path = _write_cfg(tmp_path, edit)
    assert main(["run", "--cfg", str(path), "--cases", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("darknet-parity run: error: ") and err.count("\n") == 1, err
    _check_cfg_message(err, path, line, option, fragment)


def test_run_on_bad_cfg_prints_no_traceback_in_a_real_process(tmp_path):
    # the console entry point, as a user runs it: message on stderr, no traceback, exit 2
    path = _write_cfg(tmp_path, sub("mask=0,1,2", "mask=0,1,9"))
    out = subprocess.run([sys.executable, "-m", "parity.cli", "run", "--cfg", str(path)], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr and f"{path}:line 14: option 'mask': mask index 9" in out.stderr
    assert out.stdout == ""


@pytest.mark.parametrize("whole, fragment", [
    # a cfg with no section at all
    pytest.param("# only a comment\n", "no sections", id="no-sections"),
    # a network without a [yolo] layer has nothing to check
    pytest.param("[net]\nwidth=64\nheight=64\n", "no [yolo] section", id="no-yolo"),
])
def test_run_on_cfg_without_a_layer_exits_2(tmp_path, capsys, whole, fragment):
    path = _write_cfg(tmp_path, text(whole))
    assert main(["run", "--cfg", str(path)]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and fragment in err


def test_run_on_missing_cfg_exits_2(tmp_path, capsys):
    # a path that is not there
    assert main(["run", "--cfg", str(tmp_path / "absent.cfg")]) == 2
    assert "absent.cfg: no such cfg file" in capsys.readouterr().err


@pytest.mark.parametrize("changes, option, fragment", [
    # YoloConfig validates on construction, naming the cfg option to blame
    pytest.param({"net_w": 0}, "width", "net_w=0 must be >= 1", id="net_w-zero"),
    pytest.param({"net_h": -8}, "height", "net_h=-8 must be >= 1", id="net_h-negative"),
    pytest.param({"batch": 0}, "batch", "batch=0 must be >= 1", id="batch-zero"),
    pytest.param({"max_boxes": 0}, "max", "max=0", id="max-zero"),
    pytest.param({"classes": -1}, "classes", "at least one class", id="classes-negative"),
    pytest.param({"num": 2, "mask": (0, 2), "anchors": (1.0,) * 4}, "mask", "mask index 2 is outside 0..1",
                 id="mask-ge-num"),
    pytest.param({"iou_loss": "l1"}, "iou_loss", "unknown iou_loss 'l1'", id="iou_loss-unknown"),
])
def test_yolo_config_refuses_zero_negative_and_unknown_values(changes, option, fragment):
    with pytest.raises(ConfigError) as err:
        YoloConfig(**changes)
    assert err.value.option == option and fragment in str(err.value)


# ---------------------------------------------------------------------------
# Wrong tensors: shapes and dtypes, for the C reference and the PyTorch port

CONFIG = YoloConfig(classes=2, num=1, mask=(0,), anchors=(10.0, 10.0), net_w=64, net_h=64)   # 1*(5+2) = 7 channels
CONFIG_PJ = CONFIG.replace(flavor="pjreddie", max_boxes=None)


def good_input(batch: int = 1) -> np.ndarray:
    x = np.random.default_rng(7).normal(size=(batch, 7, 2, 2)).astype(np.float32)
    return x


def good_truth(batch: int = 1) -> np.ndarray:
    t = np.zeros((batch, 4, 6), np.float32)
    t[:, 0] = [0.3, 0.6, 0.2, 0.3, 1, 0]
    t[:, 1] = [0.7, 0.2, 0.1, 0.1, 0, 0]
    return t


# (id, input, truth, message). Both backends validate through parity.layer_input, so they refuse
# with the same words; only a dtype check differs (torch names both tensors' dtypes).
TENSOR_ROWS = [
    # 8 channels where the config needs n*(5+classes) = 7: the layout or the config is wrong
    ("wrong-channel-count", lambda: np.zeros((1, 8, 2, 2), np.float32), good_truth, r"input: 8 channels.*= 7"),
    # a head without its batch dimension
    ("input-3d", lambda: np.zeros((7, 2, 2), np.float32), good_truth,
     r"input: expected 4 dimensions, got shape \(7, 2, 2\)"),
    # one truth image for two input images
    ("truth-batch-mismatch", lambda: good_input(2), lambda: good_truth(1),
     r"truth: batch 1 does not match the input's batch 2"),
    # x, y, w, h without a class column
    ("truth-4-columns", good_input, lambda: np.zeros((1, 4, 4), np.float32), r"truth: 4 columns per box; expected 6"),
    # truth rows without the batch dimension
    ("truth-2d", good_input, lambda: np.zeros((4, 6), np.float32), r"truth: expected 3 dimensions, got shape \(4, 6\)"),
    # a grid with no row: nothing to index
    ("empty-grid", lambda: np.zeros((1, 7, 0, 2), np.float32), good_truth,
     r"input: shape \(1, 7, 0, 2\) has an empty batch or grid"),
    # no image at all
    ("empty-batch", lambda: np.zeros((0, 7, 2, 2), np.float32), lambda: np.zeros((0, 4, 6), np.float32),
     r"input: shape \(0, 7, 2, 2\) has an empty batch or grid"),
]
# integers: darknet works in float32 (the messages differ: numpy arrays vs tensors)
DTYPE_ROWS = [
    ("input-int-dtype", lambda: np.zeros((1, 7, 2, 2), np.int32), good_truth,
     r"input: dtype int32 is not floating point", r"dtypes torch.int32/torch.float32 are not floating point"),
    ("truth-int-dtype", good_input, lambda: good_truth().astype(np.int64),
     r"truth: dtype int64 is not floating point", r"dtypes torch.float32/torch.int64 are not floating point"),
]


def _params(backend: str) -> list:
    rows = [pytest.param(make_x, make_t, msg, id=name) for name, make_x, make_t, msg in TENSOR_ROWS]
    for name, make_x, make_t, ref_msg, torch_msg in DTYPE_ROWS:
        rows.append(pytest.param(make_x, make_t, ref_msg if backend == "c" else torch_msg, id=name))
    return rows


def _run(backend: str, config: YoloConfig, x, t, flavor: str | None = None):
    if backend == "c":
        res = run_reference(config, x, t, flavor=flavor)
        return res.output, res.delta
    run = yolo_forward(torch.from_numpy(np.asarray(x)), torch.from_numpy(np.asarray(t)), config, flavor)
    output, delta = run.output, run.delta
    return output.numpy(), delta.numpy()


@pytest.mark.parametrize("make_x, make_t, message", _params("c"))
def test_run_reference_refuses_wrong_tensors(make_x, make_t, message):
    with pytest.raises(InputError, match=message):
        run_reference(CONFIG, make_x(), make_t())


@pytest.mark.parametrize("make_x, make_t, message", _params("torch"))
def test_yolo_forward_refuses_wrong_tensors(make_x, make_t, message):
    with pytest.raises(InputError, match=message):
        yolo_forward(torch.from_numpy(make_x()), torch.from_numpy(make_t()), CONFIG)


def test_yolo_forward_refuses_numpy_arrays():
    # the PyTorch port takes tensors and says where numpy goes
    with pytest.raises(InputError, match="takes torch tensors.*run_reference for numpy"):
        yolo_forward(good_input(), good_truth(), CONFIG)


@pytest.mark.parametrize("backend", ["c", "torch"])
def test_a_config_that_is_not_a_yolo_config_is_an_input_error(backend):
    with pytest.raises(InputError, match="config must be a parity.config.YoloConfig, got str"):
        _run(backend, "yolov4.cfg", good_input(), good_truth())  # type: ignore[arg-type]


# ---------------------------------------------------------------------------
# Truths darknet would index outside its arrays with: refused, naming the row

def _with_row(row: list[float]) -> np.ndarray:
    t = good_truth()
    t[0, 1] = row
    return t


# (row written at truth[0, 1], flavor, message). Both backends validate through parity.layer_input.
TRUTH_ROWS = [
    # (int)(1.0*w) == w: darknet writes one row past the grid
    pytest.param([1.0, 0.5, 0.2, 0.2, 0, 0], "alexeyab", r"truth\[0, 1\]: centre \(x=1, y=0.5\) is outside \[0, 1\)", id="x-equals-1"),
    # a negative centre indexes before the grid
    pytest.param([-0.1, 0.5, 0.2, 0.2, 0, 0], "alexeyab", r"truth\[0, 1\]: centre \(x=-0.1, y=0.5\)", id="x-negative"),
    # (int)NaN is undefined behaviour in C
    pytest.param([np.nan, 0.5, 0.2, 0.2, 0, 0], "alexeyab", r"truth\[0, 1\]: centre \(x=nan, y=0.5\)", id="x-nan"),
    pytest.param([np.inf, 0.5, 0.2, 0.2, 0, 0], "pjreddie", r"truth\[0, 1\]: centre \(x=inf, y=0.5\)", id="x-inf"),
    # y at or past the bottom edge
    pytest.param([0.5, 1.0, 0.2, 0.2, 0, 0], "alexeyab", r"truth\[0, 1\]: centre \(x=0.5, y=1\)", id="y-equals-1"),
    pytest.param([0.5, 1.5, 0.2, 0.2, 0, 0], "pjreddie", r"truth\[0, 1\]: centre \(x=0.5, y=1.5\)", id="y-above-1"),
    # pjreddie has no class range check: it would write outside the class block
    pytest.param([0.5, 0.5, 0.2, 0.2, 85, 0], "pjreddie", r"truth\[0, 1\]: class id 85(\.0)? is outside \[0, 2\)", id="pjreddie-class-85"),
    pytest.param([0.5, 0.5, 0.2, 0.2, -1, 0], "pjreddie", r"truth\[0, 1\]: class id -1(\.0)? is outside \[0, 2\)", id="pjreddie-class-negative"),
    # (int)NaN: undefined, so refused with pjreddie, which would index with it
    pytest.param([0.5, 0.5, 0.2, 0.2, np.nan, 0], "pjreddie", r"truth\[0, 1\]: class id nan is outside \[0, 2\)", id="pjreddie-class-nan"),
    # 2.5 truncates to 2, outside [0, 2)
    pytest.param([0.5, 0.5, 0.2, 0.2, 2.5, 0], "pjreddie", r"truth\[0, 1\]: class id 2.5 is outside \[0, 2\)", id="pjreddie-class-2.5"),
]


@pytest.mark.parametrize("row, flavor, message", TRUTH_ROWS)
def test_run_reference_refuses_truths_outside_the_grid_naming_the_row(row, flavor, message):
    config = CONFIG if flavor == "alexeyab" else CONFIG_PJ
    with pytest.raises(InputError, match=message):
        run_reference(config, good_input(), _with_row(row))


@pytest.mark.parametrize("row, flavor, message", TRUTH_ROWS)
def test_yolo_forward_refuses_truths_outside_the_grid_naming_the_row(row, flavor, message):
    config = CONFIG if flavor == "alexeyab" else CONFIG_PJ
    with pytest.raises(InputError, match=message):
        yolo_forward(torch.from_numpy(good_input()), torch.from_numpy(_with_row(row)), config)


@pytest.mark.parametrize("backend", ["c", "torch"])
def test_a_refused_call_leaves_later_results_unchanged(backend):
    # every refusal above, then the good call again: bit-identical to the first good call
    before = _run(backend, CONFIG, good_input(), good_truth())
    for _, make_x, make_t, *_ in TENSOR_ROWS[:7]:
        with pytest.raises(InputError):
            _run(backend, CONFIG, make_x(), make_t())
    for p in TRUTH_ROWS:
        row, flavor = p.values[:2]
        with pytest.raises(InputError):
            _run(backend, CONFIG if flavor == "alexeyab" else CONFIG_PJ, good_input(), _with_row(row))
    after = _run(backend, CONFIG, good_input(), good_truth())
    for a, b in zip(before, after):
        np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------------------
# Input darknet accepts and reads its own way: mirrored, with one warning per call


def _truth_with(rows: dict[tuple[int, int], list[float]], batch: int = 1, count: int = 8) -> np.ndarray:
    t = np.zeros((batch, count, 6), np.float32)
    for b in range(batch):
        t[b, 0] = [0.3, 0.6, 0.2, 0.3, 1, 0]
    for (b, r), row in rows.items():
        t[b, r] = row
    return t


def _box(x: float = 0.6, cls: float = 0) -> list[float]:
    return [x, 0.4, 0.3, 0.2, cls, 0]


# (config changes, truth, warning, what darknet reads instead: a truth giving the same delta)
WARN_ROWS = [
    # AlexeyAB checks the class range and skips the row (pjreddie refuses, above)
    pytest.param({"classes": 80}, _truth_with({(0, 1): _box(cls=85)}),
                 "truth[0, 1]: class id 85 is outside [0, 80): darknet skips this row",
                 _truth_with({}), id="class-id-above-classes"),
    pytest.param({}, _truth_with({(0, 1): _box(cls=-1)}),
                 "truth[0, 1]: class id -1 is outside [0, 2): darknet skips this row", _truth_with({}),
                 id="class-id-negative"),
    # (int)NaN is INT_MIN on x86: negative, so skipped
    pytest.param({}, _truth_with({(0, 1): _box(cls=np.nan)}),
                 "truth[0, 1]: class id nan is outside [0, 2): darknet skips this row", _truth_with({}),
                 id="class-id-nan"),
    # the cast truncates 1.7 to 1
    pytest.param({}, _truth_with({(0, 1): _box(cls=1.7)}),
                 "truth[0, 1]: class id 1.7 is not an integer: darknet truncates it to class 1",
                 _truth_with({(0, 1): _box(cls=1)}), id="class-id-fractional"),
    # darknet's `if (!truth.x) break;`: an x == 0 row ends the image's list, whatever follows
    pytest.param({}, _truth_with({(1, 2): [0, 0, 0, 0, 0, 0], (1, 3): _box(), (1, 4): _box(0.1)}, batch=2),
                 "truth[1, 1]: x == 0 ends image 1's boxes: 2 rows after it are ignored",
                 _truth_with({}, batch=2), id="x-zero-terminator"),
    # a box at the very left edge (x == 0) is the terminator itself
    pytest.param({}, _truth_with({(0, 1): [0.0, 0.4, 0.3, 0.2, 1, 0]}),
                 "truth[0, 1]: x == 0 ends image 0's boxes: this row (x = 0 with other values set) is ignored",
                 _truth_with({}), id="x-zero-box"),
    # darknet reads at most max rows per image
    pytest.param({"max_boxes": 3}, _truth_with({(0, r): _box(0.1 * r) for r in range(1, 6)}),
                 "image 0 has 6 boxes; darknet reads the first max=3",
                 _truth_with({(0, r): _box(0.1 * r) for r in range(1, 3)}), id="more-boxes-than-max"),
    # negative sizes: AlexeyAB logs "Wrong label" and trains on them
    pytest.param({}, _truth_with({(0, 1): [0.6, 0.4, -0.3, 0.2, 0, 0]}),
                 "truth[0, 1]: box size w=-0.3", None, id="negative-width"),
]


@pytest.mark.parametrize("changes, truth, message, same_as", WARN_ROWS)
@pytest.mark.parametrize("backend", ["c", "torch"])
def test_darknet_quirks_are_mirrored_with_one_warning(backend, changes, truth, message, same_as):
    config = CONFIG.replace(**changes)
    x = np.random.default_rng(3).normal(size=(truth.shape[0], config.channels, 2, 2)).astype(np.float32)
    if backend == "c":
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            got = _run(backend, config, x, truth)
        ours = [w for w in caught if issubclass(w.category, DarknetInputWarning)]
        assert len(ours) == 1, [str(w.message) for w in caught]
        assert message in str(ours[0].message)
        assert ours[0].filename == __file__  # attributed to the caller, not to parity's own code
    else:
        got = _run(backend, config, x, truth)   # the port mirrors darknet too (it does not warn: see the report)
    if same_as is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DarknetInputWarning)
            expected = _run(backend, config, x, same_as)
        for a, b in zip(got, expected):
            np.testing.assert_array_equal(a, b)


def test_one_warning_per_call_lists_every_kind():
    config = CONFIG.replace(classes=80, max_boxes=3)
    truth = _truth_with({(0, 1): _box(cls=85), (0, 2): _box(), (0, 3): _box(), (1, 1): [0] * 6, (1, 2): _box()},
                        batch=2)
    x = np.zeros((2, config.channels, 2, 2), np.float32)
    with pytest.warns(DarknetInputWarning) as caught:
        run_reference(config, x, truth)
    assert len(caught) == 1
    message = str(caught[0].message)
    for part in ("truth[0, 1]: class id 85 is outside [0, 80): darknet skips this row",
                 "truth[1, 1]: x == 0 ends image 1's boxes: 1 row after it is ignored",
                 "image 0 has 4 boxes; darknet reads the first max=3"):
        assert part in message, message


def test_ordinary_zero_padding_does_not_warn():
    # truth padded with all-zero rows, as every loader does: darknet's normal terminator
    with warnings.catch_warnings():
        warnings.simplefilter("error", DarknetInputWarning)
        run_reference(CONFIG, good_input(), good_truth())
        run_reference(CONFIG, good_input(), np.zeros((1, 0, 6), np.float32))


@pytest.mark.skipif(not DEBIAN_LIB.is_file(), reason="Debian's libdarknet is not installed")
def test_the_libdarknet_backend_warns_once_per_call_too():
    # run_reference validates, then the libdarknet backend validates again: still one warning
    config = CONFIG_PJ
    truth = _truth_with({(0, 1): [0] * 6, (0, 2): _box()})
    x = good_input()
    with pytest.warns(DarknetInputWarning) as caught:
        real = run_reference(config, x, truth, backend="libdarknet")
    assert len(caught) == 1 and "x == 0 ends image 0's boxes" in str(caught[0].message)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DarknetInputWarning)
        ours = run_reference(config, x, truth)
    np.testing.assert_allclose(real.delta, ours.delta, atol=1e-5)


def _quirky_case(tmp_path: Path | None = None, name: str = "quirky.npz") -> Case:
    """A recorded-style AlexeyAB case with an out-of-range class and a mid-list terminator."""
    config = CONFIG.replace(classes=80, num=2, mask=(0, 1), anchors=(10.0, 10.0, 20.0, 30.0))
    truth = _truth_with({(0, 1): _box(cls=85), (0, 2): [0] * 6, (0, 3): _box(0.2)})
    x = np.random.default_rng(5).normal(size=(1, config.channels, 2, 2)).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DarknetInputWarning)
        res = run_reference(config, x, truth)
    case = Case(dump_yolo_cfg(config), config, "alexeyab", x, truth, res.output, res.delta, res.stats.as_dict(),
                {"generator": "test_bad_input"})
    if tmp_path is not None:
        save_case(tmp_path / name, case)
    return case


def test_the_suite_runner_does_not_warn(recwarn):
    # generated suites hold these rows on purpose: compare_case silences the category
    with warnings.catch_warnings():
        warnings.simplefilter("error", DarknetInputWarning)
        result = compare_case(_quirky_case(), RunOptions())
    assert result.passed and result.error is None
    assert not [w for w in recwarn if issubclass(w.category, DarknetInputWarning)]


def test_run_over_generated_cases_does_not_warn(capsys):
    # yolov4 profiles generate out-of-range classes, terminators and rows beyond max on purpose
    with warnings.catch_warnings():
        warnings.simplefilter("error", DarknetInputWarning)
        code = main(["run", "--profile", "yolov4-tiny", "--cases", "3"])
    out = capsys.readouterr()
    assert code in (0, 1) and "DarknetInputWarning" not in out.err and "darknet skips" not in out.err


def test_replay_of_one_file_shows_the_warning_and_of_a_folder_does_not(tmp_path, capsys):
    _quirky_case(tmp_path, "a.npz")
    assert main(["replay", str(tmp_path / "a.npz")]) == 0
    err = capsys.readouterr().err
    assert "darknet-parity replay: warning: " in err and "class id 85 is outside [0, 80): darknet skips" in err
    _quirky_case(tmp_path, "b.npz")
    assert main(["replay", str(tmp_path)]) == 0
    assert "warning" not in capsys.readouterr().err


# ---------------------------------------------------------------------------
# A missing or incompatible darknet library or header


def _fake_header(folder: Path, alexeyab: bool = False) -> Path:
    """A darknet.h that has every name the shim looks for (no real declarations: it is never compiled here)."""
    from parity.backends.darknet_library import NEEDS_ALEXEYAB, NEEDS_COMMON

    names = NEEDS_COMMON + (NEEDS_ALEXEYAB if alexeyab else ())
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "darknet.h").write_text("".join(f"int {name};\n" for name in names))
    return folder


def _dummy_lib(tmp_path: Path) -> Path:
    lib = tmp_path / "libdarknet.so"
    lib.write_text("not a shared library\n")
    return lib


def _lib_rows():
    # (argv tail for `run`, extra setup, expected fragment); setup(tmp_path) returns the --darknet-* values
    return [
        # the .so path does not exist
        pytest.param(lambda tmp: ["--darknet-lib", str(tmp / "absent.so")],
                     "darknet library not found: {tmp}/absent.so does not exist", "yolov3-pjreddie", id="missing-so"),
        # the library is there but its include folder holds no darknet.h
        pytest.param(lambda tmp: ["--darknet-lib", str(_dummy_lib(tmp)), "--darknet-include", str(tmp)],
                     "darknet header not found: {tmp}/darknet.h does not exist", "yolov3-pjreddie", id="missing-header"),
        # a darknet.h that is not darknet's (lacks the layer fields the shim sets)
        pytest.param(lambda tmp: ["--darknet-lib", str(_dummy_lib(tmp)), "--darknet-include",
                                  str(_write_text(tmp / "inc" / "darknet.h", "int unrelated;\n").parent)],
                     "lacks what the libdarknet shim needs", "yolov3-pjreddie", id="incompatible-header"),
        # a pjreddie library and header for an AlexeyAB profile: they cannot run AlexeyAB's semantics
        pytest.param(lambda tmp: ["--darknet-lib", str(DEBIAN_LIB), "--darknet-include", str(DEBIAN_INCLUDE)],
                     "but flavor 'alexeyab' was requested", "yolov4-tiny", id="header-flavor-mismatch",
                     marks=pytest.mark.skipif(not DEBIAN_LIB.is_file(), reason="Debian's libdarknet is not installed")),
    ]


def _write_text(path: Path, content: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content)
    return path


@pytest.mark.parametrize("args, fragment, profile", _lib_rows())
def test_run_with_a_bad_darknet_library_exits_2(tmp_path, capsys, args, fragment, profile):
    argv = ["run", "--profile", profile, "--cases", "1", "--reference", "libdarknet", *args(tmp_path)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert fragment.format(tmp=tmp_path) in err and "Traceback" not in err


def test_run_replay_with_a_missing_library_exits_2_before_any_case(tmp_path, capsys):
    # recorded cases carry their own reference, but a named library that is not there is still an error
    _quirky_case(tmp_path, "a.npz")
    argv = ["run", "--replay", str(tmp_path / "a.npz"), "--reference", "libdarknet", "--darknet-lib",
            str(tmp_path / "absent.so")]
    assert main(argv) == 2
    assert "darknet library not found" in capsys.readouterr().err


def test_replay_with_a_missing_library_exits_2(tmp_path, capsys):
    # cases recorded without a delta take it from --reference: a named library that is absent is exit 2
    argv = ["replay", str(tmp_path), "--reference", "libdarknet", "--darknet-lib", str(tmp_path / "absent.so")]
    (tmp_path / "a.npz").write_bytes(b"")
    assert main(argv) == 2
    assert "absent.so" in capsys.readouterr().err


@pytest.mark.skipif(not DEBIAN_INCLUDE.joinpath("darknet.h").is_file() or shutil.which("cc") is None,
                    reason="needs Debian's darknet.h and a C compiler")
def test_run_with_a_library_that_does_not_link_exits_2(tmp_path, capsys):
    # a real header, a file that is no library: the shim does not link; reported once per distinct error
    argv = ["run", "--profile", "yolov3-pjreddie", "--cases", "1", "--reference", "libdarknet",
            "--darknet-lib", str(_dummy_lib(tmp_path)), "--darknet-include", str(DEBIAN_INCLUDE)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "darknet-parity run: error:" in err and "_darknet_shim" in err and "Traceback" not in err


@pytest.mark.parametrize("args, fragment", [
    # the header folder holds no darknet.h
    pytest.param(lambda tmp: ["--darknet-lib", str(_dummy_lib(tmp)), "--darknet-include", str(tmp)],
                 "darknet header not found", id="missing-header"),
    # the header is pjreddie's, the flavor asked for AlexeyAB
    pytest.param(lambda tmp: ["--darknet-lib", str(_dummy_lib(tmp)), "--darknet-include", str(_fake_header(tmp / "i")),
                              "--flavor", "alexeyab"], "but flavor 'alexeyab' was requested", id="flavor-mismatch"),
    # the named library does not exist
    # the named library does not exist: an explicit path is an error, not a skip
    pytest.param(lambda tmp: ["--darknet-lib", str(tmp / "absent.so")], "absent.so", id="missing-so"),
])
@pytest.mark.filterwarnings("ignore::parity.errors.DarknetInputWarning")  # its random cases hold such rows
def test_verify_reference_with_a_bad_darknet_library_exits_2(tmp_path, capsys, args, fragment):
    one = tmp_path / "recorded"            # a one-case dev set, so the library check is what fails
    one.mkdir()
    shutil.copy(Path(__file__).resolve().parent.parent / "fixtures" / "generated" / "random-2024-9.npz",
                one / "case.npz")
    argv = ["verify-reference", "--recorded", str(one), "--libdarknet-cases", "1", *args(tmp_path)]
    assert main(argv) == 2
    assert fragment in capsys.readouterr().err


def test_python_api_refuses_a_header_of_the_other_flavor_before_compiling(tmp_path):
    # a pjreddie-looking darknet.h asked to run AlexeyAB semantics
    with pytest.raises(BuildError, match="looks like pjreddie/darknet's darknet.h .* but flavor 'alexeyab'"):
        run_reference(CONFIG, good_input(), good_truth(), backend="libdarknet", darknet_lib=str(_dummy_lib(tmp_path)),
                      darknet_include=str(_fake_header(tmp_path / "inc")))


def test_python_api_with_a_missing_library_raises_and_the_c_reference_still_works(tmp_path):
    before = run_reference(CONFIG_PJ, good_input(), good_truth())
    with pytest.raises(BuildError, match="darknet library not found"):
        run_reference(CONFIG_PJ, good_input(), good_truth(), backend="libdarknet",
                      darknet_lib=str(tmp_path / "absent.so"))
    with pytest.raises(ParityError, match="unknown reference backend 'cuda'"):
        run_reference(CONFIG_PJ, good_input(), good_truth(), backend="cuda")
    after = run_reference(CONFIG_PJ, good_input(), good_truth())
    np.testing.assert_array_equal(before.delta, after.delta)


# ---------------------------------------------------------------------------
# Candidates that go wrong


def _nan_module(tmp_path: Path) -> Path:
    # NaN at x of anchor 0, cell (0, 1) of image 0, where darknet's delta is finite
    return _write_text(tmp_path / "nan_port.py", (
        "from parity.candidates import parity_delta\n"
        "def loss(x, t, c):\n"
        "    d = parity_delta(x, t, c).clone()\n"
        "    d[0, 0, 0, 1] = float('nan')\n"
        "    d[0, 2, 1, 1] = float('inf')\n"
        "    return d\n"))


# (candidate spec, --convention, message on stderr); {tmp} and {broken} are filled in
CANDIDATE_ROWS = [
    # the port raises: the error names its own frame
    pytest.param("{broken}:raises", "delta", "raised when called: ValueError: boom in port", id="raises"),
    # a delta with one channel
    pytest.param("{broken}:wrong_shape", "delta", "returned shape (", id="wrong-shape"),
    # nothing returned
    pytest.param("{broken}:returns_none", None, "returned NoneType, not a torch tensor", id="returns-none"),
    # (loss, delta) instead of one of them
    pytest.param("{broken}:returns_tuple", None, "(a tuple or list: return only the loss, delta or gradient)",
                 id="returns-tuple"),
    # an integer delta
    pytest.param("{broken}:integer_delta", "delta", "returned dtype torch.int32", id="int-dtype"),
    # a loss computed on a detached copy: no gradient reaches the input
    pytest.param("{broken}:detached_loss", "loss", "does not depend on the input", id="detached-loss"),
    # the backward pass raises
    pytest.param("{broken}:failing_backward", "loss", "raised in backward: RuntimeError: backward exploded",
                 id="failing-backward"),
    # module:callable that does not exist, in each part
    pytest.param("no_such_module_for_parity:loss", None, "candidate module 'no_such_module_for_parity' not found",
                 id="missing-module"),
    pytest.param("{broken}:no_such_function", None, "has no attribute 'no_such_function'", id="missing-callable"),
    pytest.param("{tmp}/absent.py:loss", None, "candidate file '{tmp}/absent.py' not found", id="missing-file"),
    pytest.param("{broken}:NOT_CALLABLE", None, "NOT_CALLABLE is a int, not a callable", id="not-callable"),
    # the module's own import fails
    pytest.param(str(FIXTURES / "bad_import.py") + ":fn", None, "no_such_dependency_for_parity",
                 id="import-fails"),
    # not a spec at all
    pytest.param("just_a_name", None, "expected 'parity', 'naive', 'package.module:callable'", id="bad-spec"),
]


def _spec(template: str, tmp_path: Path) -> str:
    return template.format(tmp=tmp_path, broken=BROKEN)


@pytest.mark.parametrize("spec, convention, message", CANDIDATE_ROWS)
def test_a_bad_candidate_exits_2_with_a_clear_message(tmp_path, capsys, spec, convention, message):
    _nan_module(tmp_path)
    argv = ["run", "--profile", "yolov4-tiny", "--cases", "1", "--candidate", _spec(spec, tmp_path)]
    argv += ["--convention", convention] if convention else []
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert _spec(message, tmp_path) in err and "Traceback" not in err, err


def test_nan_where_darknet_is_finite_is_a_mismatch_explained_in_words(tmp_path, capsys, monkeypatch):
    # Not a usage error: the candidate differs from darknet.
    monkeypatch.setenv("COLUMNS", "400")
    spec = f"{_nan_module(tmp_path)}:loss"
    assert main(["run", "--profile", "yolov4-tiny", "--cases", "1", "--candidate", spec, "--convention", "delta"]) == 1
    out = capsys.readouterr().out
    assert "the candidate makes NaN/Inf itself" in out and "cause nonfinite" in out


def test_nan_from_a_nan_input_names_the_input_and_darknets_guard():
    from parity.candidates import Candidate
    from parity.generate import random_case, random_config

    def propagates(x, t, c):        # darknet's delta, except NaN wherever the input is not finite
        from parity.candidates import parity_delta
        d = parity_delta(x, t, c).clone()
        d[~torch.isfinite(x)] = float("nan")
        return d
    for seed in range(40):
        case = random_case(seed, random_config(np.random.default_rng([12, seed]), "alexeyab"), nonfinite=3)
        res = compare_case(case, RunOptions(), candidate=Candidate("propagates", propagates, "delta"))
        if not res.passed:
            break
    else:
        pytest.skip("no seed where darknet's delta stays finite at a NaN input")
    text = " ".join(c["message"] for c in res.causes if c["cause"] == "nonfinite")
    assert "the input holds" in text and "darknet's delta stays finite there" in text and "--finite-only" in text


def test_replay_with_a_candidate_returning_nan_exits_1(tmp_path, capsys):
    _quirky_case(tmp_path, "a.npz")
    spec = f"{_nan_module(tmp_path)}:loss"
    assert main(["replay", str(tmp_path / "a.npz"), "--candidate", spec, "--convention", "delta"]) == 1
    assert "could not be compared" not in capsys.readouterr().err


def test_finite_only_leaves_out_non_finite_inputs_and_says_so(capsys):
    # yolov4-tiny's forced samples plant NaN/Inf logits in some cases; the naive loss propagates them.
    assert main(["run", "--profile", "yolov4-tiny", "--cases", "4", "--candidate", "parity", "--finite-only"]) == 0
    out = capsys.readouterr().out
    assert "whose input holds NaN/Inf were left out (--finite-only)" in out


def test_nan_where_darknet_is_nan_too_is_not_an_error():
    # NaN logits: darknet's own delta is NaN there, and the port returning the same NaN agrees
    from parity.generate import random_case, random_config

    for seed in range(40):
        case = random_case(seed, random_config(np.random.default_rng([11, seed]), "alexeyab"), nonfinite=3)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DarknetInputWarning)
            ref = run_reference(case.config, case.input, case.truth).delta
        if not np.isfinite(ref).all():
            break
    else:
        pytest.skip("no seed gave a non-finite reference delta")
    result = compare_case(case, RunOptions())
    assert result.error is None and result.passed


def test_a_failing_candidate_does_not_change_the_next_result():
    from parity.candidates import load_candidate

    case = _quirky_case()
    good = compare_case(case, RunOptions())
    bad = compare_case(case, RunOptions(), candidate=load_candidate(f"{BROKEN}:raises"))
    again = compare_case(case, RunOptions())
    assert good.passed and again.passed and bad.error and "boom in port" in bad.error
    assert [c.max_abs for c in good.cells] == [c.max_abs for c in again.cells]


def test_a_one_anchor_case_is_compared_without_crashing(tmp_path, capsys):
    truth = good_truth()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DarknetInputWarning)
        res = run_reference(CONFIG, good_input(), truth)
    save_case(tmp_path / "one.npz", Case(dump_yolo_cfg(CONFIG), CONFIG, "alexeyab", good_input(), truth, res.output,
                                          res.delta, res.stats.as_dict(), {}))
    assert main(["replay", str(tmp_path / "one.npz")]) == 0


def test_merge_of_shards_with_an_error_exits_2(tmp_path, capsys):
    # the error travels in the shard's JSON; merging it keeps the exit code 2 and prints it
    argv = ["run", "--profile", "yolov4-tiny", "--cases", "1", "--candidate", f"{BROKEN}:raises", "--convention",
            "delta", "--json", str(tmp_path / "s1.json")]
    assert main(argv) == 2
    capsys.readouterr()
    assert main(["merge", str(tmp_path / "s1.json")]) == 2
    err = capsys.readouterr().err
    assert "darknet-parity merge: error: 2 of 2 case(s) could not be compared" in err and "boom in port" in err
