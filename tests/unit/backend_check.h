/* Helpers the CPU backend's op tests share (test_cpu_ops.c, test_kv_dtype.c): random data from
 * unit.h's generator, host-visible buffers on a backend (cmocka asserts), and random attention
 * steps (attn_build: scattered block tables, a random cache, the step's q, k, v). One copy per test
 * program (static). */
#ifndef TSR_TESTS_UNIT_BACKEND_CHECK_H
#define TSR_TESTS_UNIT_BACKEND_CHECK_H

#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

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

/* ---- attention steps ---- */

/* A step's shape: n_seqs sequences, sequence s with ctx[s] positions cached and new_[s] tokens
 * in this step. */
struct attn_case {
    int n_head, n_kv_head, head_dim, block_size, neox;
    int n_seqs;
    int ctx[4];  /* positions already cached per sequence */
    int new_[4]; /* tokens this step per sequence (prefill chunk or 1 for decode) */
};

struct attn_setup {
    int nt, n_blocks, max_blocks, n_slots;
    int32_t *pos, *seq, *slot, *bt;
    float *q, *k, *v, *kc, *vc, *freq;
};

/* Random scattered block tables (a permutation of all blocks), caches filled with random rows
 * for the context positions, and this step's q, k, v. */
static inline void attn_build(const struct attn_case *ac, struct attn_setup *a)
{
    int bs = ac->block_size, hd = ac->head_dim;
    a->nt = 0;
    a->max_blocks = 0;
    for (int s = 0; s < ac->n_seqs; s++) {
        a->nt += ac->new_[s];
        int blocks = (ac->ctx[s] + ac->new_[s] + bs - 1) / bs;
        if (blocks > a->max_blocks) a->max_blocks = blocks;
    }
    a->n_blocks = a->max_blocks * ac->n_seqs + 3;
    a->n_slots = a->n_blocks * bs;
    int *perm = malloc(sizeof(int) * a->n_blocks);
    for (int i = 0; i < a->n_blocks; i++) perm[i] = i;
    for (int i = a->n_blocks - 1; i > 0; i--) {
        int j = rng_int(i + 1), t = perm[i];
        perm[i] = perm[j];
        perm[j] = t;
    }
    a->bt = malloc(sizeof(int32_t) * ac->n_seqs * a->max_blocks);
    for (int i = 0; i < ac->n_seqs * a->max_blocks; i++) a->bt[i] = perm[i];
    free(perm);
    a->pos = malloc(sizeof(int32_t) * a->nt);
    a->seq = malloc(sizeof(int32_t) * a->nt);
    a->slot = malloc(sizeof(int32_t) * a->nt);
    int t = 0;
    for (int s = 0; s < ac->n_seqs; s++)
        for (int i = 0; i < ac->new_[s]; i++, t++) {
            a->pos[t] = ac->ctx[s] + i;
            a->seq[t] = s;
            a->slot[t] = a->bt[s * a->max_blocks + a->pos[t] / bs] * bs + a->pos[t] % bs;
        }
    size_t kw = (size_t)ac->n_kv_head * hd, qw = (size_t)ac->n_head * hd;
    a->kc = malloc(sizeof(float) * a->n_slots * kw);
    a->vc = malloc(sizeof(float) * a->n_slots * kw);
    fill_normal(a->kc, a->n_slots * kw, 1.0f);
    fill_normal(a->vc, a->n_slots * kw, 1.0f);
    a->q = malloc(sizeof(float) * a->nt * qw);
    a->k = malloc(sizeof(float) * a->nt * kw);
    a->v = malloc(sizeof(float) * a->nt * kw);
    fill_normal(a->q, a->nt * qw, 1.0f);
    fill_normal(a->k, a->nt * kw, 1.0f);
    fill_normal(a->v, a->nt * kw, 1.0f);
    a->freq = malloc(sizeof(float) * hd / 2);
    for (int i = 0; i < hd / 2; i++) a->freq[i] = (float)pow(10000.0, -2.0 * i / hd);
}

static inline void attn_free(struct attn_setup *a)
{
    free(a->pos);
    free(a->seq);
    free(a->slot);
    free(a->bt);
    free(a->q);
    free(a->k);
    free(a->v);
    free(a->kc);
    free(a->vc);
    free(a->freq);
}

#endif
