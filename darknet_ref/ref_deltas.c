/*
 * ref_deltas.c - what darknet writes into delta for one assigned box:
 * box deltas (delta_yolo_box), class deltas (delta_yolo_class) and the
 * averaging of box deltas over classes (averages_yolo_deltas).
 *
 * AlexeyAB accumulates box deltas (+=); pjreddie overwrites them. Deltas
 * are "target minus prediction" on the activated output, never multiplied
 * by the logistic derivative.
 */
#include <float.h>
#include <math.h>

#include "ref_layer.h"

static int finite_f(float v)
{
    return !isnan(v) && !isinf(v);
}

/* darknet's fix_nan_inf: a non-finite component becomes 0. */
static float fix_nonfinite(ref_layer *L, float v)
{
    if (finite_f(v))
        return v;
    ref_count(L, YREF_BR_FIX_NAN_INF);
    return 0;
}

static float clip_abs(ref_layer *L, float v, float limit)
{
    if (v > limit) {
        ref_count(L, YREF_BR_MAX_DELTA_CLIP);
        return limit;
    }
    if (v < -limit) {
        ref_count(L, YREF_BR_MAX_DELTA_CLIP);
        return -limit;
    }
    return v;
}

static const int loss_branch[5] = {
    YREF_BR_IOU_LOSS_MSE, YREF_BR_IOU_LOSS_IOU, YREF_BR_IOU_LOSS_GIOU,
    YREF_BR_IOU_LOSS_DIOU, YREF_BR_IOU_LOSS_CIOU,
};

/* MSE targets in darknet's encoding: offset within the cell, log (or with
 * new_coords sqrt) of size over anchor, each library call in double. */
static void mse_targets(const yref_config *c, rbox truth, int anchor, int j, int i, float t[4])
{
    const float aw = c->biases[2 * anchor];
    const float ah = c->biases[2 * anchor + 1];
    t[0] = truth.x * c->w - i;
    t[1] = truth.y * c->h - j;
    if (c->new_coords && c->flavor == YREF_ALEXEYAB) {
        t[2] = (float)sqrt(truth.w * c->net_w / (4 * aw));
        t[3] = (float)sqrt(truth.h * c->net_h / (4 * ah));
    } else {
        t[2] = (float)log(truth.w * c->net_w / aw);
        t[3] = (float)log(truth.h * c->net_h / ah);
    }
}

ref_ious ref_delta_box(ref_layer *L, rbox truth, int b, int a, int anchor, int j, int i,
                       float scale, float iou_normalizer)
{
    const yref_config *c = L->cfg;
    float *d = L->delta;
    const float *x = L->output;
    long k[4];
    int e;
    ref_ious out;
    for (e = 0; e < 4; ++e)
        k[e] = ref_index(L, b, a, e, j, i);

    if (d[k[0]] || d[k[1]] || d[k[2]] || d[k[3]]) {
        ref_mark(L, b, a, j, i, YREF_ROLE_REWRITTEN);
        ref_count(L, YREF_BR_REWRITTEN_BBOX);
        if (c->flavor == YREF_ALEXEYAB)
            L->stats->rewritten_bbox++;
    }

    rbox pred = ref_pred_box(L, b, a, anchor, j, i);
    out.iou = rbox_iou(pred, truth, c->flavor == YREF_PJREDDIE);
    out.giou = c->flavor == YREF_PJREDDIE ? 0 : rbox_giou(pred, truth);

    if (c->flavor == YREF_PJREDDIE) {
        float t[4];
        mse_targets(c, truth, anchor, j, i, t);
        ref_count(L, YREF_BR_IOU_LOSS_MSE);
        for (e = 0; e < 4; ++e)
            d[k[e]] = scale * (t[e] - x[k[e]]);
        return out;
    }

    ref_count(L, loss_branch[c->iou_loss]);
    /* darknet replaces a zero-size prediction before the derivative. */
    if (pred.w == 0)
        pred.w = 1.0;
    if (pred.h == 0)
        pred.h = 1.0;

    if (c->iou_loss == YREF_LOSS_MSE) {
        float t[4];
        mse_targets(c, truth, anchor, j, i, t);
        for (e = 0; e < 4; ++e)
            d[k[e]] += scale * (t[e] - x[k[e]]) * iou_normalizer;
        return out;
    }

    {
        rbox_grad g = rbox_iou_grad(pred, truth, c->iou_loss);
        float v[4];
        v[0] = g.dx;
        v[1] = g.dy;
        v[2] = g.dw;
        v[3] = g.dh;
        /* Chain through exp(t) for w, h only (not with new_coords); the
         * logistic and scale_x_y of x, y are not differentiated. */
        if (!c->new_coords) {
            v[2] = (float)(v[2] * exp(x[k[2]]));
            v[3] = (float)(v[3] * exp(x[k[3]]));
        }
        for (e = 0; e < 4; ++e)
            v[e] *= iou_normalizer;
        for (e = 0; e < 4; ++e)
            v[e] = fix_nonfinite(L, v[e]);
        if (c->max_delta != FLT_MAX)
            for (e = 0; e < 4; ++e)
                v[e] = clip_abs(L, v[e], c->max_delta);
        for (e = 0; e < 4; ++e)
            d[k[e]] += v[e];
    }
    return out;
}

