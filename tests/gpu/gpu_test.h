/* Helpers the GPU test programs share: the device count or the exit that says why there is none
 * (gpu_count_or_exit), a seeded generator (xorshift64*: rng_seed first) with uniform integers and
 * Gaussian floats, allocation that exits on failure, a fatal error with tsr_last_error(), a
 * monotonic clock. One copy per program (static);
 * each program uses what it needs. */
#ifndef TSR_TESTS_GPU_TEST_H
#define TSR_TESTS_GPU_TEST_H

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cuda_runtime_api.h>

#include "common/status.h"

/* The number of CUDA devices (>= 1), or the program ends: with no device, exit 77 (ctest:
 * skipped) and the reason, unless TESSERA_REQUIRE_GPU=1 (scripts/bench_gpu.sh sets it), where no
 * device is a failure (exit 1). No device means cudaErrorNoDevice, a count of 0, or no NVIDIA
 * kernel driver at all (/proc/driver/nvidia absent: the runtime then says "insufficient driver").
 * Any other failure of cudaGetDeviceCount (a broken or mismatched driver on a GPU machine) is a
 * failure, never a skip. */
static inline int gpu_count_or_exit(const char *prog)
{
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    int no_driver = access("/proc/driver/nvidia", F_OK) != 0;
    int none = (e == cudaSuccess && n == 0) || e == cudaErrorNoDevice ||
               (e == cudaErrorInsufficientDriver && no_driver);
    if (e != cudaSuccess && !none) {
        fprintf(stderr, "%s: FAILED: cudaGetDeviceCount: %s (%s)\n", prog, cudaGetErrorName(e),
                cudaGetErrorString(e));
        exit(1);
    }
    if (none) {
        const char *req = getenv("TESSERA_REQUIRE_GPU");
        int required = req && *req && strcmp(req, "0") != 0;
        printf("%s: no CUDA device (%s): %s\n", prog,
               e == cudaSuccess ? "count 0" : cudaGetErrorName(e),
               required ? "FAILED (TESSERA_REQUIRE_GPU is set)" : "skipped");
        fflush(stdout);
        exit(required ? 1 : 77);
    }
    return n;
}

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

/* A uniform integer in [0, n). */
static inline int rng_int(int n)
{
    return (int)(rng_u64() % (uint64_t)n);
}

/* n Gaussian floats times scale. */
static inline float *rand_floats(size_t n, float scale)
{
    float *f = (float *)xmalloc(n * sizeof *f);
    for (size_t i = 0; i < n; i++) f[i] = rng_gauss() * scale;
    return f;
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
