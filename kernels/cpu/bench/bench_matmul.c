/* Decode GEMV throughput of the CPU backend on SmolLM2-135M's shapes, against the machine's
 * memory bandwidth. Not built by CMake; build by hand from the repository root:
 *
 *   gcc -std=gnu11 -O2 -fopenmp -I. kernels/cpu/bench/bench_matmul.c kernels/backend.c \
 *       common/{dtype,log,status}.c \
 *       kernels/cpu/{cpu_backend,matmul,attention,kernels_scalar,kernels_avx2,kernels_avx512}.c \
 *       -lm -o /tmp/bench_matmul
 *   /tmp/bench_matmul [n_threads] [n_tokens] [f32|q8|both]
 *
 * A "token" runs every matmul of the model once (30 layers x q, k, v, o, gate, up, down in Q4_1,
 * then the 49152 x 576 Q8_0 output), on weights laid out like the model (96 MB, far beyond the
 * caches), so weights stream from DRAM as in real decoding. Reported: GB/s of weight bytes read,
 * per matrix kind and in total, for each instruction set and activation mode (f32: the exact
 * default; q8: TESSERA_CPU_ACT=q8), next to memcpy and a plain read. */
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "kernels/backend.h"
#include "kernels/cpu/cpu_backend.h"

enum { N_LAYER = 30, DIM = 576, FFN = 1536, KV = 192, VOCAB = 49152 };

struct mat {
    const char *name;
    int rows, cols;
    enum tsr_dtype type;
    int per_token; /* how many of these a token uses */
};

static const struct mat mats[] = {
    {"q/o 576x576", DIM, DIM, TSR_Q4_1, 2 * N_LAYER},
    {"k/v 192x576", KV, DIM, TSR_Q4_1, 2 * N_LAYER},
    {"gate/up 1536x576", FFN, DIM, TSR_Q4_1, 2 * N_LAYER},
    {"down 576x1536", DIM, FFN, TSR_Q4_1, N_LAYER},
    {"output 49152x576", VOCAB, DIM, TSR_Q8_0, 1},
};
enum { N_MATS = sizeof mats / sizeof mats[0] };

static void fill_random(uint8_t *p, size_t n, enum tsr_dtype t, int cols)
{
    uint64_t s = 88172645463325252ull;
    for (size_t i = 0; i < n; i++) {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        p[i] = (uint8_t)s;
    }
    /* sane f16 scales: 0x2000 ~ 0.0078 */
    size_t bs = tsr_dtype_block_bytes(t);
    for (size_t b = 0; b + bs <= n; b += bs) {
        p[b] = 0x00;
        p[b + 1] = 0x20;
        if (t == TSR_Q4_1) {
            p[b + 2] = 0x00;
            p[b + 3] = 0xa0;
        }
    }
    (void)cols;
}

static double bandwidth_read(size_t n, int threads)
{
    uint64_t *a = aligned_alloc(64, n);
    memset(a, 1, n);
    double best = 0;
    for (int it = 0; it < 5; it++) {
        double t = tsr_now();
        uint64_t sum = 0;
#pragma omp parallel for num_threads(threads) reduction(+ : sum)
        for (size_t i = 0; i < n / 8; i++) sum += a[i];
        t = tsr_now() - t;
        if (sum == 42) printf(" ");
        if (n / t / 1e9 > best) best = n / t / 1e9;
    }
    free(a);
    return best;
}

static double bandwidth_memcpy(size_t n)
{
    char *a = aligned_alloc(64, n), *b = aligned_alloc(64, n);
    memset(a, 1, n);
    memset(b, 2, n);
    double best = 0;
    for (int it = 0; it < 5; it++) {
        double t = tsr_now();
        memcpy(b, a, n);
        t = tsr_now() - t;
        if (2.0 * n / t / 1e9 > best) best = 2.0 * n / t / 1e9;
    }
    free(a);
    free(b);
    return best;
}

