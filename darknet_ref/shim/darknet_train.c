/*
 * darknet_train.c - a few training iterations of a whole network in an
 * installed pjreddie darknet library (Debian's package), with what every
 * [yolo] layer saw after each forward pass.
 *
 * Compiled by parity/darknet_train.py against the library's OWN darknet.h
 * (pjreddie's only: its forward_network/backward_network/update_network take
 * a network *). Everything darknet computes is the library's: the network
 * comes from its parse_network_cfg (random weights from C's rand()), images
 * from its load_image_color, and each iteration is its forward_network,
 * backward_network and update_network. This file copies buffers in and out
 * and checks what it is handed.
 *
 * It is compiled with shim_common.c, whose fd silencing (quiet_begin/
 * quiet_end) and library checks (dps_library_path, dps_library_has_gpu) the
 * one-layer shim (libdarknet_shim.c) uses too.
 *
 * Where darknet would end the process: its parser calls error()/exit() on
 * cfgs it cannot build, and a file its image loader cannot read makes
 * Debian's OpenCV build run system("echo PATH >> bad.list") and return a
 * blank image (a build without OpenCV calls exit(0)). The Python side checks
 * the cfg with its own parser and layer walk before calling dpt_open, and
 * hands dpt_load_image short temporary paths of files that stb_image (the
 * library's own copy) has just decoded; a blank result is refused.
 *
 * Determinism: dpt_open seeds rand() itself, after clearing rand_normal's
 * spare value (darknet's Box-Muller keeps the second normal of each pair in
 * static storage across networks). pjreddie's make_yolo_layer calls
 * srand(0), so the layers after the first [yolo] get weights from rand()
 * seeded with 0 whatever the seed. The CPU code is single-threaded.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <float.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "darknet.h"
#include "libdarknet_shim.h"    /* DPS_ERR_* (DPT_* continue them) */
#include "shim_common.h"
#include "darknet_train.h"

#ifndef DPS_ALEXEYAB
#error "compile with -DDPS_ALEXEYAB=0 (pjreddie darknet.h)"
#endif

#if DPS_ALEXEYAB
#error "darknet_train.c drives pjreddie's network API; compile with -DDPS_ALEXEYAB=0"
#endif

/* The library's stb_image, which darknet.h does not declare. */
unsigned char *stbi_load(const char *filename, int *x, int *y, int *comp, int req_comp);
void stbi_image_free(void *retval_from_stbi_load);
const char *stbi_failure_reason(void);

struct dpt_net {
    network *net;
};

/* ------------------------------------------------------------------------
 * Seeding.
 */

/*
 * rand_normal draws two normals per pair of rand() calls and returns the
 * second from static storage on the next call. Leave it with no spare: from
 * a known rand() state, one call either returns a pending spare (no rand()
 * drawn) or draws a pair and keeps a spare, which a second call consumes.
 */
static void clear_rand_normal_spare(void)
{
    int first;
    srand(1);
    first = rand();
    srand(1);
    (void)rand_normal();
    if (rand() != first)
        (void)rand_normal();
}

/* ------------------------------------------------------------------------
 * The network.
 */

/* Does the network parse_network_cfg returned have what a training run uses? */
static int network_ok(const network *net)
{
    return net && net->n >= 1 && net->layers && net->batch >= 1 && net->inputs >= 1 &&
           net->truths >= 1 && net->input && net->truth && net->seen && net->t && net->cost;
}

int dpt_open(const char *cfg_path, unsigned seed, int quiet, dpt_net **out)
{
    quiet_fds q = {{-1, -1}, 0};
    dpt_net *handle;
    network *net;
    if (!cfg_path || !out)
        return DPT_ERR_NULL;
    *out = NULL;
    handle = calloc(1, sizeof(*handle));
    if (!handle)
        return DPS_ERR_ALLOC;
    if (quiet && quiet_begin(&q) != 0) {
        free(handle);
        return DPT_ERR_QUIET;
    }
    clear_rand_normal_spare();
    srand(seed);
    net = parse_network_cfg((char *)cfg_path);
    quiet_end(&q);
    if (!network_ok(net)) {
        free(handle);   /* leak rather than free a network we cannot read */
        return DPT_ERR_NETWORK;
    }
    handle->net = net;
    *out = handle;
    return DPT_OK;
}

