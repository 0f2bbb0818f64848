/*
 * shim_common.h - what the shims compiled against an installed darknet
 * library share (shim_common.c): the library binding checks and the
 * silencing of darknet's prints.
 *
 * Like libdarknet_shim.h, this header does not include darknet.h.
 */
#ifndef SHIM_COMMON_H
#define SHIM_COMMON_H

/* 1 if compiled against an AlexeyAB darknet.h, 0 for pjreddie's. */
int dps_alexeyab(void);

/* Path of the shared object that provides forward_yolo_layer, into buf
 * (cap bytes); returns 0, or -1 if the loader cannot tell. */
int dps_library_path(char *buf, int cap);

/* 1 if that library was built with GPU (its CPU forward skips activation). */
int dps_library_has_gpu(void);

/* fds 1 and 2 pointed at /dev/null between quiet_begin and quiet_end. */
typedef struct quiet_fds {
    int saved[2];   /* dup of fd 1 and 2, or -1 if that fd was closed */
    int active;
} quiet_fds;

/* Redirect fds 1 and 2 to /dev/null (flushing stdio first); 0, or -1 with nothing changed. */
int quiet_begin(quiet_fds *q);
/* Put fds 1 and 2 back (a no-op unless quiet_begin succeeded). */
void quiet_end(quiet_fds *q);

#endif
