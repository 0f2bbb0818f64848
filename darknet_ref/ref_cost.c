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

/* sqrt of the float sum of squares in memory order (image, anchor, entry,
 * cell), skipping the box rows (entries 0..3) if asked. Skipping adds
 * nothing: v*v is never -0 and the running sum starts at +0, so adding a
 * +0 square leaves every value it can hold (NaN included) unchanged. */
static float magnitude(ref_layer *L, int skip_box_rows)
{
    const yref_config *c = L->cfg;
    const float *d = L->delta;
    const int entries = 5 + c->classes;
    float sum = 0;
    int b, a, e;
    long k;
    for (b = 0; b < c->batch; ++b)
        for (a = 0; a < c->n; ++a)
            for (e = skip_box_rows ? ENTRY_OBJ : ENTRY_X; e < entries; ++e) {
                const float *row = d + ref_index(L, b, a, e, 0, 0);
                for (k = 0; k < L->stride; ++k)
                    sum += row[k] * row[k];
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
