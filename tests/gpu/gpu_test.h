/* Helpers the GPU test programs share: a seeded generator (xorshift64*: rng_seed first),
 * allocation that exits on failure, a fatal error with tsr_last_error(), a monotonic clock. One
 * copy per program (static); each program uses what it needs. */
#ifndef TSR_TESTS_GPU_TEST_H
#define TSR_TESTS_GPU_TEST_H

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "common/status.h"

static uint64_t rng_state;

/* Starts the generator from a test's --seed. */
static inline void rng_seed(uint64_t seed)
{
    rng_state = seed * 2654435761u + 88172645463325252ull;
}

static inline uint64_t rng_u64(void)
{
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 2685821657736338717ull;
}

static inline double rng_uniform(void)
{
    return (double)(rng_u64() >> 11) * (1.0 / 9007199254740992.0);
}

static inline float rng_gauss(void)
{
    double u = rng_uniform(), v = rng_uniform();
    return (float)(sqrt(-2.0 * log(u + 1e-300)) * cos(6.283185307179586 * v));
}

static inline void *xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p) {
        fprintf(stderr, "out of memory\n");
        exit(2);
    }
    return p;
}

static inline void die(const char *what)
{
    fprintf(stderr, "FATAL: %s: %s\n", what, tsr_last_error());
    exit(2);
}

static inline double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

#endif
