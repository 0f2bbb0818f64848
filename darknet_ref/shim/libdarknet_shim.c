/*
 * libdarknet_shim.c - run one [yolo] layer of an installed darknet library.
 *
 * Compiled by parity/backends/libdarknet.py (with shim_common.c) against the
 * library's OWN darknet.h, with DPS_ALEXEYAB defined to 1 when that header
 * declares network_state (AlexeyAB/darknet) and to 0 otherwise
 * (pjreddie/darknet, 2018). The layer
 * is made by the library's make_yolo_layer and run by its forward_yolo_layer;
 * this file only sets fields, lays out the truth buffer the way darknet's
 * data loader does, and copies results out.
 *
 * Safety: darknet indexes its arrays with the truth centre and class id and
 * has no range checks, so every truth row it would read is checked here
 * first (the Python side refuses the same rows with a message). Nothing here
 * aborts: problems come back as DPS_ERR_* codes.
 *
 * Side effects of the library itself: make_yolo_layer calls srand() (0 in
 * pjreddie, time(0) in AlexeyAB), and AlexeyAB's forward starts one pthread
 * per image whose counter increments (total_bbox, rewritten_bbox) are not
 * atomic, so on several cores those counters can come out lower than a
 * single-threaded run's. pjreddie's forward is single-threaded.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <float.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "darknet.h"
#include "libdarknet_shim.h"
#include "shim_common.h"

#ifndef DPS_ALEXEYAB
#error "compile with -DDPS_ALEXEYAB=0 (pjreddie darknet.h) or -DDPS_ALEXEYAB=1 (AlexeyAB darknet.h)"
#endif

/* Neither library declares its yolo layer functions in darknet.h. */
#if DPS_ALEXEYAB
layer make_yolo_layer(int batch, int w, int h, int n, int total, int *mask, int classes, int max_boxes);
void forward_yolo_layer(const layer l, network_state state);
#else
layer make_yolo_layer(int batch, int w, int h, int n, int total, int *mask, int classes);
void forward_yolo_layer(const layer l, network net);
#endif

/* pjreddie reads truths at a fixed stride of 4 + 1 floats per box. */
#define PJ_TRUTH_SIZE 5

/* ------------------------------------------------------------------------
 * Checking what darknet will index with.
 */

static int check_sizes(const yref_config *c)
{
    long long per_image_truths;
    if (c->batch < 1 || c->w < 1 || c->h < 1 || c->n < 1 || c->total < 1 || c->classes < 1 ||
        c->max_boxes < 0 || c->truth_rows < 0 || (c->truth_cols != 5 && c->truth_cols != 6) ||
        c->net_w < 1 || c->net_h < 1)
        return DPS_ERR_SIZE;
    /* darknet indexes outputs*batch (and every smaller product) in int. Checked in
     * double: exact while the product fits an int, and it cannot overflow. */
    if ((double)c->w * c->h * c->n * (5.0 + c->classes) * c->batch > INT_MAX || 2LL * c->total > INT_MAX)
        return DPS_ERR_SIZE;
    /* AlexeyAB sizes its truth buffer as max_boxes * 6 per image, in int. */
    per_image_truths = (long long)c->max_boxes * 6;
    if (per_image_truths * c->batch > INT_MAX)
        return DPS_ERR_SIZE;
    return DPS_OK;
}

static int check_options(const yref_config *c)
{
    int k;
    /* The header decided the flavor at compile time; the config must agree. */
    if (c->flavor != (DPS_ALEXEYAB ? YREF_ALEXEYAB : YREF_PJREDDIE))
        return DPS_ERR_OPTION;
    for (k = 0; k < c->n; ++k)
        if (c->mask[k] < 0 || c->mask[k] >= c->total)
            return DPS_ERR_MASK;
    if (c->iou_loss < YREF_LOSS_MSE || c->iou_loss > YREF_LOSS_CIOU ||
        c->iou_thresh_kind < YREF_LOSS_IOU || c->iou_thresh_kind > YREF_LOSS_CIOU)
        return DPS_ERR_OPTION;
    /* darknet writes the class delta at map[class_id] unchecked */
    for (k = 0; c->class_map && k < c->classes; ++k)
        if (c->class_map[k] < 0 || c->class_map[k] >= c->classes)
            return DPS_ERR_OPTION;
    return DPS_OK;
}

