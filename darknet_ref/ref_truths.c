/*
 * ref_truths.c - reading truth rows and decoding predicted boxes, as the
 * [yolo] layer does.
 *
 * Truth rows: darknet reads an image's rows up to the first whose x is
 * exactly 0, and at most max_boxes of them. The class id is the float in
 * column 4 converted to int (truncation); values that do not fit an int are
 * out of range here (darknet's conversion would be undefined).
 */
#include <math.h>

#include "ref_layer.h"

/* Rows to scan per image: max_boxes, but never past the array we were given
 * (missing rows read as zero, i.e. as the terminator). */
int ref_truth_limit(const ref_layer *L)
{
    const yref_config *c = L->cfg;
    return c->max_boxes < c->truth_rows ? c->max_boxes : c->truth_rows;
}

ref_truth ref_read_truth(const ref_layer *L, int b, int t)
{
    const yref_config *c = L->cfg;
    const float *row = L->truth + ((long)b * c->truth_rows + t) * c->truth_cols;
    ref_truth r;
    float cls = row[4];
    r.box.x = row[0];
    r.box.y = row[1];
    r.box.w = row[2];
    r.box.h = row[3];
    if (cls > -2147483649.0f && cls < 2147483648.0f) {
        r.class_id = (int)cls;
        r.class_ok = r.class_id >= 0 && r.class_id < c->classes;
    } else {
        r.class_id = -1;
        r.class_ok = 0;
    }
    return r;
}

/*
 * darknet's get_yolo_box: centre from the cell plus the activated offset,
 * size from the anchor. exp() is double and the product with the anchor
 * and the division by the net size happen in double before one rounding;
 * with new_coords the size is 4*anchor*t^2/net in float.
 */
rbox ref_pred_box(ref_layer *L, int b, int a, int anchor, int j, int i)
{
    const yref_config *c = L->cfg;
    const float *x = L->output;
    const float aw = c->biases[2 * anchor];
    const float ah = c->biases[2 * anchor + 1];
    const float tx = x[ref_index(L, b, a, 0, j, i)];
    const float ty = x[ref_index(L, b, a, 1, j, i)];
    const float tw = x[ref_index(L, b, a, 2, j, i)];
    const float th = x[ref_index(L, b, a, 3, j, i)];
    rbox p;
    p.x = (i + tx) / c->w;
    p.y = (j + ty) / c->h;
    if (c->new_coords && c->flavor == YREF_ALEXEYAB) {
        p.w = tw * tw * 4 * aw / c->net_w;
        p.h = th * th * 4 * ah / c->net_h;
    } else {
        p.w = (float)(exp(tw) * aw / c->net_w);
        p.h = (float)(exp(th) * ah / c->net_h);
    }
    return p;
}
