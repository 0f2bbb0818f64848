/*
 * shim_common.c - what every shim compiled against an installed darknet
 * library shares: which library it is bound to (dps_library_path,
 * dps_library_has_gpu, dps_alexeyab) and silencing darknet's prints at the
 * file-descriptor level (quiet_begin/quiet_end).
 *
 * Compiled as its own source, beside libdarknet_shim.c (parity/backends/
 * libdarknet.py) and beside darknet_train.c (parity/darknet_train.py),
 * against the library's OWN darknet.h with DPS_ALEXEYAB set as for them.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <unistd.h>

#include "darknet.h"
#include "shim_common.h"

#ifndef DPS_ALEXEYAB
#error "compile with -DDPS_ALEXEYAB=0 (pjreddie darknet.h) or -DDPS_ALEXEYAB=1 (AlexeyAB darknet.h)"
#endif

/* darknet.h does not declare it; its address tells which library is bound. */
#if DPS_ALEXEYAB
void forward_yolo_layer(const layer l, network_state state);
#else
void forward_yolo_layer(const layer l, network net);
#endif

int dps_alexeyab(void)
{
    return DPS_ALEXEYAB;
}

/* ------------------------------------------------------------------------
 * Which library we are bound to.
 */

int dps_library_path(char *buf, int cap)
{
    Dl_info info;
    if (!buf || cap < 1 || !dladdr((void *)&forward_yolo_layer, &info) || !info.dli_fname)
        return -1;
    snprintf(buf, (size_t)cap, "%s", info.dli_fname);
    return 0;
}

int dps_library_has_gpu(void)
{
    Dl_info info;
    void *handle;
    int found;
    if (!dladdr((void *)&forward_yolo_layer, &info) || !info.dli_fname)
        return 0;
    handle = dlopen(info.dli_fname, RTLD_LAZY | RTLD_NOLOAD);
    if (!handle)
        return 0;
    found = dlsym(handle, "forward_yolo_layer_gpu") != NULL;
    dlclose(handle);
    return found;
}

/* ------------------------------------------------------------------------
 * Silencing darknet's prints at the file-descriptor level.
 */

static const int QUIET_FDS[2] = {STDOUT_FILENO, STDERR_FILENO};

/* Point fd k back where it was (or close it again if it was closed). */
static void restore_fd(int k, int saved)
{
    if (saved >= 0) {
        dup2(saved, QUIET_FDS[k]);
        close(saved);
    } else {
        close(QUIET_FDS[k]);
    }
}

void quiet_end(quiet_fds *q)
{
    int k;
    if (!q->active)
        return;
    fflush(NULL);   /* darknet's buffered printf output goes to /dev/null too */
    for (k = 0; k < 2; ++k)
        restore_fd(k, q->saved[k]);
    q->active = 0;
}

/* An fd on /dev/null numbered 3 or above, so it never is fd 1 or 2 itself. */
static int open_devnull(void)
{
    int raw = open("/dev/null", O_WRONLY | O_CLOEXEC), fd;
    if (raw < 0)
        return -1;
    fd = raw > 2 ? raw : fcntl(raw, F_DUPFD_CLOEXEC, 3);
    if (fd != raw)
        close(raw);
    return fd;
}

int quiet_begin(quiet_fds *q)
{
    int devnull, k;
    q->active = 0;
    fflush(NULL);   /* what was printed before belongs to the real outputs */
    devnull = open_devnull();
    if (devnull < 0)
        return -1;
    for (k = 0; k < 2; ++k) {
        int saved = fcntl(QUIET_FDS[k], F_DUPFD_CLOEXEC, 3);
        if ((saved < 0 && errno != EBADF) || dup2(devnull, QUIET_FDS[k]) < 0) {
            if (saved >= 0)
                close(saved);
            while (k-- > 0)
                restore_fd(k, q->saved[k]);
            close(devnull);
            return -1;
        }
        q->saved[k] = saved;
    }
    close(devnull);
    q->active = 1;
    return 0;
}
