/* Random paged-attention steps for the GPU op tests (test_cuda_ops, test_cuda_kv_dtype): a step
 * of n_seqs sequences, sequence s with ctx[s] positions cached and newt[s] tokens in this step,
 * its blocks a random permutation of the cache's (3 spare blocks no sequence uses; table entries
 * past a sequence's blocks are -1). */
#ifndef TSR_TESTS_GPU_ATTN_STEP_H
#define TSR_TESTS_GPU_ATTN_STEP_H

#include "kernels/backend.h"
#include "tests/gpu/gpu_test.h"

struct shape {
    const char *name;
    int n_head, n_kv_head, head_dim, block_size;
};

struct step {
    struct tsr_batch_meta m;
    int32_t *pos, *seq, *slot, *bt;
    int n_slots;
};

static inline struct step make_step(const struct shape *sh, int n_seqs, const int *ctx,
                                    const int *newt)
{
    struct step st;
    int bs = sh->block_size, nt = 0, max_blocks = 1, n_blocks = 0;
    for (int s = 0; s < n_seqs; s++) {
        int nb = (ctx[s] + newt[s] + bs - 1) / bs;
        nt += newt[s];
        n_blocks += nb;
        if (nb > max_blocks) max_blocks = nb;
    }
    n_blocks += 3; /* spare blocks no sequence uses */
    int32_t *perm = xmalloc((size_t)n_blocks * sizeof *perm);
    for (int i = 0; i < n_blocks; i++) perm[i] = i;
    for (int i = n_blocks - 1; i > 0; i--) {
        int j = rng_int(i + 1);
        int32_t t = perm[i];
        perm[i] = perm[j];
        perm[j] = t;
    }
    st.bt = xmalloc((size_t)n_seqs * max_blocks * sizeof(int32_t));
    for (int i = 0; i < n_seqs * max_blocks; i++) st.bt[i] = -1;
    int next = 0;
    for (int s = 0; s < n_seqs; s++) {
        int nb = (ctx[s] + newt[s] + bs - 1) / bs;
        for (int i = 0; i < nb; i++) st.bt[(size_t)s * max_blocks + i] = perm[next++];
    }
    free(perm);
    st.pos = xmalloc((size_t)nt * sizeof(int32_t));
    st.seq = xmalloc((size_t)nt * sizeof(int32_t));
    st.slot = xmalloc((size_t)nt * sizeof(int32_t));
    int t = 0;
    for (int s = 0; s < n_seqs; s++)
        for (int i = 0; i < newt[s]; i++, t++) {
            int p = ctx[s] + i;
            st.pos[t] = p;
            st.seq[t] = s;
            st.slot[t] = st.bt[(size_t)s * max_blocks + p / bs] * bs + p % bs;
        }
    st.n_slots = n_blocks * bs;
    st.m = (struct tsr_batch_meta){.n_tokens = nt,
                                   .n_seqs = n_seqs,
                                   .max_blocks = max_blocks,
                                   .pos = st.pos,
                                   .seq = st.seq,
                                   .slot = st.slot,
                                   .block_tables = st.bt};
    return st;
}

static inline void free_step(struct step *st)
{
    free(st->pos);
    free(st->seq);
    free(st->slot);
    free(st->bt);
}

#endif
