#include "worker/kv_pool.h"

#include <assert.h>
#include <stdlib.h>
#include <string.h>

#include "common/status.h"

int tsr_kv_pool_init(struct tsr_kv_pool *p, int n_blocks, int block_size)
{
    memset(p, 0, sizeof *p);
    if (n_blocks <= 0 || block_size <= 0 || n_blocks > (1 << 28) || block_size > 4096)
        return tsr_errorf(TSR_EINVAL, "KV pool needs blocks (%d) and a block size (%d)", n_blocks,
                          block_size);
    size_t n = (size_t)n_blocks, cap = 2;
    while (cap < 2 * n) cap *= 2;
    p->n_blocks = n_blocks;
    p->block_size = block_size;
    p->free_list = malloc(n * sizeof *p->free_list);
    p->refcnt = calloc(n, sizeof *p->refcnt);
    p->registered = calloc(n, sizeof *p->registered);
    p->hash = calloc(n, sizeof *p->hash);
    p->parent = malloc(n * sizeof *p->parent);
    p->parent_gen = calloc(n, sizeof *p->parent_gen);
    p->gen = calloc(n, sizeof *p->gen);
    p->tokens = malloc(n * (size_t)block_size * sizeof *p->tokens);
    p->lru_prev = malloc(n * sizeof *p->lru_prev);
    p->lru_next = malloc(n * sizeof *p->lru_next);
    p->table = malloc(cap * sizeof *p->table);
    if (!p->free_list || !p->refcnt || !p->registered || !p->hash || !p->parent || !p->parent_gen ||
        !p->gen || !p->tokens || !p->lru_prev || !p->lru_next || !p->table) {
        tsr_kv_pool_free(p);
        return tsr_errorf(TSR_ENOMEM, "out of memory for a KV pool of %d blocks", n_blocks);
    }
    p->table_mask = (uint32_t)(cap - 1);
    memset(p->table, 0xff, cap * sizeof *p->table); /* -1: empty */
    /* Pushed in reverse so blocks come out in ascending order: easier to read in dumps. */
    for (int i = 0; i < n_blocks; i++) p->free_list[i] = n_blocks - 1 - i;
    p->n_free = p->n_list = n_blocks;
    p->lru_head = p->lru_tail = -1;
    return 0;
}

void tsr_kv_pool_free(struct tsr_kv_pool *p)
{
    free(p->free_list);
    free(p->refcnt);
    free(p->registered);
    free(p->hash);
    free(p->parent);
    free(p->parent_gen);
    free(p->gen);
    free(p->tokens);
    free(p->lru_prev);
    free(p->lru_next);
    free(p->table);
    memset(p, 0, sizeof *p);
}

/* ---- the table: chain hash -> registered block ---- */

static uint32_t slot_of(const struct tsr_kv_pool *p, uint64_t h)
{
    return (uint32_t)(h ^ (h >> 32)) & p->table_mask;
}

static void table_insert(struct tsr_kv_pool *p, int32_t id)
{
    uint32_t i = slot_of(p, p->hash[id]);
    while (p->table[i] >= 0) i = (i + 1) & p->table_mask;
    p->table[i] = id;
}

/* Removes id, shifting later entries of its probe run back (no tombstones). */
static void table_remove(struct tsr_kv_pool *p, int32_t id)
{
    uint32_t i = slot_of(p, p->hash[id]);
    while (p->table[i] != id) {
        assert(p->table[i] >= 0);
        i = (i + 1) & p->table_mask;
    }
    uint32_t hole = i;
    for (;;) {
        i = (i + 1) & p->table_mask;
        int32_t b = p->table[i];
        if (b < 0) break;
        uint32_t home = slot_of(p, p->hash[b]);
        /* b may fill the hole unless its home lies cyclically in (hole, i] */
        int stays = hole <= i ? (home > hole && home <= i) : (home > hole || home <= i);
        if (stays) continue;
        p->table[hole] = b;
        hole = i;
    }
    p->table[hole] = -1;
}

/* ---- the eviction list: unreferenced registered blocks, oldest release first ---- */

static void lru_push(struct tsr_kv_pool *p, int32_t id)
{
    p->lru_prev[id] = p->lru_tail;
    p->lru_next[id] = -1;
    if (p->lru_tail >= 0)
        p->lru_next[p->lru_tail] = id;
    else
        p->lru_head = id;
    p->lru_tail = id;
}

static void lru_remove(struct tsr_kv_pool *p, int32_t id)
{
    int32_t a = p->lru_prev[id], b = p->lru_next[id];
    if (a >= 0)
        p->lru_next[a] = b;
    else
        p->lru_head = b;
    if (b >= 0)
        p->lru_prev[b] = a;
    else
        p->lru_tail = a;
}

static void unregister(struct tsr_kv_pool *p, int32_t id)
{
    table_remove(p, id);
    p->registered[id] = 0;
}

