/*
 * ref_forward.c - darknet's [yolo] training forward pass, image by image:
 *
 *   1. per cell and anchor: best IoU of the predicted box with the image's
 *      truths -> objectness delta (negative, ignored, or truth_thresh positive);
 *   2. per truth: best anchor by shape over all anchors, used if it is in this
 *      layer's mask, plus (AlexeyAB) every other mask anchor whose shape IoU
 *      exceeds iou_thresh -> box, objectness and class deltas;
 *   3. (AlexeyAB, iou_thresh < 1) averaging of box deltas over classes;
 *   4. cost and printed figures (ref_cost.c).
 *
 * One call, one thread: darknet's per-image threads change nothing but the
 * lost counter increments, which the recordings avoided by running on one CPU.
 */
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ref_layer.h"

/* AlexeyAB's class-match test (darknet's compare_yolo_class): does any
 * class probability of the slot exceed thresh? The ignore search keeps its
 * best_match_iou only when it does. With max_prob the scan goes on to the end
 * and reports the largest class value (NaN skipped, -inf if none compares),
 * for the decisions export; the answer is the same either way. */
static int any_class_above(ref_layer *L, int b, int a, int j, int i, float thresh, float *max_prob)
{
    int n, hit = 0;
    float m = -INFINITY;
    for (n = 0; n < L->cfg->classes; ++n) {
        const float v = L->output[ref_index(L, b, a, ENTRY_CLASS0 + n, j, i)];
        if (v > thresh) {
            if (!max_prob)
                return 1;
            hit = 1;
        }
        if (v > m)
            m = v;
    }
    if (max_prob)
        *max_prob = m;
    return hit;
}

/* map=: the class id written for a truth of class class_id (already in [0, classes)). */
static int mapped_class(const yref_config *c, int class_id)
{
    return c->class_map ? c->class_map[class_id] : class_id;
}

static float class_multiplier(const yref_config *c, int class_id)
{
    return c->classes_multipliers ? c->classes_multipliers[class_id] : 1.0f;
}

/* Per-image sums darknet keeps in float before adding them up over images. */
typedef struct image_sums {
    float tot_iou, tot_iou_loss, tot_giou_loss;
    int count;
} image_sums;

/* One truth the ignore search compares with: its row and its box prepared
 * for rbox_prep_inter (edges and area as rbox_iou computes them). */
typedef struct used_truth {
    rbox_prep box;
    int t;
} used_truth;

/* The truths darknet's per-cell search loops over, in row order: rows before
 * the first x == 0 within the limit, minus (AlexeyAB) rows whose class id is
 * out of range; pjreddie's were refused by check_truths. Read once per image
 * instead of once per slot. Returns how many were stored in `out` (limit
 * entries). */
static int used_truths(ref_layer *L, int b, used_truth *out)
{
    const int limit = ref_truth_limit(L);
    int t, count = 0;
    for (t = 0; t < limit; ++t) {
        ref_truth tr = ref_read_truth(L, b, t);
        if (!tr.box.x)
            break;
        if (!tr.class_ok && L->cfg->flavor == YREF_ALEXEYAB)
            continue;
        out[count].box = rbox_prepare(tr.box);
        out[count].t = t;
        count++;
    }
    return count;
}

/* The best IoU of one predicted box over the used truths (strict >, so the
 * first truth wins ties), and the best over those the class-match test lets
 * through (`class_match` is truth-independent, so that is all or none).
 * A pair whose intersection is 0 is skipped: rbox_iou is then 0, -0 or (for
 * pjreddie's unguarded division) NaN, and none of those is > a running best,
 * which is always >= 0. */
typedef struct search_result {
    float best_iou, best_match_iou;
    float second_iou;           /* runner-up over the other truths (for the export only) */
    int best_t;                 /* row of best_iou; 0 when it stayed 0 (darknet's initial value) */
} search_result;

