/*
 * yolo_ref.h - our reference implementation of darknet's [yolo] layer
 * training forward pass (activation, then every delta), in two flavors:
 *
 *   YREF_ALEXEYAB  AlexeyAB/darknet master (src/yolo_layer.c, src/box.c)
 *   YREF_PJREDDIE  pjreddie/darknet, the 2018 original
 *
 * Accuracy contract: every step runs in the precision darknet's C gives it
 * (float32 arithmetic, double where darknet calls a double libm function or
 * mixes in a double literal), in darknet's order, with no contraction into
 * FMA. Built with -O2 -fno-fast-math -ffp-contract=off this matches darknet's
 * -O2 build bit for bit on the recorded cases, NaN/Inf handling included.
 *
 * Memory contract: yref_forward reads only input[0..batch*outputs),
 * truth[0..batch*truth_rows*truth_cols), biases[0..2*total), mask[0..n),
 * classes_multipliers[0..classes), and writes only output, delta and roles
 * within the same sizes. yref_forward_decisions also writes, through each
 * non-NULL pointer of its yref_decisions, exactly these many elements:
 * batch*n*h*w (per-slot arrays; 4 times that for pred_box), batch*truth_rows
 * (per-truth arrays), batch*truth_rows*total (per truth and anchor),
 * 7*min(assign_count, assign_capacity) ints of assign and min(assign_count,
 * assign_capacity) floats of assign_iou (never past assign_capacity rows), and
 * reads nothing through them. Inputs that would make darknet index outside its
 * arrays (a truth centre outside [0,1), a class id outside [0,classes) in the
 * pjreddie flavor) are refused with a status code before anything is written
 * for that image; the Python wrapper refuses them earlier with a message.
 */
#ifndef YOLO_REF_H
#define YOLO_REF_H

#define YREF_ALEXEYAB 0
#define YREF_PJREDDIE 1

/* darknet's IOU_LOSS enum order is irrelevant here; these are ours. */
#define YREF_LOSS_MSE 0
#define YREF_LOSS_IOU 1
#define YREF_LOSS_GIOU 2
#define YREF_LOSS_DIOU 3
#define YREF_LOSS_CIOU 4

/* Status codes (0 = success). */
#define YREF_OK 0
#define YREF_ERR_NULL 1          /* a required pointer is NULL */
#define YREF_ERR_SIZE 2          /* a size is zero, negative or overflows */
#define YREF_ERR_MASK 3          /* a mask entry outside [0, total) */
#define YREF_ERR_TRUTH_CELL 4    /* a used truth centre maps outside the grid */
#define YREF_ERR_CLASS_ID 5      /* pjreddie: class id outside [0, classes) */
#define YREF_ERR_OPTION 6        /* an enum option out of range */
#define YREF_ERR_MEMORY 7        /* scratch memory could not be allocated */

/* Per-cell decision flags written to `roles` ([batch, n, h, w]). */
#define YREF_ROLE_IGNORED        (1 << 0)  /* best class-matching IoU > ignore_thresh */
#define YREF_ROLE_CLASSMATCH_BLOCKED (1 << 1) /* best IoU > ignore_thresh, but no class match */
#define YREF_ROLE_TRUTH_THRESH   (1 << 2)  /* best IoU > truth_thresh: positive in loop 1 */
#define YREF_ROLE_BEST_ANCHOR    (1 << 3)  /* a truth's best anchor (over all anchors) */
#define YREF_ROLE_EXTRA_ANCHOR   (1 << 4)  /* assigned through iou_thresh */
#define YREF_ROLE_REWRITTEN      (1 << 5)  /* box delta written more than once */
#define YREF_ROLE_CLASS_SHORTCUT (1 << 6)  /* class delta "already set" shortcut */
#define YREF_ROLE_AVERAGED       (1 << 7)  /* box delta divided by classes_in_one_box > 1 */
#define YREF_ROLE_OBJ_NONFINITE  (1 << 8)  /* non-finite objectness zeroed in output */

