/*
 * darknet_train.h - the interface of the shim that runs a few training
 * iterations of a whole network in an installed pjreddie darknet library and
 * hands back what each [yolo] layer saw (parity/darknet_train.py compiles it
 * with cffi, together with shim_common.c).
 *
 * Like libdarknet_shim.h, this header does not include darknet.h: only
 * darknet_train.c sees the library's own types. The network is an opaque
 * handle here.
 */
#ifndef DARKNET_TRAIN_H
#define DARKNET_TRAIN_H

/* Status codes (0 = success); parity/darknet_train.py words them. They start
 * after libdarknet_shim.h's DPS_ERR_* so one table can word both. */
#define DPT_OK 0
#define DPT_ERR_NULL 21         /* a required pointer is NULL */
#define DPT_ERR_QUIET 22        /* could not redirect stdout/stderr */
#define DPT_ERR_NETWORK 23      /* parse_network_cfg returned no usable network */
#define DPT_ERR_INDEX 24        /* a layer index outside [0, n) */
#define DPT_ERR_NOT_YOLO 25     /* a recorded layer is not a [yolo] layer, or is layer 0 */
#define DPT_ERR_SIZE 26         /* a buffer size disagrees with the network's */
#define DPT_ERR_IMAGE 27        /* the image cannot be decoded (reason filled in) */
#define DPT_ERR_BLANK_IMAGE 28  /* darknet's loader gave a blank image (its OpenCV path failed) */
#define DPT_ERR_NONFINITE 29    /* a layer's output holds NaN/Inf after the forward pass (bad_layer) */

typedef struct dpt_net dpt_net;

/* The [net] fields a training run depends on, as parse_network_cfg set them. */
typedef struct dpt_net_info {
    int layers;                 /* net->n */
    int batch, subdivisions;    /* net->batch is the mini-batch (batch / subdivisions) */
    int w, h, c, inputs;        /* one image: c*h*w floats */
    int truths;                 /* truth floats per image (the last layer's l.truths) */
    float learning_rate, momentum, decay;
    int burn_in, policy;        /* policy: darknet's learning_rate_policy code */
} dpt_net_info;

/* One layer as the library built it. */
typedef struct dpt_layer {
    int yolo;                   /* 1 for a [yolo] layer */
    int batch, w, h, c, out_w, out_h, out_c, inputs, outputs;
    int n, total, classes, max_boxes, truths;   /* [yolo] fields (0 elsewhere) */
} dpt_layer;

/* What one training iteration reported. */
typedef struct dpt_step {
    float net_cost;             /* *net->cost after the forward pass (the mean of the layer costs) */
    float rate;                 /* the learning rate update_network applied (get_current_rate) */
    int updated;                /* 1 if update_network ran (darknet's subdivision rule) */
    long long seen;             /* *net->seen after the iteration */
    int bad_layer;              /* DPT_ERR_NONFINITE: the first layer whose output is not finite */
} dpt_step;

/*
 * Seed C's rand() with seed (after clearing the spare that darknet's
 * rand_normal keeps between calls) and build the network of the cfg file at
 * cfg_path with the library's parse_network_cfg: random weights, no weights
 * file. *out is the handle for the calls below; release it with dpt_close.
 */
int dpt_open(const char *cfg_path, unsigned seed, int quiet, dpt_net **out);

void dpt_close(dpt_net *net);

int dpt_net_info_of(const dpt_net *net, dpt_net_info *info);

int dpt_layer_info(const dpt_net *net, int index, dpt_layer *info);

/*
 * Decode the image at path with the library's load_image_color, resized to
 * the network's w x h, into dst (cap floats: c*h*w, planar RGB in [0, 1]).
 * The file is first decoded with the library's stb_image, so a file that no
 * decoder reads comes back as DPT_ERR_IMAGE with stb's reason in
 * reason (reason_cap bytes) instead of reaching darknet's exit paths.
 */
int dpt_load_image(const dpt_net *net, const char *path, float *dst, int cap,
                   char *reason, int reason_cap, int quiet);

/*
 * One training iteration as darknet's train_network_datum runs it: copy
 * input (input_len = batch * inputs floats) and truth (truth_len = batch *
 * truths floats) into the network, count the images as seen,
 * forward_network with net->train = 1, then copy out, for each of the count
 * layers in layers[], the layer's input (the previous layer's output),
 * output and delta (caps[k] = batch * outputs floats each, into ins[k],
 * outs[k], deltas[k]) and *l.cost (costs[k]); then backward_network and,
 * when darknet's subdivision rule says so, update_network. Every length is
 * checked against the network before anything is copied.
 *
 * If any layer's output holds NaN or Inf after the forward pass, nothing is
 * copied out and neither backward_network nor update_network runs
 * (DPT_ERR_NONFINITE, step->bad_layer set): a max-pool window of NaNs leaves
 * its index at -1, and darknet's backward pass would write before the
 * previous layer's delta.
 */
int dpt_train_step(dpt_net *net, const float *input, int input_len, const float *truth, int truth_len,
                   int count, const int *layers, const int *caps,
                   float *const *ins, float *const *outs, float *const *deltas, float *costs,
                   dpt_step *step, int quiet);

#endif