static search_result ignore_search(rbox pred, const used_truth *truths, int count, int class_match,
                                   int pjreddie)
{
    const rbox_prep p = rbox_prepare(pred);
    search_result r = {0, 0, 0, 0};
    int k;
    for (k = 0; k < count; ++k) {
        const float inter = rbox_prep_inter(&p, &truths[k].box);
        float iou;
        if (inter == 0)
            continue;
        iou = rbox_prep_iou_of(&p, &truths[k].box, inter, pjreddie);
        if (iou > r.best_match_iou && class_match)
            r.best_match_iou = iou;
        if (iou > r.best_iou) {
            r.second_iou = r.best_iou;
            r.best_iou = iou;
            r.best_t = truths[k].t;
        } else if (iou > r.second_iou) {
            r.second_iou = iou;
        }
    }
    return r;
}

/* The cell pass's decisions for one slot, as it made them. */
static void export_cell(ref_layer *L, int b, int a, int j, int i, rbox pred, const search_result *s,
                        float best_match_iou, float max_prob, int class_match)
{
    yref_decisions *d = L->dec;
    const long slot = ref_slot(L, b, a, j, i);
    if (!d || slot < 0)
        return;
    if (d->best_iou)
        d->best_iou[slot] = s->best_iou;
    if (d->second_iou)
        d->second_iou[slot] = s->second_iou;
    if (d->best_truth)
        d->best_truth[slot] = s->best_iou > 0 ? s->best_t : -1;  /* best_iou > 0 iff it was updated */
    if (d->best_match_iou)
        d->best_match_iou[slot] = best_match_iou;
    if (d->max_class_prob)
        d->max_class_prob[slot] = max_prob;
    if (d->class_match)
        d->class_match[slot] = class_match;
    if (d->pred_box) {
        d->pred_box[4 * slot + 0] = pred.x;
        d->pred_box[4 * slot + 1] = pred.y;
        d->pred_box[4 * slot + 2] = pred.w;
        d->pred_box[4 * slot + 3] = pred.h;
    }
}

/* Step 1 for one cell/anchor (AlexeyAB). */
static void cell_pass_alexeyab(ref_layer *L, int b, int a, int j, int i, const used_truth *truths, int count)
{
    const yref_config *c = L->cfg;
    const long obj = ref_index(L, b, a, ENTRY_OBJ, j, i);
    rbox pred = ref_pred_box(L, b, a, c->mask[a], j, i);
    /* The class-match test does not depend on the truth: evaluate it once. */
    float max_prob = 0;
    const int class_match = any_class_above(L, b, a, j, i, 0.25f,
                                            L->dec && L->dec->max_class_prob ? &max_prob : NULL);
    search_result s;
    float best_match_iou, best_iou;

    /* darknet zeroes a non-finite objectness inside its truth loop, so only
     * where at least one truth is compared; the IoU does not depend on it. */
    if (count > 0 && (isnan(L->output[obj]) || isinf(L->output[obj]))) {
        L->output[obj] = 0;
        ref_mark(L, b, a, j, i, YREF_ROLE_OBJ_NONFINITE);
        ref_count(L, YREF_BR_OBJ_NONFINITE);
    }
    s = ignore_search(pred, truths, count, class_match, 0);
    best_match_iou = s.best_match_iou;
    best_iou = s.best_iou;
    export_cell(L, b, a, j, i, pred, &s, best_match_iou, max_prob, class_match);

    L->delta[obj] = c->obj_normalizer * (0 - L->output[obj]);
    if (best_match_iou > c->ignore_thresh) {
        ref_mark(L, b, a, j, i, YREF_ROLE_IGNORED);
        ref_count(L, YREF_BR_IGNORE);
        if (c->objectness_smooth) {
            const float smoothed = c->obj_normalizer * (best_match_iou - L->output[obj]);
            ref_count(L, YREF_BR_OBJECTNESS_SMOOTH);
            if (smoothed > L->delta[obj])
                L->delta[obj] = smoothed;
        } else {
            L->delta[obj] = 0;
        }
    } else if (best_iou > c->ignore_thresh) {
        ref_mark(L, b, a, j, i, YREF_ROLE_CLASSMATCH_BLOCKED);
        ref_count(L, YREF_BR_CLASSMATCH_BLOCKED);
    }

    if (best_iou > c->truth_thresh) {
        const float iou_mult = best_iou * best_iou;
        ref_truth tr = ref_read_truth(L, b, s.best_t);
        tr.class_id = mapped_class(c, tr.class_id);
        const float cm = class_multiplier(c, tr.class_id);
        ref_mark(L, b, a, j, i, YREF_ROLE_TRUTH_THRESH);
        ref_count(L, YREF_BR_TRUTH_THRESH);
        if (c->objectness_smooth)
            L->delta[obj] = c->obj_normalizer * (iou_mult - L->output[obj]);
        else
            L->delta[obj] = c->obj_normalizer * (1 - L->output[obj]);
        ref_delta_class(L, b, a, j, i, tr.class_id);
        if (c->objectness_smooth) {
            const long kc = ref_index(L, b, a, ENTRY_CLASS0 + tr.class_id, j, i);
            L->delta[kc] = cm * (iou_mult - L->output[kc]);
        }
        ref_delta_box(L, tr.box, b, a, c->mask[a], j, i, 2 - tr.box.w * tr.box.h, c->iou_normalizer * cm);
        L->stats->total_bbox++;
    }
}

