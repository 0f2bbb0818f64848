"""cffi builder (out-of-line API mode) for the C reference in ``darknet_ref/``.

The C sources ship as package data (``parity._csrc`` maps to ``darknet_ref/``)
and are compiled on first use into a cache keyed by their hash
(``parity.native.load_reference``), so an edit to the C never runs stale code
and no install step needs a compiler.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import cffi

from ..roles import ref_dir
from .native import sanitize_flags


REF_DIR = ref_dir()
SOURCES = ("ref_activate.c", "ref_box.c", "ref_cost.c", "ref_deltas.c", "ref_forward.c", "ref_fpmode.c",
           "ref_truths.c")
HEADERS = ("yolo_ref.h", "ref_box.h", "ref_layer.h")
# Strict IEEE float32: darknet's -O2 build is the semantics we reproduce.
CFLAGS = ["-std=c99", "-O2", "-fno-fast-math", "-ffp-contract=off", "-fno-strict-aliasing"]

# The layer config struct, shared with the libdarknet shim's cdef.
CONFIG_CDEF = """
typedef struct yref_config {
    int flavor;
    int batch, w, h;
    int n, total, classes;
    int max_boxes;
    int truth_rows, truth_cols;
    int net_w, net_h;
    const int *mask;
    const float *biases;
    const float *classes_multipliers;
    float ignore_thresh, truth_thresh, iou_thresh;
    int iou_thresh_kind;
    int iou_loss;
    float iou_normalizer, obj_normalizer, cls_normalizer;
    float scale_x_y;
    int new_coords, objectness_smooth, focal_loss, show_details;
    float label_smooth_eps, max_delta;
    const int *class_map;
} yref_config;
"""

# The stats struct and the plain entry point: the API every version of the reference has.
STATS_CDEF = """
typedef struct yref_stats {
    float cost;
    int count;
    int assigned;
    int rewritten_bbox, total_bbox;
    float tot_iou, tot_iou_loss, tot_giou_loss;
    float avg_iou;
    float class_loss, iou_loss, total_loss;
    long long branches[%(branch_count)d];
} yref_stats;

int yref_forward(const yref_config *cfg, const float *input, const float *truth,
                 float *output, float *delta, int *roles, yref_stats *stats);
"""

CDEF = CONFIG_CDEF + STATS_CDEF + """
typedef struct yref_decisions {
    float *best_iou;
    float *second_iou;
    int *best_truth;
    float *best_match_iou;
    float *max_class_prob;
    int *class_match;
    int *divisor;
    float *pred_box;
    int *truth_used;
    int *truth_best_anchor;
    int *truth_i, *truth_j;
    float *anchor_iou;
    float *anchor_thresh_iou;
    int *assign;
    float *assign_iou;
    long assign_capacity;
    long assign_count;
} yref_decisions;

int yref_forward_decisions(const yref_config *cfg, const float *input, const float *truth,
                           float *output, float *delta, int *roles, yref_stats *stats,
                           yref_decisions *decisions);
float yref_box_iou(float ax, float ay, float aw, float ah, float bx, float by, float bw, float bh,
                   int kind, int pjreddie);
const char *yref_branch_name(int branch);
unsigned yref_fp_mode(void);
void yref_set_fp_mode(unsigned mode);
"""


def branch_count(ref_dir: Path = REF_DIR) -> int:
    """Number of branch counters, read from the header (one source of truth)."""
    text = (ref_dir / "yolo_ref.h").read_text()
    body = text.split("enum yref_branch {", 1)[1].split("YREF_BR_COUNT", 1)[0]
    return sum(1 for line in body.splitlines() if line.strip().startswith("YREF_BR_"))


def source_hash(ref_dir: Path = REF_DIR) -> str:
    """Hash of every C file, the flags and cffi's version: the cache key."""
    h = hashlib.sha256()
    for name in SOURCES + HEADERS:
        h.update(name.encode())
        h.update((ref_dir / name).read_bytes())
    h.update(" ".join(CFLAGS).encode())
    h.update(cffi.__version__.encode())
    return h.hexdigest()[:16]


def make_builder(module_name: str, ref_dir: Path = REF_DIR) -> cffi.FFI:
    """An FFI ready to compile the reference as ``module_name``."""
    ffi = cffi.FFI()
    ffi.cdef(CDEF % {"branch_count": branch_count(ref_dir)})
    ffi.set_source(
        module_name,
        '#include "yolo_ref.h"\n',
        sources=[os.fspath(ref_dir / s) for s in SOURCES],
        include_dirs=[os.fspath(ref_dir)],
        extra_compile_args=CFLAGS + sanitize_flags(),
        extra_link_args=sanitize_flags(),
        libraries=["m"],
    )
    return ffi

