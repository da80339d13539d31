/* Helpers the CPU backend's op tests share (test_cpu_ops.c, test_kv_dtype.c): random data from
 * unit.h's generator and host-visible buffers on a backend (cmocka asserts). One copy per test
 * program (static). */
#ifndef TSR_TESTS_UNIT_BACKEND_CHECK_H
#define TSR_TESTS_UNIT_BACKEND_CHECK_H

#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "kernels/backend.h"
#include "unit.h"

static inline int rng_int(int n) /* [0, n) */
{
    return (int)(tsr_test_rng_u64() % (uint64_t)n);
}

static inline void fill_normal(float *x, size_t n, float scale)
{
    for (size_t i = 0; i < n; i++) x[i] = scale * tsr_test_rng_normal();
}

/* A buffer of n bytes on b, holding src's when src is not NULL. */
static inline tsr_buf_t *buf_from(tsr_backend_t *b, const void *src, size_t n)
{
    tsr_buf_t *buf = tsr_buf_alloc(b, n);
    assert_non_null(buf);
    if (src) assert_int_equal(tsr_buf_set(buf, 0, src, n), 0);
    return buf;
}

/* n_floats of NaN on a host-visible backend (an output an op must overwrite). */
static inline tsr_buf_t *buf_nan(tsr_backend_t *b, size_t n_floats)
{
    tsr_buf_t *buf = tsr_buf_alloc(b, n_floats * sizeof(float));
    assert_non_null(buf);
    float *p = tsr_buf_host(buf);
    for (size_t i = 0; i < n_floats; i++) p[i] = NAN;
    return buf;
}

#endif