/* Step 1 for one cell/anchor (pjreddie: no class-match test, no smoothing). */
static void cell_pass_pjreddie(ref_layer *L, int b, int a, int j, int i, const used_truth *truths, int count)
{
    const yref_config *c = L->cfg;
    const long obj = ref_index(L, b, a, ENTRY_OBJ, j, i);
    rbox pred = ref_pred_box(L, b, a, c->mask[a], j, i);
    const search_result s = ignore_search(pred, truths, count, 1, 1);
    const float best_iou = s.best_iou;

    export_cell(L, b, a, j, i, pred, &s, best_iou, 0, 1);

    L->delta[obj] = 0 - L->output[obj];
    if (best_iou > c->ignore_thresh) {
        ref_mark(L, b, a, j, i, YREF_ROLE_IGNORED);
        ref_count(L, YREF_BR_IGNORE);
        L->delta[obj] = 0;
    }
    if (best_iou > c->truth_thresh) {
        ref_truth tr = ref_read_truth(L, b, s.best_t);
        tr.class_id = mapped_class(c, tr.class_id);   /* pjreddie applies map= here too */
        ref_mark(L, b, a, j, i, YREF_ROLE_TRUTH_THRESH);
        ref_count(L, YREF_BR_TRUTH_THRESH);
        L->delta[obj] = 1 - L->output[obj];
        ref_delta_class(L, b, a, j, i, tr.class_id);
        ref_delta_box(L, tr.box, b, a, c->mask[a], j, i, 2 - tr.box.w * tr.box.h, 1);
    }
}

/* Index of `anchor` in the mask, or -1 (darknet's int_index). */
static int mask_slot(const yref_config *c, int anchor)
{
    int a;
    for (a = 0; a < c->n; ++a)
        if (c->mask[a] == anchor)
            return a;
    return -1;
}

/* An anchor's shape as a box centred at the origin, in network units. */
static rbox anchor_shape(const yref_config *c, int anchor)
{
    rbox s = {0, 0, 0, 0};
    s.w = c->biases[2 * anchor] / c->net_w;
    s.h = c->biases[2 * anchor + 1] / c->net_h;
    return s;
}

/* One step-2 write, appended to the export's assign rows (never past capacity). */
static void export_assign(ref_layer *L, int b, int t, int a, int anchor, int j, int i, int extra, float iou)
{
    yref_decisions *d = L->dec;
    if (!d)
        return;
    if (d->assign && d->assign_count < d->assign_capacity) {
        int *row = d->assign + 7 * d->assign_count;
        row[0] = b;
        row[1] = t;
        row[2] = a;
        row[3] = anchor;
        row[4] = j;
        row[5] = i;
        row[6] = extra;
        if (d->assign_iou)
            d->assign_iou[d->assign_count] = iou;
    }
    d->assign_count++;
}