int32_t tsr_kv_alloc_block(struct tsr_kv_pool *p)
{
    int32_t id;
    if (p->n_list > 0) {
        id = p->free_list[--p->n_list];
    } else if (p->lru_head >= 0) {
        id = p->lru_head;
        lru_remove(p, id);
        unregister(p, id);
        p->evictions++;
    } else {
        return -1;
    }
    p->n_free--;
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
    if (--p->refcnt[id]) return;
    p->n_free++;
    if (p->registered[id])
        lru_push(p, id);
    else
        p->free_list[p->n_list++] = id;
}

static int same_block(const struct tsr_kv_pool *p, int32_t b, uint64_t hash, int32_t parent,
                      const int32_t *tokens)
{
    return p->hash[b] == hash && p->parent[b] == parent &&
           (parent < 0 || (p->registered[parent] && p->parent_gen[b] == p->gen[parent])) &&
           !memcmp(p->tokens + (size_t)b * p->block_size, tokens,
                   (size_t)p->block_size * sizeof *tokens);
}

static int32_t find(const struct tsr_kv_pool *p, uint64_t hash, int32_t parent,
                    const int32_t *tokens)
{
    for (uint32_t i = slot_of(p, hash); p->table[i] >= 0; i = (i + 1) & p->table_mask)
        if (same_block(p, p->table[i], hash, parent, tokens)) return p->table[i];
    return -1;
}

int32_t tsr_kv_cached(struct tsr_kv_pool *p, uint64_t hash, int32_t parent, const int32_t *tokens)
{
    int32_t b = find(p, hash, parent, tokens);
    if (b < 0) return -1;
    if (p->refcnt[b]++ == 0) {
        lru_remove(p, b);
        p->n_free--;
    }
    return b;
}

int tsr_kv_register(struct tsr_kv_pool *p, int32_t id, uint64_t hash, int32_t parent,
                    const int32_t *tokens)
{
    assert(id >= 0 && id < p->n_blocks && p->refcnt[id] > 0 && !p->registered[id]);
    assert(parent < 0 || p->registered[parent]);
    if (find(p, hash, parent, tokens) >= 0) return 0;
    p->registered[id] = 1;
    p->gen[id]++;
    p->hash[id] = hash;
    p->parent[id] = parent;
    p->parent_gen[id] = parent >= 0 ? p->gen[parent] : 0;
    memcpy(p->tokens + (size_t)id * p->block_size, tokens, (size_t)p->block_size * sizeof *tokens);
    table_insert(p, id);
    return 1;
}

int tsr_kv_pool_check(const struct tsr_kv_pool *p)
{
    int n = p->n_blocks;
    uint8_t *seen = calloc((size_t)n, 1);
    if (!seen) return tsr_errorf(TSR_ENOMEM, "out of memory");
    int rc = 0, n_lru = 0, n_reg = 0, n_table = 0;
    for (int i = 0; i < p->n_list && !rc; i++) {
        int32_t b = p->free_list[i];
        if (b < 0 || b >= n || seen[b]++ || p->refcnt[b] || p->registered[b])
            rc = tsr_errorf(TSR_EINTERNAL, "free list entry %d: block %d twice, held or cached", i,
                            b);
    }
    for (int32_t b = p->lru_head, prev = -1; b >= 0 && !rc; prev = b, b = p->lru_next[b]) {
        if (b >= n || seen[b]++ || p->refcnt[b] || !p->registered[b] || p->lru_prev[b] != prev)
            rc = tsr_errorf(TSR_EINTERNAL, "eviction list: block %d misplaced", b);
        n_lru++;
    }
    for (int b = 0; b < n && !rc; b++) {
        if (!seen[b] && p->refcnt[b] <= 0)
            rc = tsr_errorf(TSR_EINTERNAL, "block %d is lost: not free, cached or held", b);
        n_reg += p->registered[b];
    }
    for (uint32_t i = 0; i <= p->table_mask && !rc; i++) {
        int32_t b = p->table[i];
        if (b < 0) continue;
        n_table++;
        /* registered, and reached from its home slot without crossing an empty one */
        int reached = b < n && p->registered[b];
        for (uint32_t j = reached ? slot_of(p, p->hash[b]) : i; reached && j != i;
             j = (j + 1) & p->table_mask)
            reached = p->table[j] >= 0;
        if (!reached) rc = tsr_errorf(TSR_EINTERNAL, "table slot %u: block %d not findable", i, b);
    }
    if (!rc && (n_table != n_reg || p->n_free != p->n_list + n_lru))
        rc = tsr_errorf(TSR_EINTERNAL,
                        "counts: %d in the table, %d registered; %d free = %d listed + %d cached",
                        n_table, n_reg, p->n_free, p->n_list, n_lru);
    free(seen);
    return rc;
}
