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
float rbox_giou(rbox a, rbox b);
float rbox_diou(rbox a, rbox b);
float rbox_ciou(rbox a, rbox b);
/* IoU of kind YREF_LOSS_IOU/GIOU/DIOU/CIOU (anything else: plain IoU). */
float rbox_iou_kind(rbox a, rbox b, int kind);
/* darknet's dx_box_iou for loss kind YREF_LOSS_IOU/GIOU/DIOU/CIOU. */
rbox_grad rbox_iou_grad(rbox pred, rbox truth, int kind);

#endif
