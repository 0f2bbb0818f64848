/*
 * ref_cost.c - the layer's *cost and the figures darknet prints.
 *
 * darknet's mag_array sums squares in float and returns sqrt(sum) rounded to
 * float; the cost squares that again in double (pow) and stores a float, so
 * the cost is not exactly the float sum of squares. AlexeyAB with
 * show_details (default 1) and an IoU loss reports
 *   iou_normalizer * mean(1 - IoU)  (1 - GIoU for giou)
 *   + obj_normalizer * |delta without box rows|^2,
 * otherwise |delta|^2. pjreddie always reports |delta|^2.
 */
#include <math.h>

#include "ref_layer.h"

/* sqrt of the float sum of squares, skipping the box rows if asked. */
static float magnitude(ref_layer *L, int skip_box_rows)
{
    const yref_config *c = L->cfg;
    const long per_anchor = (5L + c->classes) * L->stride;
    const long total = L->outputs * c->batch;
    float sum = 0;
    long k;
    for (k = 0; k < total; ++k) {
        const long entry_pos = (k % L->outputs) % per_anchor;
        float v = L->delta[k];
        if (skip_box_rows && entry_pos < 4 * L->stride)
            v = 0;
        sum += v * v;
    }
    return (float)sqrt(sum);
}

static float squared(float m)
{
    return (float)pow(m, 2);
}

void ref_cost(ref_layer *L)
{
    const yref_config *c = L->cfg;
    yref_stats *s = L->stats;
    const int count = s->assigned > 0 ? s->assigned : 1;
    float loss, class_loss;

    if (c->flavor == YREF_PJREDDIE) {
        s->count = s->assigned;
        s->cost = squared(magnitude(L, 0));
        s->total_loss = s->cost;
        s->avg_iou = s->tot_iou / s->assigned;
        return;
    }

    s->count = count;
    s->avg_iou = s->tot_iou / count;
    loss = squared(magnitude(L, 0));
    if (c->show_details == 0) {
        s->cost = loss;
        s->total_loss = loss / c->batch;
        return;
    }
    class_loss = (float)(c->obj_normalizer * pow(magnitude(L, 1), 2));
    if (c->iou_loss == YREF_LOSS_MSE) {
        s->cost = loss;
    } else {
        const float mean_loss = c->iou_loss == YREF_LOSS_GIOU ? s->tot_giou_loss / count
                                                              : s->tot_iou_loss / count;
        const float avg_iou_loss = c->iou_normalizer * mean_loss;
        s->cost = avg_iou_loss + class_loss;
    }
    s->total_loss = loss / c->batch;
    s->class_loss = class_loss / c->batch;
    s->iou_loss = (loss - class_loss) / c->batch;
}