int main(int argc, char **argv)
{
    int threads = argc > 1 ? atoi(argv[1]) : 2;
    int n_tok = argc > 2 ? atoi(argv[2]) : 1;
    const char *acts = argc > 3 ? argv[3] : "both";
    int reps = n_tok == 1 ? 40 : 4;
    size_t big = (size_t)256 << 20;
    printf("memory: memcpy %.1f GB/s (read+write, 1 thread), plain read %.1f GB/s (1 thread), "
           "%.1f GB/s (%d threads)\n",
           bandwidth_memcpy(big), bandwidth_read(big, 1), bandwidth_read(big, threads), threads);

    /* weights for a whole model: per_token copies of each matrix */
    uint8_t *w[N_MATS];
    size_t wbytes[N_MATS], total = 0;
    for (int m = 0; m < N_MATS; m++) {
        wbytes[m] = tsr_dtype_row_bytes(mats[m].type, mats[m].cols) * mats[m].rows;
        w[m] = aligned_alloc(64, wbytes[m] * mats[m].per_token);
        fill_random(w[m], wbytes[m] * mats[m].per_token, mats[m].type, mats[m].cols);
        total += wbytes[m] * mats[m].per_token;
    }
    printf("model weights: %.1f MB; %d thread(s), %d token(s) per matmul\n", total / 1e6, threads,
           n_tok);

    for (int run = 0; run < 2 * (TSR_CPU_AVX512 + 1); run++) {
        int isa = run % (TSR_CPU_AVX512 + 1), q8 = run > TSR_CPU_AVX512;
        if (strcmp(acts, "both") && strcmp(acts, q8 ? "q8" : "f32")) continue;
        setenv("TESSERA_CPU_ISA", tsr_cpu_isa_name((enum tsr_cpu_isa)isa), 1);
        setenv("TESSERA_CPU_ACT", q8 ? "q8" : "f32", 1);
        tsr_backend_t *b = tsr_backend_cpu_new(threads);
        if (tsr_cpu_backend_isa(b) != (enum tsr_cpu_isa)isa) {
            tsr_backend_free(b);
            continue;
        }
        tsr_buf_t *x = tsr_buf_alloc(b, sizeof(float) * FFN * n_tok);
        tsr_buf_t *y = tsr_buf_alloc(b, sizeof(float) * (size_t)VOCAB * n_tok);
        float *xf = tsr_buf_host(x);
        for (int i = 0; i < FFN * n_tok; i++) xf[i] = (float)((i * 7919) % 1000) / 500.0f - 1.0f;
        struct tsr_weight wt[N_MATS][2 * N_LAYER];
        for (int m = 0; m < N_MATS; m++)
            for (int c = 0; c < mats[m].per_token; c++)
                wt[m][c] =
                    (struct tsr_weight){tsr_buf_weights(b, w[m] + (size_t)c * wbytes[m], wbytes[m]),
                                        mats[m].type, mats[m].rows, mats[m].cols};
        double tm[N_MATS] = {0}, t_all = 0;
        int r_eff = isa == TSR_CPU_SCALAR ? 2 : reps;
        for (int r = 0; r < r_eff + 1; r++) {
            double t0 = tsr_now();
            for (int l = 0; l < N_LAYER; l++)
                for (int m = 0; m < N_MATS; m++) {
                    if (mats[m].per_token < N_LAYER && l) continue; /* output: once */
                    int per_layer = mats[m].per_token / N_LAYER ? mats[m].per_token / N_LAYER : 1;
                    for (int c = 0; c < per_layer; c++) {
                        int idx = mats[m].per_token >= N_LAYER ? l * per_layer + c : c;
                        double t = tsr_now();
                        if (tsr_op_matmul(b, y, &wt[m][idx], x, NULL, n_tok)) {
                            fprintf(stderr, "matmul failed\n");
                            return 1;
                        }
                        if (r) tm[m] += tsr_now() - t;
                    }
                }
            if (r) t_all += tsr_now() - t0; /* first pass warms up */
        }
        printf("%-6s %-3s", tsr_cpu_isa_name((enum tsr_cpu_isa)isa), q8 ? "q8" : "f32");
        for (int m = 0; m < N_MATS; m++)
            printf("  %s %.1f GB/s", mats[m].name,
                   wbytes[m] * mats[m].per_token * (double)r_eff / tm[m] / 1e9);
        printf(
            "\n           all matmuls of a token: %.2f ms, %.1f GB/s -> at most %.0f tokens/s%s\n",
            t_all / r_eff * 1e3, total * (double)r_eff / t_all / 1e9, r_eff * n_tok / t_all,
            n_tok > 1 ? " (batched)" : "");
        for (int m = 0; m < N_MATS; m++)
            for (int c = 0; c < mats[m].per_token; c++) tsr_buf_free(wt[m][c].buf);
        tsr_buf_free(x);
        tsr_buf_free(y);
        tsr_backend_free(b);
    }
    for (int m = 0; m < N_MATS; m++) free(w[m]);
    return 0;
}
