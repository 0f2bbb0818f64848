/*
 * ref_box.c - IoU, GIoU, DIoU, CIoU and the IoU-loss derivative of darknet's
 * [yolo] layer (AlexeyAB src/box.c semantics; pjreddie's box_iou differs only
 * in having no zero guard).
 *
 * Precision: float everywhere except where darknet's C promotes to double:
 * fmin/fmax of floats (exact, then a float subtraction-equivalent rounding),
 * pow(d/c, 0.6) in DIoU, atan and the 4/pi^2 factors in CIoU, and the
 * `+ 0.000001` that makes CIoU's alpha a double quotient. Each is written as
 * an explicit (double) step so the file reads like the arithmetic it does.
 */
#include <math.h>

#include "ref_box.h"
#include "yolo_ref.h"

#define REF_PI 3.14159265358979323846

/* Edges of a centre/size box: top, bottom, left, right. */
typedef struct redges {
    float t, b, l, r;
} redges;

static redges edges_of(rbox a)
{
    redges e;
    e.t = a.y - a.h / 2;
    e.b = a.y + a.h / 2;
    e.l = a.x - a.w / 2;
    e.r = a.x + a.w / 2;
    return e;
}

/* Length of the overlap of two 1-D segments given by centre and size
 * (negative when they are apart). */
static float overlap_1d(float c1, float s1, float c2, float s2)
{
    float lo1 = c1 - s1 / 2;
    float lo2 = c2 - s2 / 2;
    float lo = lo1 > lo2 ? lo1 : lo2;
    float hi1 = c1 + s1 / 2;
    float hi2 = c2 + s2 / 2;
    float hi = hi1 < hi2 ? hi1 : hi2;
    return hi - lo;
}

static float intersection(rbox a, rbox b)
{
    float iw = overlap_1d(a.x, a.w, b.x, b.w);
    float ih = overlap_1d(a.y, a.h, b.y, b.h);
    if (iw < 0 || ih < 0)
        return 0;
    return iw * ih;
}

static float union_area(rbox a, rbox b)
{
    float inter = intersection(a, b);
    return a.w * a.h + b.w * b.h - inter;
}

float rbox_iou(rbox a, rbox b, int pjreddie)
{
    float inter = intersection(a, b);
    float uni = union_area(a, b);
    /* pjreddie divides unguarded (0/0 is NaN, and NaN compares false). */
    if (!pjreddie && (inter == 0 || uni == 0))
        return 0;
    return inter / uni;
}

/* Smallest box enclosing a and b, as edges (fmin/fmax go through double,
 * which is exact for floats). */
static redges enclosing(rbox a, rbox b)
{
    redges c;
    c.t = (float)fmin(a.y - a.h / 2, b.y - b.h / 2);
    c.b = (float)fmax(a.y + a.h / 2, b.y + b.h / 2);
    c.l = (float)fmin(a.x - a.w / 2, b.x - b.w / 2);
    c.r = (float)fmax(a.x + a.w / 2, b.x + b.w / 2);
    return c;
}

float rbox_giou(rbox a, rbox b)
{
    redges c = enclosing(a, b);
    float cw = c.r - c.l;
    float ch = c.b - c.t;
    float area = cw * ch;
    float iou = rbox_iou(a, b, 0);
    if (area == 0)
        return iou;
    float uni = union_area(a, b);
    return iou - (area - uni) / area;
}

/* The squared diagonal of the enclosing box (0 means degenerate) and the
 * squared distance of the centres: DIoU's and CIoU's centre term is their ratio. */
static void centre_ratio_parts(rbox a, rbox b, float *diag2, float *dist2)
{
    redges c = enclosing(a, b);
    float cw = c.r - c.l;
    float ch = c.b - c.t;
    *diag2 = cw * cw + ch * ch;
    *dist2 = (a.x - b.x) * (a.x - b.x) + (a.y - b.y) * (a.y - b.y);
}

float rbox_diou(rbox a, rbox b)
{
    float diag2, dist2;
    centre_ratio_parts(a, b, &diag2, &dist2);
    float iou = rbox_iou(a, b, 0);
    if (diag2 == 0)
        return iou;
    /* darknet raises the ratio to 0.6 here (not 1), in double. */
    float term = (float)pow((double)(dist2 / diag2), 0.6);
    return iou - term;
}

/* CIoU's aspect-ratio term v = 4/pi^2 (atan(wt/ht) - atan(wp/hp))^2, in double. */
static double aspect_term(rbox pred, rbox truth)
{
    float ar_truth = truth.w / truth.h;
    float ar_pred = pred.w / pred.h;
    double diff = atan(ar_truth) - atan(ar_pred);
    return 4 / (REF_PI * REF_PI) * diff * diff;
}