/* Step 2 for one truth assigned to anchor slot a (darknet's biases index
 * `anchor`) at cell (j, i): box, objectness and class deltas. */
static void assign(ref_layer *L, image_sums *sums, ref_truth tr, int b, int t, int a, int anchor, int j, int i,
                   int extra)
{
    const yref_config *c = L->cfg;
    const long obj = ref_index(L, b, a, ENTRY_OBJ, j, i);
    const int pjreddie = c->flavor == YREF_PJREDDIE;
    tr.class_id = mapped_class(c, tr.class_id);   /* both flavors' truth passes apply map= */
    const float cm = pjreddie ? 1.0f : class_multiplier(c, tr.class_id);
    ref_ious ious = ref_delta_box(L, tr.box, b, a, anchor, j, i, 2 - tr.box.w * tr.box.h,
                                  pjreddie ? 1.0f : c->iou_normalizer * cm);
    if (!pjreddie)
        L->stats->total_bbox++;
    sums->tot_iou += ious.iou;
    sums->tot_iou_loss += 1 - ious.iou;
    sums->tot_giou_loss += 1 - ious.giou;

    if (pjreddie) {
        L->delta[obj] = 1 - L->output[obj];
    } else if (c->objectness_smooth) {
        const float target = cm * c->obj_normalizer * (1 - L->output[obj]);
        ref_count(L, YREF_BR_OBJECTNESS_SMOOTH);
        if (L->delta[obj] == 0)
            L->delta[obj] = target;
    } else {
        L->delta[obj] = cm * c->obj_normalizer * (1 - L->output[obj]);
    }
    ref_delta_class(L, b, a, j, i, tr.class_id);
    sums->count++;
    export_assign(L, b, t, a, anchor, j, i, extra, ious.iou);
}

/* The cell of a truth centre: the float product truncated, as darknet does.
 * Refuses centres darknet would index outside the grid with. */
static int truth_cell(const yref_config *c, rbox box, int *i, int *j)
{
    if (!(box.x > -1.0f && box.x < 1.0f && box.y > -1.0f && box.y < 1.0f))
        return YREF_ERR_TRUTH_CELL;
    *i = (int)(box.x * c->w);
    *j = (int)(box.y * c->h);
    if (*i < 0 || *i >= c->w || *j < 0 || *j >= c->h)
        return YREF_ERR_TRUTH_CELL;
    return YREF_OK;
}

/* Refuse, before anything is written, truths that would make darknet index
 * outside its arrays: a used centre outside the grid, or (pjreddie, which has
 * no range check) a class id outside [0, classes). */
static int check_truths(ref_layer *L)
{
    const yref_config *c = L->cfg;
    const int limit = ref_truth_limit(L);
    int b, t, i, j;
    for (b = 0; b < c->batch; ++b) {
        for (t = 0; t < limit; ++t) {
            ref_truth tr = ref_read_truth(L, b, t);
            if (!tr.box.x)
                break;
            if (!tr.class_ok) {
                if (c->flavor == YREF_PJREDDIE)
                    return YREF_ERR_CLASS_ID;
                continue;
            }
            if (truth_cell(c, tr.box, &i, &j) != YREF_OK)
                return YREF_ERR_TRUTH_CELL;
        }
    }
    return YREF_OK;
}

/* A used truth row's decisions: its cell and best anchor (step 2). */
static void export_truth(ref_layer *L, int b, int t, int best_n, int i, int j)
{
    yref_decisions *d = L->dec;
    const long row = (long)b * L->cfg->truth_rows + t;
    if (!d)
        return;
    if (d->truth_used)
        d->truth_used[row] = 1;
    if (d->truth_best_anchor)
        d->truth_best_anchor[row] = best_n;
    if (d->truth_i)
        d->truth_i[row] = i;
    if (d->truth_j)
        d->truth_j[row] = j;
}

