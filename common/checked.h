/* Overflow-safe size arithmetic for parsers: every offset and size read from a file goes through
 * these before it is used. Each returns 1 on overflow (and leaves *out unspecified), 0 otherwise.
 */
#ifndef TSR_COMMON_CHECKED_H
#define TSR_COMMON_CHECKED_H

#include <stdint.h>

static inline int tsr_add_u64(uint64_t a, uint64_t b, uint64_t *out)
{
    return __builtin_add_overflow(a, b, out);
}

static inline int tsr_mul_u64(uint64_t a, uint64_t b, uint64_t *out)
{
    return __builtin_mul_overflow(a, b, out);
}

/* 1 if [off, off+len) does not lie inside [0, size). */
static inline int tsr_range_outside(uint64_t off, uint64_t len, uint64_t size)
{
    uint64_t end;
    return tsr_add_u64(off, len, &end) || end > size;
}

#endif
