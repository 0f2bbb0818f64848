/*
 * libdarknet_shim.h - the interface of the shim that runs one [yolo] layer of
 * an installed darknet library (parity/libdarknet.py compiles it with cffi).
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

/* Our option codes for iou_loss / iou_thresh_kind (not darknet's enum). */
#define DPS_LOSS_MSE 0
#define DPS_LOSS_IOU 1
#define DPS_LOSS_GIOU 2
#define DPS_LOSS_DIOU 3
#define DPS_LOSS_CIOU 4

typedef struct dps_config {
    int batch, w, h;            /* images, grid width, grid height */
    int n, total, classes;      /* anchors in mask, anchors listed, classes */
    int max_boxes;
    int truth_rows, truth_cols; /* layout of the caller's truth array (cols 5 or 6) */
    int net_w, net_h;
    const int *mask;            /* n entries */
    const float *biases;        /* 2*total anchor sizes in pixels */
    const float *classes_multipliers; /* classes entries, or NULL (AlexeyAB only) */
    float ignore_thresh, truth_thresh, iou_thresh;
    int iou_thresh_kind, iou_loss;    /* DPS_LOSS_* */
    float iou_normalizer, obj_normalizer, cls_normalizer, delta_normalizer;
    float scale_x_y;
    int new_coords, objectness_smooth, focal_loss, show_details;
    float label_smooth_eps, max_delta;
} dps_config;

typedef struct dps_result {
    float cost;                 /* *l.cost after the forward pass */
    int total_bbox, rewritten_bbox; /* AlexeyAB's counters (0 for pjreddie) */
    int bad_image, bad_row;     /* the truth row behind a DPS_ERR_WRONG_LABEL, _TRUTH_CELL or _CLASS_ID */
} dps_result;

/* 1 if compiled against an AlexeyAB darknet.h, 0 for pjreddie's. */
int dps_alexeyab(void);

/* Path of the shared object that provides forward_yolo_layer, into buf
 * (cap bytes); returns 0, or -1 if the loader cannot tell. */
int dps_library_path(char *buf, int cap);

/* 1 if that library was built with GPU (its CPU forward skips activation). */
int dps_library_has_gpu(void);

/*
 * Build one [yolo] layer with the library's make_yolo_layer, set its options
 * as parse_yolo would, run forward_yolo_layer in training mode, and copy out
 * output and delta (batch*n*(5+classes)*h*w floats each). With quiet set,
 * fds 1 and 2 point at /dev/null during the library calls.
 */
int dps_forward(const dps_config *cfg, const float *input, const float *truth,
                float *output, float *delta, dps_result *result, int quiet);

#endif