/* One (truth row, anchor) value into a [batch, truth_rows, total] array, if wanted. */
static void export_pair(ref_layer *L, float *arr, int b, int t, int n, float v)
{
    if (arr)
        arr[((long)b * L->cfg->truth_rows + t) * L->cfg->total + n] = v;
}

/* Step 2 for one image. Returns a status (a truth outside the grid). */
static int truth_pass(ref_layer *L, int b, image_sums *sums)
{
    const yref_config *c = L->cfg;
    const int pjreddie = c->flavor == YREF_PJREDDIE;
    const int limit = ref_truth_limit(L);
    yref_decisions *dec = L->dec;
    const int want_thresh_iou = dec && dec->anchor_thresh_iou && !pjreddie;
    int t;

    for (t = 0; t < limit; ++t) {
        ref_truth tr = ref_read_truth(L, b, t);
        rbox shape = tr.box;
        float best_iou = 0;
        int best_n = 0, n, i, j, a;
        if (!tr.box.x) {
            ref_count(L, YREF_BR_ZERO_X_STOP);
            return YREF_OK;
        }
        if (!tr.class_ok) {
            if (pjreddie)
                return YREF_ERR_CLASS_ID;
            ref_count(L, YREF_BR_CLASS_OOB);
            continue;
        }
        if (truth_cell(c, tr.box, &i, &j) != YREF_OK)
            return YREF_ERR_TRUTH_CELL;

        shape.x = shape.y = 0;
        for (n = 0; n < c->total; ++n) {
            const float iou = rbox_iou(anchor_shape(c, n), shape, pjreddie);
            export_pair(L, dec ? dec->anchor_iou : NULL, b, t, n, iou);
            if (iou > best_iou) {
                best_iou = iou;
                best_n = n;
            }
        }
        export_truth(L, b, t, best_n, i, j);
        a = mask_slot(c, best_n);
        if (a >= 0) {
            ref_mark(L, b, a, j, i, YREF_ROLE_BEST_ANCHOR);
            assign(L, sums, tr, b, t, a, best_n, j, i, 0);
        } else {
            ref_count(L, YREF_BR_ANCHOR_OUTSIDE_MASK);
        }
        if (pjreddie || (!(c->iou_thresh < 1.0f) && !want_thresh_iou))
            continue;
        for (n = 0; n < c->total; ++n) {
            const int slot = mask_slot(c, n);
            /* darknet compares only mask anchors other than best_n, and only with iou_thresh < 1;
             * the export asks for the value of every pair. */
            const int compared = c->iou_thresh < 1.0f && slot >= 0 && n != best_n;
            float kind_iou;
            if (!compared && !want_thresh_iou)
                continue;
            kind_iou = rbox_iou_kind(anchor_shape(c, n), shape, c->iou_thresh_kind);
            export_pair(L, want_thresh_iou ? dec->anchor_thresh_iou : NULL, b, t, n, kind_iou);
            if (compared && kind_iou > c->iou_thresh) {
                ref_mark(L, b, slot, j, i, YREF_ROLE_EXTRA_ANCHOR);
                ref_count(L, YREF_BR_IOU_THRESH_EXTRA);
                assign(L, sums, tr, b, t, slot, n, j, i, 1);
            }
        }
    }
    /* Rows left unread although they hold boxes: max_boxes truncated them. */
    if (limit < c->truth_rows && L->truth[((long)b * c->truth_rows + limit) * c->truth_cols] != 0)
        ref_count(L, YREF_BR_MAX_TRUNCATED);
    return YREF_OK;
}

/* Step 3 for one image (AlexeyAB with iou_thresh < 1). */
/* Step 3 for one image (AlexeyAB with iou_thresh < 1; darknet's
 * averages_yolo_deltas). Every slot with a nonzero objectness delta is
 * visited and counted; its class deltas are counted only where
 * ref_delta_class wrote (elsewhere they are all 0: nothing to divide by). */
