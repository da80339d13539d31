/* The paged KV cache's block allocator: a fixed pool of blocks, each holding block_size token
 * positions of K and V for every layer, with reference counts so blocks can later be shared
 * (prefix caching, forks). It owns only the bookkeeping; the K/V memory lives in the runner. */
#ifndef TSR_WORKER_KV_POOL_H
#define TSR_WORKER_KV_POOL_H

#include <stdint.h>

struct tsr_kv_pool {
    int n_blocks, block_size;
    int n_free;
    int32_t *free_list; /* stack of free block ids */
    int32_t *refcnt;    /* (n_blocks) */
};

int tsr_kv_pool_init(struct tsr_kv_pool *p, int n_blocks, int block_size);
void tsr_kv_pool_free(struct tsr_kv_pool *p);
/* A block with refcount 1, or -1 when none is free. O(1). */
int32_t tsr_kv_alloc_block(struct tsr_kv_pool *p);
void tsr_kv_ref_block(struct tsr_kv_pool *p, int32_t id);
/* Drops one reference; the block returns to the pool at zero. */
void tsr_kv_unref_block(struct tsr_kv_pool *p, int32_t id);
/* Blocks needed to hold n_tokens positions. */
static inline int tsr_kv_blocks_for(const struct tsr_kv_pool *p, int n_tokens)
{
    return (n_tokens + p->block_size - 1) / p->block_size;
}

#endif
