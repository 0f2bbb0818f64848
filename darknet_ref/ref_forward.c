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
#include <string.h>

#include "ref_layer.h"

/* Truths for which the cell's class-match test counts: AlexeyAB keeps the
 * best IoU only over truths when any class probability exceeds 0.25. */
static int any_class_above(ref_layer *L, int b, int a, int j, int i, float thresh)
{
    int n;
    for (n = 0; n < L->cfg->classes; ++n)
        if (L->output[ref_index(L, b, a, ENTRY_CLASS0 + n, j, i)] > thresh)
            return 1;
    return 0;
}

static float class_multiplier(const yref_config *c, int class_id)
{
    return c->classes_multipliers ? c->classes_multipliers[class_id] : 1.0f;
}

/* The largest class probability of a slot (NaN never wins): the quantity of
 * AlexeyAB's "some class > 0.25" test, for the decision export only. */
static float max_class_prob(ref_layer *L, int b, int a, int j, int i)
{
    float best = 0;
    int n;
    for (n = 0; n < L->cfg->classes; ++n) {
        const float p = L->output[ref_index(L, b, a, ENTRY_CLASS0 + n, j, i)];
        if (p > best)
            best = p;
    }
    return best;
}

/* What the cell pass decided at one slot, into the decision export. */
typedef struct cell_decision {
    rbox pred;
    float best_iou, second_iou, best_match_iou, max_class_prob;
    int best_truth, class_match;
} cell_decision;

static void export_cell(ref_layer *L, int b, int a, int j, int i, const cell_decision *cd)
{
    yref_decisions *d = L->dec;
    const long k = ref_slot(L, b, a, j, i);
    if (!d)
        return;
    if (d->best_iou)
        d->best_iou[k] = cd->best_iou;
    if (d->second_iou)
        d->second_iou[k] = cd->second_iou;
    if (d->best_truth)
        d->best_truth[k] = cd->best_iou > 0 ? cd->best_truth : -1;
    if (d->best_match_iou)
        d->best_match_iou[k] = cd->best_match_iou;
    if (d->max_class_prob)
        d->max_class_prob[k] = cd->max_class_prob;
    if (d->class_match)
        d->class_match[k] = cd->class_match;
    if (d->pred_box) {
        d->pred_box[4 * k + 0] = cd->pred.x;
        d->pred_box[4 * k + 1] = cd->pred.y;
        d->pred_box[4 * k + 2] = cd->pred.w;
        d->pred_box[4 * k + 3] = cd->pred.h;
    }
}

/* Per-image sums darknet keeps in float before adding them up over images. */
typedef struct image_sums {
    float tot_iou, tot_iou_loss, tot_giou_loss;
    int count;
} image_sums;

