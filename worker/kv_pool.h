/* The paged KV cache's block allocator: a fixed pool of blocks, each holding block_size token
 * positions of K and V for every layer, with reference counts so that sequences share blocks. It
 * owns only the bookkeeping; the K/V memory lives in the runner.
 *
 * Prefix caching: a full block can be registered under its tokens and the block before it in
 * its sequence (its parent). A later sequence whose prefix is the same chain of tokens finds the
 * blocks (tsr_kv_cached) and skips computing them. A registered block that no sequence holds
 * stays cached, least recently released first in line for eviction, until a block is needed
 * and the free list is empty. The match is exact: the tokens are compared, and the parent by
 * its id and the generation it had when the child was registered, so a child whose parent was
 * evicted and reused is never matched (the hash only finds candidates). */
#ifndef TSR_WORKER_KV_POOL_H
#define TSR_WORKER_KV_POOL_H

#include <stdint.h>

#include "common/hash.h" /* tsr_chain_hash: the key of a block */

struct tsr_kv_pool {
    int n_blocks, block_size;
    int n_free;         /* blocks that can be handed out: the free list and the evictable */
    int n_list;         /* of them on the free list; the others are cached, evictable */
    int32_t *free_list; /* stack of free block ids */
    int32_t *refcnt;    /* (n_blocks) */
    /* prefix cache, per block: registered (1) or not, its chain hash, parent and generation,
     * its tokens (block_size each), and its place in the eviction list (unreferenced, registered
     * blocks; oldest release at the head) */
    uint8_t *registered;
    uint64_t *hash;
    int32_t *parent;
    uint32_t *parent_gen, *gen;
    int32_t *tokens;
    int32_t *lru_prev, *lru_next;
    int32_t lru_head, lru_tail;
    /* open addressing, linear probing: block id or -1; capacity a power of two >= 2 x blocks */
    int32_t *table;
    uint32_t table_mask;
    uint64_t evictions;
};

int tsr_kv_pool_init(struct tsr_kv_pool *p, int n_blocks, int block_size);
void tsr_kv_pool_free(struct tsr_kv_pool *p);
/* A block with refcount 1, or -1 when none is free. Takes the free list first, then evicts the
 * cached block released longest ago. O(1). */
int32_t tsr_kv_alloc_block(struct tsr_kv_pool *p);
void tsr_kv_ref_block(struct tsr_kv_pool *p, int32_t id);
/* Drops one reference. At zero the block returns to the free list, or, registered, waits in
 * the eviction list, still findable. */
void tsr_kv_unref_block(struct tsr_kv_pool *p, int32_t id);

/* The cached block holding `tokens` after `parent` (-1: the sequence's first block), with a new
 * reference; -1 when there is none. */
int32_t tsr_kv_cached(struct tsr_kv_pool *p, uint64_t hash, int32_t parent, const int32_t *tokens);
/* Makes block id (held, full: block_size tokens computed) findable under its tokens after
 * `parent`. Returns 1 when registered, 0 when an equal block already is (id stays private). */
int tsr_kv_register(struct tsr_kv_pool *p, int32_t id, uint64_t hash, int32_t parent,
                    const int32_t *tokens);
/* Checks the pool's invariants (each block free, cached or held, exactly once; the counts; the
 * table): 0, or TSR_EINTERNAL with what is wrong. For tests. */
int tsr_kv_pool_check(const struct tsr_kv_pool *p);

/* Blocks needed to hold n_tokens positions. */
static inline int tsr_kv_blocks_for(const struct tsr_kv_pool *p, int n_tokens)
{
    return (n_tokens + p->block_size - 1) / p->block_size;
}

#endif
