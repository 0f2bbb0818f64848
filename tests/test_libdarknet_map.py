"""map= through the libdarknet backend: the shim sets l.map as parse_yolo's read_map leaves it.

Debian's pjreddie library reads map= too (pjreddie's parse_yolo calls
read_map; its forward writes the class delta at map[class]), so the l.map
path runs here on a real library. Its forward uses the class id for nothing
else, so a mapped run equals an unmapped one on truths whose class column is
already mapped. The AlexeyAB side of the shim is compile-checked against a
minimal AlexeyAB-style darknet.h (no AlexeyAB library here; see
DARKNET_PARITY_ALEXEYAB_LIB in test_libdarknet.py).
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from parity.backends.darknet_library import (CFLAGS, DEFAULT_INCLUDE, DEFAULT_LIB, NEEDS_ALEXEYAB, NEEDS_COMMON,
                                             missing_identifiers)
from parity.backends.libdarknet import run_libdarknet
from parity.config import YoloConfig
from parity.generate import random_case
from parity.reference import run_reference
from parity.torch import yolo_forward

ROOT = Path(__file__).resolve().parent.parent
SHIM = ROOT / "darknet_ref" / "shim"


def _debian() -> dict[str, str]:
    if not (DEFAULT_LIB.is_file() and (DEFAULT_INCLUDE / "darknet.h").is_file()):
        pytest.skip(f"Debian's darknet library is not installed ({DEFAULT_LIB})")
    return {"lib_path": str(DEFAULT_LIB), "include_dir": str(DEFAULT_INCLUDE)}


def _pj_case():
    config = YoloConfig(classes=4, num=3, mask=(0, 1, 2), anchors=(10, 14, 23, 27, 37, 58), max_boxes=90,
                        net_w=64, net_h=64, truth_thresh=0.5, flavor="pjreddie")
    case = random_case(7, config, flavor="pjreddie")
    truth = case.truth.copy()
    active = truth[..., 0] != 0
    assert active.any()
    return config, case.input, truth, active


@pytest.mark.filterwarnings("ignore::parity.errors.DarknetInputWarning")
def test_pjreddie_library_applies_the_map_as_darknet_does():
    lib = _debian()
    config, x, truth, active = _pj_case()
    cmap = (2, 3, 0, 1)
    plain = run_libdarknet(config, x, truth, "pjreddie", **lib)
    mapped = run_libdarknet(config.replace(class_map=cmap), x, truth, "pjreddie", **lib)
    remapped = truth.copy()
    remapped[..., 4][active] = np.take(cmap, remapped[..., 4][active].astype(int))
    relabelled = run_libdarknet(config, x, remapped, "pjreddie", **lib)
    assert not np.array_equal(mapped.delta, plain.delta)          # the library used l.map
    np.testing.assert_array_equal(mapped.delta, relabelled.delta)
    assert mapped.stats.cost == relabelled.stats.cost
    # and the C reference on the relabelled truths agrees bit for bit
    ref = run_reference(config, x, remapped, flavor="pjreddie")
    np.testing.assert_array_equal(ref.delta, mapped.delta)
    # and the C reference and the port apply the pjreddie map themselves, as the library does
    ours = run_reference(config.replace(class_map=cmap), x, truth, flavor="pjreddie")
    np.testing.assert_array_equal(ours.delta, mapped.delta)
    port = yolo_forward(torch.from_numpy(x), torch.from_numpy(truth), config.replace(class_map=cmap), "pjreddie")
    np.testing.assert_allclose(port.delta.numpy(), mapped.delta, rtol=1e-4, atol=1e-5)
    # the layer is freed with its map each call: many calls in one process stay sound
    for _ in range(20):
        again = run_libdarknet(config.replace(class_map=cmap), x, truth, "pjreddie", **lib)
    np.testing.assert_array_equal(again.delta, mapped.delta)


# --------------------------------------------------------------------------
# The AlexeyAB side of the shim, compiled against a minimal AlexeyAB-style header

_FAKE_ALEXEYAB_H = """
typedef enum { IOU, GIOU, MSE, DIOU, CIOU } IOU_LOSS;
typedef enum { CONVOLUTIONAL, YOLO } LAYER_TYPE;
typedef struct layer {
    LAYER_TYPE type; int batch, w, h, n, total, classes, outputs, truths, max_boxes, truth_size;
    int *mask; float *cost, *biases, *output, *delta; int *map; float *classes_multipliers;
    int show_details, objectness_smooth, new_coords, focal_loss;
    float max_delta, label_smooth_eps, scale_x_y, iou_normalizer, obj_normalizer, cls_normalizer;
    float delta_normalizer, ignore_thresh, truth_thresh, iou_thresh;
    IOU_LOSS iou_loss, iou_thresh_kind;
} layer;
typedef struct network {
    int w, h, batch, adversarial; int *total_bbox, *rewritten_bbox, *cur_iteration;
    float *badlabels_reject_threshold, *delta_rolling_max, *delta_rolling_avg, *delta_rolling_std;
    float *input, *truth; int train, index;
} network;
typedef struct network_state { float *truth, *input; int train, index; network net; } network_state;
void free_layer(layer l);
"""


def test_the_fake_header_names_what_the_shim_needs(tmp_path):
    # the header below must pass the same check real headers pass (else the compile test proves little)
    assert missing_identifiers(_FAKE_ALEXEYAB_H, NEEDS_COMMON + NEEDS_ALEXEYAB) == []


@pytest.mark.parametrize("alexeyab", [1, 0])
def test_the_shim_compiles_with_its_map_code(tmp_path, alexeyab):
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler")
    if alexeyab:
        include = tmp_path / "inc"
        include.mkdir()
        (include / "darknet.h").write_text(_FAKE_ALEXEYAB_H)
    else:
        include = _debian() and DEFAULT_INCLUDE
    cmd = [cc, *CFLAGS, "-Wall", "-Werror", "-fsyntax-only", f"-DDPS_ALEXEYAB={alexeyab}", f"-I{include}",
           f"-I{SHIM}", f"-I{ROOT / 'darknet_ref'}", str(SHIM / "libdarknet_shim.c")]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    source = (SHIM / "libdarknet_shim.c").read_text()
    assert "l->map = malloc" in source and source.index("set_map(&l, c)") < source.index("run_forward(&l")