/* Class id as darknet's (int) conversion gives it; -1 where that is undefined. */
static int truth_class(float value)
{
    if (!(value > -2147483649.0f && value < 2147483648.0f))
        return -1;
    return (int)value;
}

/* The grid cell darknet computes for a centre: (int)(x * w) in float. */
static int centre_in_grid(float x, float y, int w, int h)
{
    if (!(x >= 0 && x < 1 && y >= 0 && y < 1))
        return 0;
    return (int)(x * w) < w && (int)(y * h) < h;
}

/*
 * Check every truth row darknet will read (up to max_boxes, stopping at the
 * first x == 0): AlexeyAB shells out for labels outside [0,1] or with a
 * negative size; rows darknet uses must index inside the grid and (pjreddie,
 * which never checks) inside the class block.
 */
static int check_truths(const yref_config *c, const float *truth, dps_result *r)
{
    const int limit = c->max_boxes < c->truth_rows ? c->max_boxes : c->truth_rows;
    int b, t;
    for (b = 0; b < c->batch; ++b) {
        for (t = 0; t < limit; ++t) {
            const float *row = truth + ((long)b * c->truth_rows + t) * c->truth_cols;
            const int cls = truth_class(row[4]);
            const int class_ok = cls >= 0 && cls < c->classes;
            int status = DPS_OK;
            if (!row[0])
                break;
            if (DPS_ALEXEYAB && (row[0] < 0 || row[1] < 0 || row[0] > 1 || row[1] > 1 ||
                                 row[2] < 0 || row[3] < 0))
                status = DPS_ERR_WRONG_LABEL;
            else if (!DPS_ALEXEYAB && !class_ok)
                status = DPS_ERR_CLASS_ID;
            else if (class_ok && !centre_in_grid(row[0], row[1], c->w, c->h))
                status = DPS_ERR_TRUTH_CELL;
            if (status != DPS_OK) {
                r->bad_image = b;
                r->bad_row = t;
                return status;
            }
        }
    }
    return DPS_OK;
}

/* ------------------------------------------------------------------------
 * Making the layer as parse_yolo does.
 */

#if DPS_ALEXEYAB
static IOU_LOSS iou_kind(int code)
{
    switch (code) {
    case YREF_LOSS_MSE: return MSE;
    case YREF_LOSS_GIOU: return GIOU;
    case YREF_LOSS_DIOU: return DIOU;
    case YREF_LOSS_CIOU: return CIOU;
    default: return IOU;
    }
}

/* parse_yolo's option reads, after make_yolo_layer (max_boxes is an argument). */
static int set_options(layer *l, const yref_config *c)
{
    l->show_details = c->show_details;
    l->max_delta = c->max_delta;
    if (c->classes_multipliers) {
        /* free_layer frees this array, as parse_yolo's own copy. */
        l->classes_multipliers = malloc(sizeof(float) * (size_t)c->classes);
        if (!l->classes_multipliers)
            return DPS_ERR_ALLOC;
        memcpy(l->classes_multipliers, c->classes_multipliers, sizeof(float) * (size_t)c->classes);
    }
    l->label_smooth_eps = c->label_smooth_eps;
    l->scale_x_y = c->scale_x_y;
    l->objectness_smooth = c->objectness_smooth;
    l->new_coords = c->new_coords;
    l->iou_normalizer = c->iou_normalizer;
    l->obj_normalizer = c->obj_normalizer;
    l->cls_normalizer = c->cls_normalizer;
    l->iou_loss = iou_kind(c->iou_loss);
    l->iou_thresh_kind = iou_kind(c->iou_thresh_kind);
    l->focal_loss = c->focal_loss;
    l->ignore_thresh = c->ignore_thresh;
    l->truth_thresh = c->truth_thresh;
    l->iou_thresh = c->iou_thresh;
    return DPS_OK;
}