static void averaging_pass(ref_layer *L, int b)
{
    const yref_config *c = L->cfg;
    int i, j, a;
    for (j = 0; j < c->h; ++j)
        for (i = 0; i < c->w; ++i)
            for (a = 0; a < c->n; ++a) {
                long slot;
                if (L->delta[ref_index(L, b, a, ENTRY_OBJ, j, i)] == 0)
                    continue;
                slot = ref_slot(L, b, a, j, i);
                if (L->class_written[slot]) {
                    const int divisor = ref_average_box(L, b, a, j, i);
                    if (L->dec && L->dec->divisor)
                        L->dec->divisor[slot] = divisor;
                } else {
                    ref_count(L, YREF_BR_AVERAGING);  /* no class delta: nothing divided */
                }
            }
}

static int check_config(const yref_config *c, const float *input, const float *truth,
                        const float *output, const float *delta, const yref_stats *stats)
{
    int a;
    if (!c || !input || !output || !delta || !stats || !c->mask || !c->biases)
        return YREF_ERR_NULL;
    if (c->batch <= 0 || c->w <= 0 || c->h <= 0 || c->n <= 0 || c->total <= 0 || c->classes <= 0 ||
        c->max_boxes < 0 || c->truth_rows < 0 || (c->truth_cols != 5 && c->truth_cols != 6) ||
        c->net_w <= 0 || c->net_h <= 0)
        return YREF_ERR_SIZE;
    if (c->truth_rows > 0 && !truth)
        return YREF_ERR_NULL;
    /* outputs per image must fit a long without overflow */
    if (c->classes > INT_MAX - 5 || (double)c->w * c->h * c->n * (5.0 + c->classes) * c->batch > 9.0e15)
        return YREF_ERR_SIZE;
    for (a = 0; a < c->n; ++a)
        if (c->mask[a] < 0 || c->mask[a] >= c->total)
            return YREF_ERR_MASK;
    if (c->flavor != YREF_ALEXEYAB && c->flavor != YREF_PJREDDIE)
        return YREF_ERR_OPTION;
    if (c->iou_loss < YREF_LOSS_MSE || c->iou_loss > YREF_LOSS_CIOU ||
        c->iou_thresh_kind < YREF_LOSS_IOU || c->iou_thresh_kind > YREF_LOSS_CIOU)
        return YREF_ERR_OPTION;
    return YREF_OK;
}

/* Fill each wanted decision array with its "untouched" value. */
static void init_decisions(ref_layer *L, long slots)
{
    yref_decisions *d = L->dec;
    const yref_config *c = L->cfg;
    const long rows = (long)c->batch * c->truth_rows;
    const long pairs = rows * c->total;
    long k;
    if (!d)
        return;
    d->assign_count = 0;
    for (k = 0; k < slots; ++k) {
        if (d->best_iou) d->best_iou[k] = 0;
        if (d->second_iou) d->second_iou[k] = 0;
        if (d->best_truth) d->best_truth[k] = -1;
        if (d->best_match_iou) d->best_match_iou[k] = 0;
        if (d->max_class_prob) d->max_class_prob[k] = 0;
        if (d->class_match) d->class_match[k] = 0;
        if (d->divisor) d->divisor[k] = 0;
        if (d->pred_box) d->pred_box[4 * k] = d->pred_box[4 * k + 1] = d->pred_box[4 * k + 2] = d->pred_box[4 * k + 3] = 0;
    }
    for (k = 0; k < rows; ++k) {
        if (d->truth_used) d->truth_used[k] = 0;
        if (d->truth_best_anchor) d->truth_best_anchor[k] = -1;
        if (d->truth_i) d->truth_i[k] = -1;
        if (d->truth_j) d->truth_j[k] = -1;
    }
    for (k = 0; k < pairs; ++k) {
        if (d->anchor_iou) d->anchor_iou[k] = 0;
        if (d->anchor_thresh_iou) d->anchor_thresh_iou[k] = 0;
    }
}

