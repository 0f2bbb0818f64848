/*
 * ref_box.h - box overlap measures and darknet's hand-written IoU-loss
 * derivative, as used by the [yolo] layer. Internal to darknet_ref.
 *
 * Boxes are centre/size in units of the network input (0..1). Every
 * function keeps darknet's precision: float arithmetic, with the double
 * steps darknet's C implies (fmin/fmax, pow, atan, exp) written out.
 */
#ifndef REF_BOX_H
#define REF_BOX_H

typedef struct rbox {
    float x, y, w, h;
} rbox;

/* Partial derivatives of an IoU measure w.r.t. the predicted x, y, w, h
 * (darknet's "dx_iou": dw, dh are twice the exact derivative). */
typedef struct rbox_grad {
    float dx, dy, dw, dh;
} rbox_grad;

float rbox_iou(rbox a, rbox b, int pjreddie);

/*
 * A box with what rbox_iou derives from it, computed once: its edges
 * (centre -+ size/2) and its area (w*h), each the same float expression
 * rbox_iou evaluates, so every result below is bit-identical to rbox_iou's.
 * For searches that compare one box with many (the ignore search).
 */
typedef struct rbox_prep {
    float l, r, t, b;           /* x - w/2, x + w/2, y - h/2, y + h/2 */
    float area;                 /* w * h */
} rbox_prep;

static inline rbox_prep rbox_prepare(rbox a)
{
    rbox_prep p;
    p.l = a.x - a.w / 2;
    p.r = a.x + a.w / 2;
    p.t = a.y - a.h / 2;
    p.b = a.y + a.h / 2;
    p.area = a.w * a.h;
    return p;
}

/* The intersection area rbox_iou(a, b, .) computes for boxes prepared from a
 * and b (a first: the ternaries keep their operand order, which decides what
 * a NaN edge gives): 0 when either overlap is negative, else width * height.
 * The width is tested before the height is computed; that skips work only,
 * as a negative width gives 0 whatever the height is. */
static inline float rbox_prep_inter(const rbox_prep *a, const rbox_prep *b)
{
    float lo = a->l > b->l ? a->l : b->l;
    float hi = a->r < b->r ? a->r : b->r;
    const float iw = hi - lo;
    float ih;
    if (iw < 0)
        return 0;
    lo = a->t > b->t ? a->t : b->t;
    hi = a->b < b->b ? a->b : b->b;
    ih = hi - lo;
    if (ih < 0)
        return 0;
    return iw * ih;
}

/* rbox_iou(a, b, pjreddie) from an intersection `inter` of the prepared boxes:
 * union = (area_a + area_b) - inter, guarded against 0 except for pjreddie. */
static inline float rbox_prep_iou_of(const rbox_prep *a, const rbox_prep *b, float inter, int pjreddie)
{
    const float uni = a->area + b->area - inter;
    if (!pjreddie && (inter == 0 || uni == 0))
        return 0;
    return inter / uni;
}
float rbox_giou(rbox a, rbox b);
float rbox_diou(rbox a, rbox b);
float rbox_ciou(rbox a, rbox b);
/* IoU of kind YREF_LOSS_IOU/GIOU/DIOU/CIOU (anything else: plain IoU). */
float rbox_iou_kind(rbox a, rbox b, int kind);
/* darknet's dx_box_iou for loss kind YREF_LOSS_IOU/GIOU/DIOU/CIOU. */
rbox_grad rbox_iou_grad(rbox pred, rbox truth, int kind);

#endif