static int truth_stride(const layer *l)
{
    return l->truth_size;
}
#else
static int set_options(layer *l, const yref_config *c)
{
    l->max_boxes = c->max_boxes;
    l->ignore_thresh = c->ignore_thresh;
    l->truth_thresh = c->truth_thresh;
    return DPS_OK;
}

static int truth_stride(const layer *l)
{
    (void)l;
    return PJ_TRUTH_SIZE;
}
#endif

/*
 * map= as parse_yolo's read_map leaves it (both flavors read it): a heap
 * array in l.map, which free_layer frees (with free(), as read_map's
 * realloc'd array), so release_layer leaves no pointer behind.
 */
static int set_map(layer *l, const yref_config *c)
{
    if (!c->class_map)
        return DPS_OK;
    l->map = malloc(sizeof(int) * (size_t)c->classes);
    if (!l->map)
        return DPS_ERR_ALLOC;
    memcpy(l->map, c->class_map, sizeof(int) * (size_t)c->classes);
    return DPS_OK;
}

static layer make_layer(const yref_config *c, int *mask)
{
#if DPS_ALEXEYAB
    return make_yolo_layer(c->batch, c->w, c->h, c->n, c->total, mask, c->classes, c->max_boxes);
#else
    return make_yolo_layer(c->batch, c->w, c->h, c->n, c->total, mask, c->classes);
#endif
}

/* Does the layer the library returned look like the one the header describes? */
static int layout_ok(const layer *l, const yref_config *c, const int *mask)
{
    const int outputs = c->w * c->h * c->n * (5 + c->classes);
    return l->type == YOLO && l->batch == c->batch && l->w == c->w && l->h == c->h &&
           l->n == c->n && l->total == c->total && l->classes == c->classes &&
           l->outputs == outputs && l->mask == mask && l->cost && l->biases && l->output && l->delta;
}

/* Release the layer; the mask is ours in pjreddie (its free_layer skips it). */
static void release_layer(layer l, int *mask)
{
    free_layer(l);
#if !DPS_ALEXEYAB
    free(mask);
#else
    (void)mask;
#endif
}

/* darknet's truth buffer: batch * l.truths floats, rows at the library's
 * stride, zero padded (a zero x ends an image's list). */
static float *make_truth_buffer(const layer *l, const yref_config *c, const float *truth)
{
    const int stride = truth_stride(l);
    const int rows = c->max_boxes < c->truth_rows ? c->max_boxes : c->truth_rows;
    const int copy_cols = c->truth_cols < stride ? c->truth_cols : stride;
    float *buf = calloc((size_t)c->batch * (size_t)l->truths + 1, sizeof(float));
    int b, t;
    if (!buf)
        return NULL;
    for (b = 0; b < c->batch; ++b)
        for (t = 0; t < rows; ++t)
            memcpy(buf + (long)b * l->truths + (long)t * stride,
                   truth + ((long)b * c->truth_rows + t) * c->truth_cols, sizeof(float) * (size_t)copy_cols);
    return buf;
}

/* ------------------------------------------------------------------------
 * The forward call.
 */

