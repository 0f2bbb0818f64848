/*
 * ref_activate.c - the [yolo] layer's activation of its input.
 *
 * AlexeyAB: logistic 1.f/(1.f + expf(-x)) in float on x, y and on
 * objectness + classes (none at all with new_coords), then x, y become
 * x*s + b with b = -0.5*(s - 1) evaluated in double and passed as float
 * (darknet's scal_add_cpu), also with new_coords.
 * pjreddie: logistic 1./(1. + exp(-x)) in double, rounded to float; no
 * scale_x_y.
 */
#include <math.h>
#include <string.h>

#include "ref_layer.h"

static float logistic_alexeyab(float x)
{
    return 1.f / (1.f + expf(-x));
}

static float logistic_pjreddie(float x)
{
    return (float)(1. / (1. + exp(-x)));
}

/* Apply f to `count` consecutive entries starting at entry `first`. */
static void logistic_run(ref_layer *L, int b, int a, int first, int count, int pjreddie)
{
    long start = ref_index(L, b, a, first, 0, 0);
    long len = (long)count * L->stride;
    float *x = L->output + start;
    long k;
    for (k = 0; k < len; ++k)
        x[k] = pjreddie ? logistic_pjreddie(x[k]) : logistic_alexeyab(x[k]);
}

void ref_activate(ref_layer *L)
{
    const yref_config *c = L->cfg;
    const int pjreddie = c->flavor == YREF_PJREDDIE;
    int b, a;
    for (b = 0; b < c->batch; ++b) {
        for (a = 0; a < c->n; ++a) {
            if (!c->new_coords || pjreddie) {
                logistic_run(L, b, a, ENTRY_X, 2, pjreddie);
                logistic_run(L, b, a, ENTRY_OBJ, 1 + c->classes, pjreddie);
            }
            if (pjreddie)
                continue;
            {
                const float scale = c->scale_x_y;
                const float shift = (float)(-0.5 * (scale - 1));
                float *xy = L->output + ref_index(L, b, a, ENTRY_X, 0, 0);
                long k, len = 2 * L->stride;
                for (k = 0; k < len; ++k)
                    xy[k] = xy[k] * scale + shift;
            }
        }
    }
}
