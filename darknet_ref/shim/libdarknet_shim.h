/*
 * libdarknet_shim.h - the interface of the shim that runs one [yolo] layer of
 * an installed darknet library (parity/backends/libdarknet.py compiles it with cffi).
 *
 * This header does not include darknet.h: cffi's glue code includes it, and
 * only libdarknet_shim.c sees the library's own types.
 */
#ifndef LIBDARKNET_SHIM_H
#define LIBDARKNET_SHIM_H

/* Status codes (0 = success); parity/libdarknet.py words them. */
#define DPS_OK 0
#define DPS_ERR_NULL 1          /* a required pointer is NULL */
#define DPS_ERR_SIZE 2          /* a size is non-positive or overflows darknet's int */
#define DPS_ERR_MASK 3          /* a mask entry outside [0, total) */
#define DPS_ERR_OPTION 4        /* an option code out of range */
#define DPS_ERR_ALLOC 5         /* out of memory */
#define DPS_ERR_QUIET 6         /* could not redirect stdout/stderr */
#define DPS_ERR_LAYOUT 7        /* make_yolo_layer's layer disagrees with the header */
#define DPS_ERR_WRONG_LABEL 8   /* AlexeyAB would log a "Wrong label" and run system() */
#define DPS_ERR_TRUTHS 9        /* the layer's truth buffer is too small for max_boxes */
#define DPS_ERR_TRUTH_CELL 10   /* a used truth centre maps outside the grid */
#define DPS_ERR_CLASS_ID 11     /* pjreddie: a class id outside [0, classes) */

/* The layer's options travel in the C reference's own struct (yref_config,
 * with its YREF_LOSS_* codes); its flavor field must match the header's. */
#include "yolo_ref.h"

typedef struct dps_result {
    float cost;                 /* *l.cost after the forward pass */
    int total_bbox, rewritten_bbox; /* AlexeyAB's counters (0 for pjreddie) */
    int bad_image, bad_row;     /* the truth row behind a DPS_ERR_WRONG_LABEL, _TRUTH_CELL or _CLASS_ID */
} dps_result;

/* dps_alexeyab, dps_library_path, dps_library_has_gpu: shim_common.h. */
#include "shim_common.h"

/*
 * Build one [yolo] layer with the library's make_yolo_layer, set its options
 * as parse_yolo would, run forward_yolo_layer in training mode, and copy out
 * output and delta (batch*n*(5+classes)*h*w floats each). With quiet set,
 * fds 1 and 2 point at /dev/null during the library calls.
 */
int dps_forward(const yref_config *cfg, const float *input, const float *truth,
                float *output, float *delta, dps_result *result, int quiet);

#endif