float rbox_ciou(rbox a, rbox b)
{
    float diag2, dist2;
    centre_ratio_parts(a, b, &diag2, &dist2);
    float iou = rbox_iou(a, b, 0);
    if (diag2 == 0)
        return iou;
    float ratio = dist2 / diag2;
    float v = (float)aspect_term(a, b);
    /* alpha = v / (1 - IoU + v + 1e-6): the literal makes the sum double. */
    float alpha = (float)((double)v / ((double)(1 - iou + v) + 0.000001));
    return iou - (ratio + alpha * v);
}

float rbox_iou_kind(rbox a, rbox b, int kind)
{
    switch (kind) {
    case YREF_LOSS_GIOU: return rbox_giou(a, b);
    case YREF_LOSS_DIOU: return rbox_diou(a, b);
    case YREF_LOSS_CIOU: return rbox_ciou(a, b);
    default: return rbox_iou(a, b, 0);
    }
}

/* Derivatives of a quotient q = num/den from the parts' derivatives. */
static float quotient_grad(float num, float dnum, float den, float dden)
{
    return ((den * dnum) - (num * dden)) / (den * den);
}

/*
 * darknet's IoU-loss derivative w.r.t. the prediction's edges, then mapped
 * to x, y, w, h as darknet maps them: dx = d_l + d_r, dw = d_r - d_l (no
 * 1/2: twice the exact derivative). GIoU adds the enclosing-area term; DIoU
 * and CIoU add the centre-distance term (and CIoU the aspect term). When the
 * boxes do not overlap (Iw <= 0 or Ih <= 0) the GIoU/DIoU/CIoU derivative
 * keeps only its extra term.
 */