void dpt_close(dpt_net *handle)
{
    if (!handle)
        return;
    if (handle->net)
        free_network(handle->net);
    free(handle);
}

int dpt_net_info_of(const dpt_net *handle, dpt_net_info *info)
{
    const network *net;
    if (!handle || !handle->net || !info)
        return DPT_ERR_NULL;
    net = handle->net;
    memset(info, 0, sizeof(*info));
    info->layers = net->n;
    info->batch = net->batch;
    info->subdivisions = net->subdivisions;
    info->w = net->w;
    info->h = net->h;
    info->c = net->c;
    info->inputs = net->inputs;
    info->truths = net->truths;
    info->learning_rate = net->learning_rate;
    info->momentum = net->momentum;
    info->decay = net->decay;
    info->burn_in = net->burn_in;
    info->policy = (int)net->policy;
    return DPT_OK;
}

int dpt_layer_info(const dpt_net *handle, int index, dpt_layer *info)
{
    const layer *l;
    if (!handle || !handle->net || !info)
        return DPT_ERR_NULL;
    if (index < 0 || index >= handle->net->n)
        return DPT_ERR_INDEX;
    l = &handle->net->layers[index];
    memset(info, 0, sizeof(*info));
    info->yolo = l->type == YOLO;
    info->batch = l->batch;
    info->w = l->w;
    info->h = l->h;
    info->c = l->c;
    info->out_w = l->out_w;
    info->out_h = l->out_h;
    info->out_c = l->out_c;
    info->inputs = l->inputs;
    info->outputs = l->outputs;
    if (info->yolo) {
        info->n = l->n;
        info->total = l->total;
        info->classes = l->classes;
        info->max_boxes = l->max_boxes;
        info->truths = l->truths;
    }
    return DPT_OK;
}

/* ------------------------------------------------------------------------
 * Images.
 */

/* stb's verdict on the file: 0 if it decodes, else its reason in reason. */
static int stb_decodes(const char *path, char *reason, int reason_cap)
{
    int w = 0, h = 0, c = 0;
    unsigned char *data = stbi_load(path, &w, &h, &c, 3);
    if (data) {
        stbi_image_free(data);
        return 0;
    }
    if (reason && reason_cap > 0) {
        const char *why = stbi_failure_reason();
        snprintf(reason, (size_t)reason_cap, "%s", why ? why : "unknown");
    }
    return -1;
}

static int all_zero(const float *data, size_t count)
{
    size_t k;
    for (k = 0; k < count; ++k)
        if (data[k] != 0)
            return 0;
    return 1;
}

int dpt_load_image(const dpt_net *handle, const char *path, float *dst, int cap,
                   char *reason, int reason_cap, int quiet)
{
    quiet_fds q = {{-1, -1}, 0};
    const network *net;
    image im;
    size_t count;
    int status = DPT_OK;
    if (!handle || !handle->net || !path || !dst)
        return DPT_ERR_NULL;
    net = handle->net;
    count = (size_t)net->w * (size_t)net->h * 3;
    if (net->c != 3 || cap < 0 || (size_t)cap != count)
        return DPT_ERR_SIZE;
    if (quiet && quiet_begin(&q) != 0)
        return DPT_ERR_QUIET;
    if (stb_decodes(path, reason, reason_cap) != 0) {
        quiet_end(&q);
        return DPT_ERR_IMAGE;
    }
    im = load_image_color((char *)path, net->w, net->h);
    quiet_end(&q);
    if (!im.data || im.w != net->w || im.h != net->h || im.c != 3)
        status = DPT_ERR_SIZE;
    else if (all_zero(im.data, count))
        status = DPT_ERR_BLANK_IMAGE;
    else
        memcpy(dst, im.data, count * sizeof(float));
    free_image(im);
    return status;
}

/* ------------------------------------------------------------------------
 * One iteration.
 */

/* Every recorded layer must be a [yolo] after some layer, with its input
 * the size of its output (it copies its input whole). */