/* Step 1 for one cell/anchor (AlexeyAB). */
static void cell_pass_alexeyab(ref_layer *L, int b, int a, int j, int i)
{
    const yref_config *c = L->cfg;
    const int limit = ref_truth_limit(L);
    const long obj = ref_index(L, b, a, ENTRY_OBJ, j, i);
    rbox pred = ref_pred_box(L, b, a, c->mask[a], j, i);
    /* The class-match test does not depend on the truth: evaluate it once. */
    const int class_match = any_class_above(L, b, a, j, i, 0.25f);
    float best_match_iou = 0, best_iou = 0, second_iou = 0;
    int best_t = 0, t;

    for (t = 0; t < limit; ++t) {
        ref_truth tr = ref_read_truth(L, b, t);
        if (!tr.box.x)
            break;
        if (!tr.class_ok)
            continue;
        if (isnan(L->output[obj]) || isinf(L->output[obj])) {
            L->output[obj] = 0;
            ref_mark(L, b, a, j, i, YREF_ROLE_OBJ_NONFINITE);
            ref_count(L, YREF_BR_OBJ_NONFINITE);
        }
        {
            const float iou = rbox_iou(pred, tr.box, 0);
            if (iou > best_match_iou && class_match)
                best_match_iou = iou;
            if (iou > best_iou) {
                second_iou = best_iou;
                best_iou = iou;
                best_t = t;
            } else if (iou > second_iou) {
                second_iou = iou;
            }
        }
    }
    if (L->dec) {
        cell_decision cd;
        cd.pred = pred;
        cd.best_iou = best_iou;
        cd.second_iou = second_iou;
        cd.best_match_iou = best_match_iou;
        cd.max_class_prob = max_class_prob(L, b, a, j, i);
        cd.best_truth = best_t;
        cd.class_match = class_match;
        export_cell(L, b, a, j, i, &cd);
    }

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
        ref_truth tr = ref_read_truth(L, b, best_t);
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
static void cell_pass_pjreddie(ref_layer *L, int b, int a, int j, int i)
{
    const yref_config *c = L->cfg;
    const int limit = ref_truth_limit(L);
    const long obj = ref_index(L, b, a, ENTRY_OBJ, j, i);
    rbox pred = ref_pred_box(L, b, a, c->mask[a], j, i);
    float best_iou = 0, second_iou = 0;
    int best_t = 0, t;

    for (t = 0; t < limit; ++t) {
        ref_truth tr = ref_read_truth(L, b, t);
        if (!tr.box.x)
            break;
        {
            const float iou = rbox_iou(pred, tr.box, 1);
            if (iou > best_iou) {
                second_iou = best_iou;
                best_iou = iou;
                best_t = t;
            } else if (iou > second_iou) {
                second_iou = iou;
            }
        }
    }
    if (L->dec) {
        cell_decision cd;
        cd.pred = pred;
        cd.best_iou = cd.best_match_iou = best_iou;
        cd.second_iou = second_iou;
        cd.max_class_prob = 0;
        cd.best_truth = best_t;
        cd.class_match = 1;
        export_cell(L, b, a, j, i, &cd);
    }
    L->delta[obj] = 0 - L->output[obj];
    if (best_iou > c->ignore_thresh) {
        ref_mark(L, b, a, j, i, YREF_ROLE_IGNORED);
        ref_count(L, YREF_BR_IGNORE);
        L->delta[obj] = 0;
    }
    if (best_iou > c->truth_thresh) {
        ref_truth tr = ref_read_truth(L, b, best_t);
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

/* Step 2 for one truth assigned to anchor slot a (darknet's biases index
 * `anchor`) at cell (j, i): box, objectness and class deltas. */
/* One truth-pass write, appended to the decision export (counted past the capacity, never stored there). */
static void export_assignment(ref_layer *L, int b, int t, int a, int anchor, int j, int i, int extra, float iou)
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

static void assign(ref_layer *L, image_sums *sums, ref_truth tr, int b, int t, int a, int anchor, int j, int i,
                   int extra)
{
    const yref_config *c = L->cfg;
    const long obj = ref_index(L, b, a, ENTRY_OBJ, j, i);
    const int pjreddie = c->flavor == YREF_PJREDDIE;
    const float cm = pjreddie ? 1.0f : class_multiplier(c, tr.class_id);
    ref_ious ious = ref_delta_box(L, tr.box, b, a, anchor, j, i, 2 - tr.box.w * tr.box.h,
                                  pjreddie ? 1.0f : c->iou_normalizer * cm);
    export_assignment(L, b, t, a, anchor, j, i, extra, ious.iou);
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

/* A used truth row into the decision export: its best anchor, cell and the
 * anchor IoUs (recomputed here with the same function and arguments as the
 * choice just made, so the same floats). */
static void export_truth(ref_layer *L, int b, int t, rbox shape, int best_n, int i, int j)
{
    const yref_config *c = L->cfg;
    yref_decisions *d = L->dec;
    const long row = (long)b * c->truth_rows + t;
    const int pjreddie = c->flavor == YREF_PJREDDIE;
    int n;
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
    for (n = 0; n < c->total; ++n) {
        if (d->anchor_iou)
            d->anchor_iou[row * c->total + n] = rbox_iou(anchor_shape(c, n), shape, pjreddie);
        if (d->anchor_thresh_iou)
            d->anchor_thresh_iou[row * c->total + n] =
                pjreddie ? 0 : rbox_iou_kind(anchor_shape(c, n), shape, c->iou_thresh_kind);
    }
}

/* Step 2 for one image. Returns a status (a truth outside the grid). */
static int truth_pass(ref_layer *L, int b, image_sums *sums)
{
    const yref_config *c = L->cfg;
    const int pjreddie = c->flavor == YREF_PJREDDIE;
    const int limit = ref_truth_limit(L);
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
            if (iou > best_iou) {
                best_iou = iou;
                best_n = n;
            }
        }
        export_truth(L, b, t, shape, best_n, i, j);
        a = mask_slot(c, best_n);
        if (a >= 0) {
            ref_mark(L, b, a, j, i, YREF_ROLE_BEST_ANCHOR);
            assign(L, sums, tr, b, t, a, best_n, j, i, 0);
        } else {
            ref_count(L, YREF_BR_ANCHOR_OUTSIDE_MASK);
        }
        if (pjreddie || !(c->iou_thresh < 1.0f))
            continue;
        for (n = 0; n < c->total; ++n) {
            const int slot = mask_slot(c, n);
            if (slot < 0 || n == best_n)
                continue;
            if (rbox_iou_kind(anchor_shape(c, n), shape, c->iou_thresh_kind) > c->iou_thresh) {
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
static void averaging_pass(ref_layer *L, int b)
{
    const yref_config *c = L->cfg;
    int i, j, a;
    for (j = 0; j < c->h; ++j)
        for (i = 0; i < c->w; ++i)
            for (a = 0; a < c->n; ++a)
                if (L->delta[ref_index(L, b, a, ENTRY_OBJ, j, i)] != 0) {
                    const int divisor = ref_average_box(L, b, a, j, i);
                    if (L->dec && L->dec->divisor)
                        L->dec->divisor[ref_slot(L, b, a, j, i)] = divisor;
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

/* Initial values of the decision export: nothing decided yet. */
static void clear_decisions(const yref_config *c, yref_decisions *d)
{
    const long slots = (long)c->batch * c->n * c->h * c->w;
    const long rows = (long)c->batch * c->truth_rows;
    long k;
    if (d->best_iou)
        memset(d->best_iou, 0, sizeof(float) * slots);
    if (d->second_iou)
        memset(d->second_iou, 0, sizeof(float) * slots);
    if (d->best_match_iou)
        memset(d->best_match_iou, 0, sizeof(float) * slots);
    if (d->max_class_prob)
        memset(d->max_class_prob, 0, sizeof(float) * slots);
    if (d->class_match)
        memset(d->class_match, 0, sizeof(int) * slots);
    if (d->divisor)
        memset(d->divisor, 0, sizeof(int) * slots);
    if (d->pred_box)
        memset(d->pred_box, 0, sizeof(float) * 4 * slots);
    if (d->best_truth)
        for (k = 0; k < slots; ++k)
            d->best_truth[k] = -1;
    if (d->truth_used)
        memset(d->truth_used, 0, sizeof(int) * rows);
    for (k = 0; k < rows; ++k) {
        if (d->truth_best_anchor)
            d->truth_best_anchor[k] = -1;
        if (d->truth_i)
            d->truth_i[k] = -1;
        if (d->truth_j)
            d->truth_j[k] = -1;
    }
    if (d->anchor_iou)
        memset(d->anchor_iou, 0, sizeof(float) * rows * c->total);
    if (d->anchor_thresh_iou)
        memset(d->anchor_thresh_iou, 0, sizeof(float) * rows * c->total);
    d->assign_count = 0;
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
    int b, a, j, i;
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
    L.dec = decisions;
    if (decisions) {
        if (decisions->assign_capacity < 0)
            return YREF_ERR_SIZE;
        clear_decisions(cfg, decisions);
    }
    L.stride = (long)cfg->w * cfg->h;
    L.outputs = L.stride * cfg->n * (5 + cfg->classes);
    L.status = YREF_OK;
    status = check_truths(&L);
    if (status != YREF_OK)
        return status;

    memcpy(output, input, sizeof(float) * L.outputs * cfg->batch);
    memset(delta, 0, sizeof(float) * L.outputs * cfg->batch);
    if (roles)
        memset(roles, 0, sizeof(int) * L.stride * cfg->n * cfg->batch);
    ref_activate(&L);

    for (b = 0; b < cfg->batch; ++b) {
        image_sums sums = {0, 0, 0, 0};
        for (j = 0; j < cfg->h; ++j)
            for (i = 0; i < cfg->w; ++i)
                for (a = 0; a < cfg->n; ++a) {
                    if (cfg->flavor == YREF_PJREDDIE)
                        cell_pass_pjreddie(&L, b, a, j, i);
                    else
                        cell_pass_alexeyab(&L, b, a, j, i);
                }
        status = truth_pass(&L, b, &sums);
        if (status != YREF_OK)
            return status;
        if (cfg->flavor == YREF_ALEXEYAB && cfg->iou_thresh < 1.0f)
            averaging_pass(&L, b);
        total.tot_iou += sums.tot_iou;
        total.tot_iou_loss += sums.tot_iou_loss;
        total.tot_giou_loss += sums.tot_giou_loss;
        total.count += sums.count;
    }
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