/* Branch counters: how often each darknet branch was taken in one call. */
enum yref_branch {
    YREF_BR_IGNORE = 0,         /* cell ignored (best matching IoU > ignore_thresh) */
    YREF_BR_CLASSMATCH_BLOCKED, /* ignore prevented only by the 0.25 class-match test */
    YREF_BR_OBJECTNESS_SMOOTH,  /* an objectness_smooth rule decided an objectness delta */
    YREF_BR_TRUTH_THRESH,       /* truth_thresh positive in the per-cell loop */
    YREF_BR_ANCHOR_OUTSIDE_MASK,/* a truth's best anchor belongs to another layer */
    YREF_BR_IOU_THRESH_EXTRA,   /* extra anchor assigned through iou_thresh */
    YREF_BR_REWRITTEN_BBOX,     /* box delta written onto a nonzero one */
    YREF_BR_CLASS_SHORTCUT,     /* class delta "already set" shortcut */
    YREF_BR_AVERAGING,          /* averaging pass visited a cell with objectness delta */
    YREF_BR_AVERAGING_DIVIDES,  /* ... and divided by more than one class */
    YREF_BR_IOU_LOSS_MSE,       /* box deltas per iou_loss kind */
    YREF_BR_IOU_LOSS_IOU,
    YREF_BR_IOU_LOSS_GIOU,
    YREF_BR_IOU_LOSS_DIOU,
    YREF_BR_IOU_LOSS_CIOU,
    YREF_BR_MAX_DELTA_CLIP,     /* a box delta component clipped to max_delta */
    YREF_BR_FIX_NAN_INF,        /* a non-finite box delta component set to 0 */
    YREF_BR_ZERO_X_STOP,        /* an image's truth list ended at an x == 0 row */
    YREF_BR_CLASS_OOB,          /* a truth row skipped for its class id */
    YREF_BR_MAX_TRUNCATED,      /* an image had truths beyond max_boxes */
    YREF_BR_OBJ_NONFINITE,      /* a non-finite objectness zeroed in the output */
    YREF_BR_FOCAL,              /* focal-loss class deltas */
    YREF_BR_LABEL_SMOOTH,       /* label-smoothed class deltas */
    YREF_BR_COUNT
};

typedef struct yref_config {
    int flavor;                 /* YREF_ALEXEYAB or YREF_PJREDDIE */
    int batch, w, h;            /* images, grid width, grid height */
    int n, total, classes;      /* anchors in mask, anchors listed, classes */
    int max_boxes;              /* truths read per image at most */
    int truth_rows, truth_cols; /* layout of the truth array (cols 5 or 6) */
    int net_w, net_h;
    const int *mask;            /* n entries in [0, total) */
    const float *biases;        /* 2*total anchor sizes in pixels */
    const float *classes_multipliers; /* classes entries, or NULL */
    float ignore_thresh, truth_thresh, iou_thresh;
    int iou_thresh_kind;        /* YREF_LOSS_IOU .. YREF_LOSS_CIOU */
    int iou_loss;               /* YREF_LOSS_* */
    float iou_normalizer, obj_normalizer, cls_normalizer;
    float scale_x_y;
    int new_coords, objectness_smooth, focal_loss, show_details;
    float label_smooth_eps, max_delta;
    const int *class_map;       /* map=: classes entries in [0, classes), or NULL */
} yref_config;

typedef struct yref_stats {
    float cost;                 /* *l.cost as darknet sets it */
    int count;                  /* assigned boxes, at least 1 (darknet's printed count) */
    int assigned;               /* assigned boxes, possibly 0 */
    int rewritten_bbox, total_bbox;
    float tot_iou, tot_iou_loss, tot_giou_loss;
    float avg_iou;              /* printed figures (AlexeyAB's v3 line) */
    float class_loss, iou_loss, total_loss;
    long long branches[YREF_BR_COUNT];
} yref_stats;

/*
 * Run the layer. output and delta have batch*n*(5+classes)*h*w floats;
 * roles (may be NULL) has batch*n*h*w ints. Returns YREF_OK or a status.
 */
int yref_forward(const yref_config *cfg, const float *input, const float *truth,
                 float *output, float *delta, int *roles, yref_stats *stats);