/* Target of class n: 1 for the truth's class, 0 for others, label-smoothed
 * as y*(1 - eps) + 0.5*eps (the 0.5*eps term makes the sum double). */
static float class_target(float y, float eps)
{
    if (eps)
        return (float)(y * (1 - eps) + 0.5 * eps);
    return y;
}

/* Focal loss (alpha 0.5, gamma 2): the plain deltas times alpha times
 * darknet's focal factor of the truth class's probability, in float. */
static void class_focal(ref_layer *L, int b, int a, int j, int i, int class_id)
{
    const yref_config *c = L->cfg;
    const float alpha = 0.5;
    const float pt = L->output[ref_index(L, b, a, ENTRY_CLASS0 + class_id, j, i)] + 0.000000000000001F;
    const float grad = -(1 - pt) * (2 * pt * logf(pt) + pt - 1);
    int n;
    ref_count(L, YREF_BR_FOCAL);
    for (n = 0; n < c->classes; ++n) {
        long kn = ref_index(L, b, a, ENTRY_CLASS0 + n, j, i);
        L->delta[kn] = ((n == class_id) ? 1 : 0) - L->output[kn];
        L->delta[kn] *= alpha * grad;
    }
}

void ref_delta_class(ref_layer *L, int b, int a, int j, int i, int class_id)
{
    const yref_config *c = L->cfg;
    const float *mult = c->classes_multipliers;
    float *d = L->delta;
    const float *o = L->output;
    long k0 = ref_index(L, b, a, ENTRY_CLASS0, j, i);
    long kc = ref_index(L, b, a, ENTRY_CLASS0 + class_id, j, i);
    const long slot = ref_slot(L, b, a, j, i);
    int n;

    if (slot >= 0)
        L->class_written[slot] = 1;
    if (c->flavor == YREF_PJREDDIE) {
        /* pjreddie's shortcut tests class 0's delta, whatever the class. */
        if (d[k0]) {
            ref_mark(L, b, a, j, i, YREF_ROLE_CLASS_SHORTCUT);
            ref_count(L, YREF_BR_CLASS_SHORTCUT);
            d[kc] = 1 - o[kc];
            return;
        }
        for (n = 0; n < c->classes; ++n) {
            long kn = ref_index(L, b, a, ENTRY_CLASS0 + n, j, i);
            d[kn] = ((n == class_id) ? 1 : 0) - o[kn];
        }
        return;
    }

    if (d[kc]) {
        /* "Already set": rewrite only the truth's class; no focal formula,
         * and the multiplier without cls_normalizer. */
        float r = class_target(1, c->label_smooth_eps) - o[kc];
        ref_mark(L, b, a, j, i, YREF_ROLE_CLASS_SHORTCUT);
        ref_count(L, YREF_BR_CLASS_SHORTCUT);
        if (finite_f(r))
            d[kc] = r;
        if (mult)
            d[kc] *= mult[class_id];
        return;
    }

    if (c->focal_loss) {
        class_focal(L, b, a, j, i, class_id);
        return;
    }

    if (c->label_smooth_eps)
        ref_count(L, YREF_BR_LABEL_SMOOTH);
    for (n = 0; n < c->classes; ++n) {
        long kn = ref_index(L, b, a, ENTRY_CLASS0 + n, j, i);
        float r = class_target((n == class_id) ? 1 : 0, c->label_smooth_eps) - o[kn];
        if (finite_f(r))
            d[kn] = r;
        if (mult && n == class_id)
            d[kn] *= mult[class_id] * c->cls_normalizer;
    }
}

/* Divide the box deltas of a cell by the number of classes whose delta is
 * positive (darknet's averaging after iou_thresh assignment). Returns that
 * number (0: nothing divided). */
int ref_average_box(ref_layer *L, int b, int a, int j, int i)
{
    const yref_config *c = L->cfg;
    float *d = L->delta;
    int n, e, positive = 0;
    for (n = 0; n < c->classes; ++n)
        if (d[ref_index(L, b, a, ENTRY_CLASS0 + n, j, i)] > 0)
            positive++;
    ref_count(L, YREF_BR_AVERAGING);
    if (positive > 1) {
        ref_mark(L, b, a, j, i, YREF_ROLE_AVERAGED);
        ref_count(L, YREF_BR_AVERAGING_DIVIDES);
    }
    if (positive > 0)
        for (e = 0; e < 4; ++e)
            d[ref_index(L, b, a, e, j, i)] /= positive;
    return positive;
}
