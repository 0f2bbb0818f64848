/*
 * ref_fpmode.c - the floating-point control mode of the calling thread.
 *
 * A darknet library built with -Ofast links a constructor that turns on
 * flush-to-zero and denormals-are-zero (x86 MXCSR bits 15 and 6) for the
 * whole process as soon as it is loaded. The libdarknet backend saves the
 * mode before loading such a library, restores it afterwards, and switches
 * to the library's mode only around its calls. On other architectures these
 * are no-ops (mode 0).
 */
#include "yolo_ref.h"

#if defined(__SSE__) || defined(__x86_64__)
#include <xmmintrin.h>

unsigned yref_fp_mode(void)
{
    return _mm_getcsr();
}

void yref_set_fp_mode(unsigned mode)
{
    _mm_setcsr(mode);
}
#else
unsigned yref_fp_mode(void)
{
    return 0;
}

void yref_set_fp_mode(unsigned mode)
{
    (void)mode;
}
#endif
