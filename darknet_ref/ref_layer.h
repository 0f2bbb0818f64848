/*
 * ref_layer.h - the state one yref_forward call works on, and the single
 * checked index function every read and write of output/delta goes through.
 * Internal to darknet_ref.
 */
#ifndef REF_LAYER_H
#define REF_LAYER_H

#include "ref_box.h"
#include "yolo_ref.h"

/* Entries of one anchor's record at a cell: x, y, w, h, objectness, classes. */
#define ENTRY_X 0
#define ENTRY_OBJ 4
#define ENTRY_CLASS0 5

typedef struct ref_layer {
    const yref_config *cfg;
    float *output;
    float *delta;
    int *roles;                 /* may be NULL */
    /* [batch, n, h, w]: 1 where ref_delta_class wrote. Only there can a class
     * delta be nonzero (delta starts all 0, and every class write goes
     * through ref_delta_class or follows it on the same slot), so the
     * averaging pass counts positive class deltas only there. */
    unsigned char *class_written;
    yref_decisions *dec;        /* what to export, or NULL */
    const float *truth;
    yref_stats *stats;
    long stride;                /* w*h: distance between entries of one anchor */
    long outputs;               /* per image: n*(5+classes)*w*h */
    int status;                 /* first error seen (YREF_OK if none) */
} ref_layer;

/* One truth row as darknet reads it. */
typedef struct ref_truth {
    rbox box;
    int class_id;
    int class_ok;               /* class id within [0, classes) */
} ref_truth;

/* Index of `entry` of anchor slot `a` at cell (j, i) of image b, in darknet's
 * layout [b][a][entry][j][i]. Out-of-range arguments record
 * YREF_ERR_TRUTH_CELL and yield index 0, so no caller can step outside. */
static inline long ref_index(ref_layer *L, int b, int a, int entry, int j, int i)
{
    const yref_config *c = L->cfg;
    if (b < 0 || b >= c->batch || a < 0 || a >= c->n || entry < 0 || entry >= 5 + c->classes ||
        j < 0 || j >= c->h || i < 0 || i >= c->w) {
        if (L->status == YREF_OK)
            L->status = YREF_ERR_TRUTH_CELL;
        return 0;
    }
    return (long)b * L->outputs + ((long)a * (5 + c->classes) + entry) * L->stride + (long)j * c->w + i;
}

/* Mark a decision flag on the cell (j, i) of anchor slot a in image b. */
static inline void ref_mark(ref_layer *L, int b, int a, int j, int i, int flag)
{
    const yref_config *c = L->cfg;
    if (!L->roles || b < 0 || b >= c->batch || a < 0 || a >= c->n || j < 0 || j >= c->h || i < 0 || i >= c->w)
        return;
    L->roles[(((long)b * c->n + a) * c->h + j) * c->w + i] |= flag;
}

/* Offset of slot (a, j, i) of image b in [batch, n, h, w] arrays, or -1 when
 * an argument is out of range. */
static inline long ref_slot(const ref_layer *L, int b, int a, int j, int i)
{
    const yref_config *c = L->cfg;
    if (b < 0 || b >= c->batch || a < 0 || a >= c->n || j < 0 || j >= c->h || i < 0 || i >= c->w)
        return -1;
    return (((long)b * c->n + a) * c->h + j) * c->w + i;
}

static inline void ref_count(ref_layer *L, int branch)
{
    L->stats->branches[branch]++;
}

/* ref_activate.c */
void ref_activate(ref_layer *L);

/* ref_truths.c */
int ref_truth_limit(const ref_layer *L);
ref_truth ref_read_truth(const ref_layer *L, int b, int t);
rbox ref_pred_box(ref_layer *L, int b, int a, int anchor, int j, int i);

/* ref_deltas.c: what one assignment writes. The IoU figures it returns
 * feed darknet's printed statistics and cost. */
typedef struct ref_ious {
    float iou, giou;
} ref_ious;

ref_ious ref_delta_box(ref_layer *L, rbox truth, int b, int a, int anchor, int j, int i,
                       float scale, float iou_normalizer);
void ref_delta_class(ref_layer *L, int b, int a, int j, int i, int class_id);
int ref_average_box(ref_layer *L, int b, int a, int j, int i);

/* ref_cost.c */
void ref_cost(ref_layer *L);

#endif