#if DPS_ALEXEYAB
static void run_forward(const layer *l, const yref_config *c, const float *input, float *truth,
                        dps_result *r)
{
    float zero_rolling[4] = {0, 0, 0, 0};
    int cur_iteration = 0;
    network_state state;
    memset(&state, 0, sizeof(state));
    state.input = (float *)input;   /* darknet only copies from it */
    state.truth = truth;
    state.train = 1;
    state.index = 0;
    state.net.w = c->net_w;
    state.net.h = c->net_h;
    state.net.batch = c->batch;
    state.net.total_bbox = &r->total_bbox;
    state.net.rewritten_bbox = &r->rewritten_bbox;
    /* Iteration 0 with max_batches, equidistant_point and the bad-label
     * options at 0 keeps the bad-label / equidistant code off. */
    state.net.cur_iteration = &cur_iteration;
    state.net.badlabels_reject_threshold = &zero_rolling[0];
    state.net.delta_rolling_max = &zero_rolling[1];
    state.net.delta_rolling_avg = &zero_rolling[2];
    state.net.delta_rolling_std = &zero_rolling[3];
    state.net.adversarial = 0;
    forward_yolo_layer(*l, state);
}
#else
static void run_forward(const layer *l, const yref_config *c, const float *input, float *truth,
                        dps_result *r)
{
    network net;
    (void)r;
    memset(&net, 0, sizeof(net));
    net.input = (float *)input;     /* darknet only copies from it */
    net.truth = truth;
    net.train = 1;
    net.index = 0;
    net.w = c->net_w;
    net.h = c->net_h;
    net.batch = c->batch;
    forward_yolo_layer(*l, net);
}
#endif

static int check_config(const yref_config *c, const float *input, const float *truth,
                        float *output, float *delta, dps_result *r)
{
    int status;
    if (!c || !input || !output || !delta || !r || !c->mask || !c->biases)
        return DPS_ERR_NULL;
    if ((status = check_sizes(c)) != DPS_OK)
        return status;
    if (c->truth_rows > 0 && !truth)
        return DPS_ERR_NULL;
    if ((status = check_options(c)) != DPS_OK)
        return status;
    return truth ? check_truths(c, truth, r) : DPS_OK;
}

/* make, set, check, run, copy out; the caller holds the quiet fds. */
static int forward_quiet(const yref_config *c, const float *input, const float *truth, int *mask,
                         float *output, float *delta, dps_result *r)
{
    const size_t count = (size_t)c->batch * c->w * c->h * c->n * (5 + c->classes);
    float *truth_buf;
    int status, k;
    layer l = make_layer(c, mask);
    if (!layout_ok(&l, c, mask))
        return DPS_ERR_LAYOUT;  /* leak rather than free a layer we cannot read */
    for (k = 0; k < 2 * c->total; ++k)
        l.biases[k] = c->biases[k];
    status = set_options(&l, c);
    if (status == DPS_OK)
        status = set_map(&l, c);
    if (status == DPS_OK && (l.max_boxes != c->max_boxes || truth_stride(&l) < 5 ||
                             (long long)c->max_boxes * truth_stride(&l) > l.truths))
        status = DPS_ERR_TRUTHS;
    truth_buf = status == DPS_OK ? make_truth_buffer(&l, c, truth) : NULL;
    if (status == DPS_OK && !truth_buf)
        status = DPS_ERR_ALLOC;
    if (status == DPS_OK) {
        run_forward(&l, c, input, truth_buf, r);
        memcpy(output, l.output, count * sizeof(float));
        memcpy(delta, l.delta, count * sizeof(float));
        r->cost = *l.cost;
    }
    free(truth_buf);
    release_layer(l, mask);
    return status;
}

int dps_forward(const yref_config *cfg, const float *input, const float *truth,
                float *output, float *delta, dps_result *result, int quiet)
{
    quiet_fds q = {{-1, -1}, 0};
    int *mask;
    int status;
    if (result)
        memset(result, 0, sizeof(*result));
    status = check_config(cfg, input, truth, output, delta, result);
    if (status != DPS_OK)
        return status;
    /* make_yolo_layer keeps this pointer as l.mask. */
    mask = malloc(sizeof(int) * (size_t)cfg->n);
    if (!mask)
        return DPS_ERR_ALLOC;
    memcpy(mask, cfg->mask, sizeof(int) * (size_t)cfg->n);
    if (quiet && quiet_begin(&q) != 0) {
        free(mask);
        return DPS_ERR_QUIET;
    }
    status = forward_quiet(cfg, input, truth, mask, output, delta, result);
    quiet_end(&q);
    return status;
}