/*
 * darknet's decisions, exported by the pass that makes each of them (not
 * recomputed). Every pointer may be NULL (not wanted); each array is first
 * filled with its "untouched" value (0, or -1 where stated). Written only
 * when the call returns YREF_OK (on a refusal nothing is written).
 */
typedef struct yref_decisions {
    /* per slot [batch, n, h, w], from the cell pass (step 1) */
    float *best_iou;        /* best IoU of the slot's predicted box over the image's used truths
                               (darknet's best_iou: starts at 0, strict >) */
    float *second_iou;      /* runner-up: largest IoU over the other used truths (a tie with the
                               best gives best_iou), 0 if none is > 0 */
    int *best_truth;        /* truth row giving best_iou; -1 when best_iou stayed 0 */
    float *best_match_iou;  /* AlexeyAB: best IoU the class-match test let through (darknet's
                               best_match_iou); pjreddie: = best_iou */
    float *max_class_prob;  /* AlexeyAB: largest activated class value of the slot, the quantity
                               the "any class > 0.25" test compares (NaN values skipped; -inf if
                               all are NaN), so class_match == (max_class_prob > 0.25); pjreddie: 0 */
    int *class_match;       /* AlexeyAB: that test's result (1/0); pjreddie: 1 */
    int *divisor;           /* averaging pass (step 3): the positive class-delta count the box
                               delta was divided by; 0 where nothing was divided */
    float *pred_box;        /* [.., 4]: the predicted box x, y, w, h the cell pass compared */
    /* per truth row [batch, truth_rows], from the truth pass (step 2) */
    int *truth_used;        /* 1 if the truth pass uses the row (before the x == 0 terminator,
                               within max_boxes, AlexeyAB: class id in range) */
    int *truth_best_anchor; /* best anchor over all `total` by shape IoU (darknet's best_n); -1 unused */
    int *truth_i, *truth_j; /* the row's cell; -1 for unused rows */
    /* per truth row and anchor [batch, truth_rows, total]; 0 for unused rows */
    float *anchor_iou;      /* shape IoU (both boxes centred at 0) compared to pick best_n */
    float *anchor_thresh_iou; /* AlexeyAB: the iou_thresh_kind IoU of the same pair, the value
                               compared with iou_thresh (computed for every anchor when wanted,
                               also when iou_thresh >= 1); pjreddie: 0 */
    /* step-2 writes in darknet's order (a truth's best anchor, then its iou_thresh
     * extras by anchor index; truth by truth, image by image). Row k is
     * assign[7k .. 7k+6] = b, t, a (mask slot), anchor (biases index), j, i,
     * extra (0 best anchor, 1 iou_thresh) */
    int *assign;
    float *assign_iou;      /* per write: IoU of the slot's prediction with the truth (delta_yolo_box's) */
    long assign_capacity;   /* rows available; batch*truth_rows*n always suffices */
    long assign_count;      /* out: rows darknet wrote (if > capacity, only the first
                               capacity rows are stored) */
} yref_decisions;

/* yref_forward, also filling `decisions` (may be NULL: then exactly yref_forward).
 * Output, delta, roles and stats do not depend on which decisions are asked for. */
int yref_forward_decisions(const yref_config *cfg, const float *input, const float *truth,
                           float *output, float *delta, int *roles, yref_stats *stats,
                           yref_decisions *decisions);

/* The reference's own overlap of two boxes (centre x, y, size w, h): kind
 * YREF_LOSS_IOU with pjreddie's or AlexeyAB's box_iou, or the GIoU, DIoU or
 * CIoU measure of iou_thresh_kind. Lets tools explain a decision with the
 * very numbers darknet compared. */
float yref_box_iou(float ax, float ay, float aw, float ah, float bx, float by, float bw, float bh,
                   int kind, int pjreddie);

/* Name of a branch counter, for reports ("ignore", "truth_thresh", ...). */
const char *yref_branch_name(int branch);

/* The calling thread's floating-point control mode (x86: MXCSR; else 0),
 * and setting it back: see ref_fpmode.c. */
unsigned yref_fp_mode(void);
void yref_set_fp_mode(unsigned mode);

#endif