int yref_forward(const yref_config *cfg, const float *input, const float *truth,
                 float *output, float *delta, int *roles, yref_stats *stats)
{
    return yref_forward_decisions(cfg, input, truth, output, delta, roles, stats, NULL);
}

int yref_forward_decisions(const yref_config *cfg, const float *input, const float *truth,
                           float *output, float *delta, int *roles, yref_stats *stats,
                           yref_decisions *decisions)
{
    ref_layer L;
    int status = check_config(cfg, input, truth, output, delta, stats);
    int b, a, j, i, limit;
    long slots;
    used_truth *truths;
    image_sums total = {0, 0, 0, 0};
    if (status != YREF_OK)
        return status;

    memset(stats, 0, sizeof(*stats));
    L.cfg = cfg;
    L.output = output;
    L.delta = delta;
    L.roles = roles;
    L.truth = truth;
    L.stats = stats;
    L.stride = (long)cfg->w * cfg->h;
    L.outputs = L.stride * cfg->n * (5 + cfg->classes);
    L.status = YREF_OK;
    L.class_written = NULL;
    L.dec = decisions;
    status = check_truths(&L);
    if (status != YREF_OK)
        return status;

    /* Scratch: one image's used truths, and the class-written flags. */
    limit = ref_truth_limit(&L);
    slots = L.stride * cfg->n * cfg->batch;
    truths = malloc(sizeof(*truths) * (size_t)(limit > 0 ? limit : 1));
    L.class_written = calloc((size_t)slots, 1);
    if (!truths || !L.class_written) {
        free(truths);
        free(L.class_written);
        return YREF_ERR_MEMORY;
    }

    init_decisions(&L, slots);
    memcpy(output, input, sizeof(float) * L.outputs * cfg->batch);
    memset(delta, 0, sizeof(float) * L.outputs * cfg->batch);
    if (roles)
        memset(roles, 0, sizeof(int) * slots);
    ref_activate(&L);

    for (b = 0; b < cfg->batch; ++b) {
        image_sums sums = {0, 0, 0, 0};
        const int count = used_truths(&L, b, truths);
        for (j = 0; j < cfg->h; ++j)
            for (i = 0; i < cfg->w; ++i)
                for (a = 0; a < cfg->n; ++a) {
                    if (cfg->flavor == YREF_PJREDDIE)
                        cell_pass_pjreddie(&L, b, a, j, i, truths, count);
                    else
                        cell_pass_alexeyab(&L, b, a, j, i, truths, count);
                }
        status = truth_pass(&L, b, &sums);
        if (status != YREF_OK)
            break;
        if (cfg->flavor == YREF_ALEXEYAB && cfg->iou_thresh < 1.0f)
            averaging_pass(&L, b);
        total.tot_iou += sums.tot_iou;
        total.tot_iou_loss += sums.tot_iou_loss;
        total.tot_giou_loss += sums.tot_giou_loss;
        total.count += sums.count;
    }
    free(truths);
    free(L.class_written);
    if (status != YREF_OK)
        return status;
    if (L.status != YREF_OK)
        return L.status;

    stats->assigned = total.count;
    stats->tot_iou = total.tot_iou;
    stats->tot_iou_loss = total.tot_iou_loss;
    stats->tot_giou_loss = total.tot_giou_loss;
    ref_cost(&L);
    return YREF_OK;
}

const char *yref_branch_name(int branch)
{
    static const char *const names[YREF_BR_COUNT] = {
        "ignore", "classmatch_blocked", "objectness_smooth", "truth_thresh",
        "anchor_outside_mask", "iou_thresh_extra", "rewritten_bbox", "class_shortcut",
        "averaging", "averaging_divides", "iou_loss_mse", "iou_loss_iou", "iou_loss_giou",
        "iou_loss_diou", "iou_loss_ciou", "max_delta_clip", "fix_nan_inf", "zero_x_stop",
        "class_oob", "max_truncated", "obj_nonfinite", "focal", "label_smooth",
    };
    if (branch < 0 || branch >= YREF_BR_COUNT)
        return "";
    return names[branch];
}