static int check_recorded(const network *net, int count, const int *layers)
{
    int k;
    for (k = 0; k < count; ++k) {
        const int i = layers[k];
        if (i < 0 || i >= net->n)
            return DPT_ERR_INDEX;
        if (i == 0 || net->layers[i].type != YOLO || !net->layers[i].cost)
            return DPT_ERR_NOT_YOLO;
        if (net->layers[i - 1].outputs != net->layers[i].inputs ||
            net->layers[i].inputs != net->layers[i].outputs ||
            net->layers[i - 1].batch != net->batch || net->layers[i].batch != net->batch)
            return DPT_ERR_SIZE;
    }
    return DPT_OK;
}

/* The first layer whose output holds NaN or Inf (this file is built without
 * fast-math, so isfinite is a real test), or -1. */
static int first_nonfinite_layer(const network *net)
{
    int i;
    for (i = 0; i < net->n; ++i) {
        const layer *l = &net->layers[i];
        const size_t count = (size_t)l->outputs * (size_t)l->batch;
        size_t k;
        if (!l->output)
            continue;
        for (k = 0; k < count; ++k)
            if (!isfinite(l->output[k]))
                return i;
    }
    return -1;
}

/* What forward_network left in layer i: its input (layer i-1's output, which
 * forward_network passed on as net.input), output, delta and cost. */
static void copy_layer(const network *net, int i, float *in, float *out, float *delta, float *cost)
{
    const layer *l = &net->layers[i];
    const size_t count = (size_t)l->outputs * (size_t)l->batch;
    memcpy(in, net->layers[i - 1].output, count * sizeof(float));
    memcpy(out, l->output, count * sizeof(float));
    memcpy(delta, l->delta, count * sizeof(float));
    *cost = *l->cost;
}

int dpt_train_step(dpt_net *handle, const float *input, int input_len, const float *truth, int truth_len,
                   int count, const int *layers, const int *caps,
                   float *const *ins, float *const *outs, float *const *deltas, float *costs,
                   dpt_step *step, int quiet)
{
    quiet_fds q = {{-1, -1}, 0};
    network *net;
    int status, k;
    if (!handle || !handle->net || !input || !truth || !step || count < 0 ||
        (count > 0 && (!layers || !caps || !ins || !outs || !deltas || !costs)))
        return DPT_ERR_NULL;
    net = handle->net;
    memset(step, 0, sizeof(*step));
    if ((long long)input_len != (long long)net->inputs * net->batch ||
        (long long)truth_len != (long long)net->truths * net->batch)
        return DPT_ERR_SIZE;
    if ((status = check_recorded(net, count, layers)) != DPT_OK)
        return status;
    for (k = 0; k < count; ++k) {
        const layer *l = &net->layers[layers[k]];
        if (!ins[k] || !outs[k] || !deltas[k])
            return DPT_ERR_NULL;
        if ((long long)caps[k] != (long long)l->outputs * l->batch)
            return DPT_ERR_SIZE;
    }
    memcpy(net->input, input, (size_t)net->inputs * (size_t)net->batch * sizeof(float));
    memcpy(net->truth, truth, (size_t)net->truths * (size_t)net->batch * sizeof(float));
    if (quiet && quiet_begin(&q) != 0)
        return DPT_ERR_QUIET;
    /* train_network_datum's order. */
    *net->seen += (size_t)net->batch;
    step->seen = (long long)*net->seen;
    net->train = 1;
    forward_network(net);
    step->bad_layer = first_nonfinite_layer(net);
    if (step->bad_layer >= 0) {
        quiet_end(&q);
        return DPT_ERR_NONFINITE;
    }
    for (k = 0; k < count; ++k)
        copy_layer(net, layers[k], ins[k], outs[k], deltas[k], &costs[k]);
    step->net_cost = *net->cost;
    backward_network(net);
    step->rate = get_current_rate(net);
    if (((*net->seen) / (size_t)net->batch) % (size_t)net->subdivisions == 0) {
        update_network(net);
        step->updated = 1;
    }
    quiet_end(&q);
    return DPT_OK;
}
