#include "worker/kv_pool.h"

#include <assert.h>
#include <stdlib.h>

#include "common/status.h"

int tsr_kv_pool_init(struct tsr_kv_pool *p, int n_blocks, int block_size)
{
    if (n_blocks <= 0 || block_size <= 0)
        return tsr_errorf(TSR_EINVAL, "KV pool needs blocks (%d) and a block size (%d)", n_blocks,
                          block_size);
    p->n_blocks = n_blocks;
    p->block_size = block_size;
    p->free_list = malloc((size_t)n_blocks * sizeof *p->free_list);
    p->refcnt = calloc((size_t)n_blocks, sizeof *p->refcnt);
    if (!p->free_list || !p->refcnt) {
        tsr_kv_pool_free(p);
        return tsr_errorf(TSR_ENOMEM, "out of memory for a KV pool of %d blocks", n_blocks);
    }
    /* Pushed in reverse so blocks come out in ascending order: easier to read in dumps. */
    for (int i = 0; i < n_blocks; i++) p->free_list[i] = n_blocks - 1 - i;
    p->n_free = n_blocks;
    return 0;
}

void tsr_kv_pool_free(struct tsr_kv_pool *p)
{
    free(p->free_list);
    free(p->refcnt);
    p->free_list = p->refcnt = NULL;
    p->n_free = p->n_blocks = 0;
}

int32_t tsr_kv_alloc_block(struct tsr_kv_pool *p)
{
    if (p->n_free == 0) return -1;
    int32_t id = p->free_list[--p->n_free];
    p->refcnt[id] = 1;
    return id;
}

void tsr_kv_ref_block(struct tsr_kv_pool *p, int32_t id)
{
    assert(id >= 0 && id < p->n_blocks && p->refcnt[id] > 0);
    p->refcnt[id]++;
}

void tsr_kv_unref_block(struct tsr_kv_pool *p, int32_t id)
{
    assert(id >= 0 && id < p->n_blocks && p->refcnt[id] > 0);
    if (--p->refcnt[id] == 0) p->free_list[p->n_free++] = id;
}