rbox_grad rbox_iou_grad(rbox pred, rbox truth, int kind)
{
    redges pe = edges_of(pred);
    redges te = edges_of(truth);
    /* Edges ordered so that t <= b and l <= r (fmin/fmax via double). */
    float pt = (float)fmin(pe.t, pe.b);
    float pb = (float)fmax(pe.t, pe.b);
    float pl = (float)fmin(pe.l, pe.r);
    float pr = (float)fmax(pe.l, pe.r);

    float area_p = (pb - pt) * (pr - pl);
    float area_t = (te.b - te.t) * (te.r - te.l);
    float ih = (float)(fmin(pb, te.b) - fmax(pt, te.t));
    float iw = (float)(fmin(pr, te.r) - fmax(pl, te.l));
    float inter = iw * ih;
    float uni = area_p + area_t - inter;
    float dist2 = (pred.x - truth.x) * (pred.x - truth.x) + (pred.y - truth.y) * (pred.y - truth.y);
    float enc_w = (float)(fmax(pr, te.r) - fmin(pl, te.l));
    float enc_h = (float)(fmax(pb, te.b) - fmin(pt, te.t));
    float enc_area = enc_w * enc_h;

    /* d(area_p)/d(edge) */
    float dA_t = -1 * (pr - pl), dA_b = pr - pl;
    float dA_l = -1 * (pb - pt), dA_r = pb - pt;
    /* d(inter)/d(edge): nonzero only where the prediction's edge bounds the overlap */
    float dI_t = pt > te.t ? (-1 * iw) : 0;
    float dI_b = pb < te.b ? iw : 0;
    float dI_l = pl > te.l ? (-1 * ih) : 0;
    float dI_r = pr < te.r ? ih : 0;
    float dU_t = dA_t - dI_t, dU_b = dA_b - dI_b;
    float dU_l = dA_l - dI_l, dU_r = dA_r - dI_r;
    /* d(enclosing area)/d(edge): nonzero where the prediction's edge bounds it */
    float dC_t = pt < te.t ? (-1 * enc_w) : 0;
    float dC_b = pb > te.b ? enc_w : 0;
    float dC_l = pl < te.l ? (-1 * enc_h) : 0;
    float dC_r = pr > te.r ? enc_h : 0;

    float g_t = 0, g_b = 0, g_l = 0, g_r = 0;
    if (uni > 0) {
        g_t = quotient_grad(inter, dI_t, uni, dU_t);
        g_b = quotient_grad(inter, dI_b, uni, dU_b);
        g_l = quotient_grad(inter, dI_l, uni, dU_l);
        g_r = quotient_grad(inter, dI_r, uni, dU_r);
    }
    /* Corner selection: when the raw edges are not ordered, both sides take
     * one value, assigned in sequence (the second sees the first's update). */
    g_t = pe.t < pe.b ? g_t : g_b;
    g_b = pe.t < pe.b ? g_b : g_t;
    g_l = pe.l < pe.r ? g_l : g_r;
    g_r = pe.l < pe.r ? g_r : g_l;

    if (kind == YREF_LOSS_GIOU) {
        /* d(U/C)/d(edge), added; alone when the boxes do not overlap. */
        float e_t = quotient_grad(uni, dU_t, enc_area, dC_t);
        float e_b = quotient_grad(uni, dU_b, enc_area, dC_b);
        float e_l = quotient_grad(uni, dU_l, enc_area, dC_l);
        float e_r = quotient_grad(uni, dU_r, enc_area, dC_r);
        if (enc_area > 0) {
            g_t += e_t;
            g_b += e_b;
            g_l += e_l;
            g_r += e_r;
        }
        if (iw <= 0 || ih <= 0) {
            g_t = e_t;
            g_b = e_b;
            g_l = e_l;
            g_r = e_r;
        }
    }

    rbox_grad g;
    g.dx = g_l + g_r;
    g.dy = g_t + g_b;
    g.dw = g_r - g_l;
    g.dh = g_b - g_t;

    if (kind == YREF_LOSS_DIOU || kind == YREF_LOSS_CIOU) {
        /* Enclosing box from the unordered edges, through double fmin/fmax. */
        float ct = (float)fmin(pred.y - pred.h / 2, truth.y - truth.h / 2);
        float cb = (float)fmax(pred.y + pred.h / 2, truth.y + truth.h / 2);
        float cl = (float)fmin(pred.x - pred.w / 2, truth.x - truth.w / 2);
        float cr = (float)fmax(pred.x + pred.w / 2, truth.x + truth.w / 2);
        float cw = cr - cl;
        float ch = cb - ct;
        float diag2 = cw * cw + ch * ch;
        /* Which side of the enclosing box the prediction defines (the
         * derivative of its width/height w.r.t. x, y, w, h: 0, +-1, +-0.5). */
        float top_y = pt < te.t ? 1 : 0, top_h = pt < te.t ? -0.5f : 0;
        float bot_y = pb > te.b ? 1 : 0, bot_h = pb > te.b ? 0.5f : 0;
        float lef_x = pl < te.l ? 1 : 0, lef_w = pl < te.l ? -0.5f : 0;
        float rig_x = pr > te.r ? 1 : 0, rig_w = pr > te.r ? 0.5f : 0;
        float dcw_dx = rig_x - lef_x, dcw_dy = 0 - 0, dcw_dw = rig_w - lef_w, dcw_dh = 0 - 0;
        float dch_dx = 0 - 0, dch_dy = bot_y - top_y, dch_dw = 0 - 0, dch_dh = bot_h - top_h;

        float alpha = 0, ar_dw = 0, ar_dh = 0;
        if (kind == YREF_LOSS_CIOU) {
            float ar_truth = truth.w / truth.h;
            float ar_pred = pred.w / pred.h;
            double diff = atan(ar_truth) - atan(ar_pred);
            float v = (float)(4 / (REF_PI * REF_PI) * diff * diff);
            alpha = (float)((double)v / ((double)(1 - inter / uni + v) + 0.000001));
            ar_dw = (float)(8 / (REF_PI * REF_PI) * diff * pred.h);
            ar_dh = (float)(-8 / (REF_PI * REF_PI) * diff * pred.w);
        }
        float c_dx = (2 * (truth.x - pred.x) * diag2 - (2 * cw * dcw_dx + 2 * ch * dch_dx) * dist2) / (diag2 * diag2);
        float c_dy = (2 * (truth.y - pred.y) * diag2 - (2 * cw * dcw_dy + 2 * ch * dch_dy) * dist2) / (diag2 * diag2);
        float c_dw = (2 * cw * dcw_dw + 2 * ch * dch_dw) * dist2 / (diag2 * diag2);
        float c_dh = (2 * cw * dcw_dh + 2 * ch * dch_dh) * dist2 / (diag2 * diag2);
        if (kind == YREF_LOSS_CIOU) {
            c_dw = c_dw + alpha * ar_dw;
            c_dh = c_dh + alpha * ar_dh;
        }
        if (diag2 > 0) {
            g.dx += c_dx;
            g.dy += c_dy;
            g.dw += c_dw;
            g.dh += c_dh;
        }
        if (iw <= 0 || ih <= 0) {
            g.dx = c_dx;
            g.dy = c_dy;
            g.dw = c_dw;
            g.dh = c_dh;
        }
    }
    return g;
}

float yref_box_iou(float ax, float ay, float aw, float ah, float bx, float by, float bw, float bh,
                   int kind, int pjreddie)
{
    rbox a, b;
    a.x = ax, a.y = ay, a.w = aw, a.h = ah;
    b.x = bx, b.y = by, b.w = bw, b.h = bh;
    if (kind == YREF_LOSS_IOU || kind == YREF_LOSS_MSE)
        return rbox_iou(a, b, pjreddie);
    return rbox_iou_kind(a, b, kind);
}
