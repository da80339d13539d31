/* The KV block pool: allocation order, exhaustion, reference counts, and its prefix cache:
 * lookups, eviction order, a parent evicted under its children, and random interleavings that
 * must never lose or double-free a block. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "common/status.h"
#include "worker/kv_pool.h"

static void test_alloc_until_empty(void **state)
{
    struct tsr_kv_pool p;
    assert_int_equal(tsr_kv_pool_init(&p, 4, 16), 0);
    int seen[4] = {0};
    for (int i = 0; i < 4; i++) {
        int32_t b = tsr_kv_alloc_block(&p);
        assert_true(b >= 0 && b < 4);
        assert_int_equal(seen[b]++, 0);
    }
    assert_int_equal(tsr_kv_alloc_block(&p), -1);
    assert_int_equal(p.n_free, 0);
    tsr_kv_unref_block(&p, 2);
    assert_int_equal(tsr_kv_alloc_block(&p), 2);
    tsr_kv_pool_free(&p);
}

static void test_refcounts(void **state)
{
    struct tsr_kv_pool p;
    assert_int_equal(tsr_kv_pool_init(&p, 2, 8), 0);
    int32_t b = tsr_kv_alloc_block(&p);
    tsr_kv_ref_block(&p, b);
    tsr_kv_unref_block(&p, b);
    assert_int_equal(p.n_free, 1); /* still held once */
    tsr_kv_unref_block(&p, b);
    assert_int_equal(p.n_free, 2);
    assert_int_equal(tsr_kv_blocks_for(&p, 0), 0);
    assert_int_equal(tsr_kv_blocks_for(&p, 8), 1);
    assert_int_equal(tsr_kv_blocks_for(&p, 9), 2);
    tsr_kv_pool_free(&p);
}

static void test_bad_sizes(void **state)
{
    struct tsr_kv_pool p;
    assert_int_equal(tsr_kv_pool_init(&p, 0, 16), TSR_EINVAL);
    assert_int_equal(tsr_kv_pool_init(&p, 4, 0), TSR_EINVAL);
}

/* Registers a chain of n blocks holding toks[i*bs .. ), returning their ids in ids[]. */
static void chain(struct tsr_kv_pool *p, const int32_t *toks, int n, int32_t *ids)
{
    uint64_t h = 0;
    for (int i = 0; i < n; i++) {
        ids[i] = tsr_kv_alloc_block(p);
        assert_true(ids[i] >= 0);
        h = tsr_chain_hash(h, toks + i * p->block_size, p->block_size);
        assert_int_equal(
            tsr_kv_register(p, ids[i], h, i ? ids[i - 1] : -1, toks + i * p->block_size), 1);
    }
}

/* Looks the chain up: how many leading blocks are found (each gets a reference, kept in got[]). */
static int lookup(struct tsr_kv_pool *p, const int32_t *toks, int n, int32_t *got)
{
    uint64_t h = 0;
    int i = 0;
    for (; i < n; i++) {
        h = tsr_chain_hash(h, toks + i * p->block_size, p->block_size);
        got[i] = tsr_kv_cached(p, h, i ? got[i - 1] : -1, toks + i * p->block_size);
        if (got[i] < 0) break;
    }
    return i;
}

static void test_prefix_lookup_and_eviction(void **state)
{
    struct tsr_kv_pool p;
    assert_int_equal(tsr_kv_pool_init(&p, 4, 2), 0);
    const int32_t a[6] = {1, 2, 3, 4, 5, 6}, b[6] = {1, 2, 3, 9, 5, 6};
    int32_t ids[3], got[3];
    chain(&p, a, 3, ids);
    /* held: found, shared (refcount 2), not free */
    assert_int_equal(lookup(&p, a, 3, got), 3);
    assert_memory_equal(got, ids, sizeof ids);
    assert_int_equal(p.refcnt[ids[0]], 2);
    assert_int_equal(p.n_free, 1);
    /* a different second block: only the first matches */
    int32_t got_b[3];
    assert_int_equal(lookup(&p, b, 3, got_b), 1);
    assert_int_equal(got_b[0], ids[0]);
    tsr_kv_unref_block(&p, got_b[0]);
    for (int i = 0; i < 3; i++) tsr_kv_unref_block(&p, got[i]), tsr_kv_unref_block(&p, ids[i]);
    /* released: cached and counted free, still found */
    assert_int_equal(p.n_free, 4);
    assert_int_equal(tsr_kv_pool_check(&p), 0);
    assert_int_equal(lookup(&p, a, 3, got), 3);
    for (int i = 2; i >= 0; i--) tsr_kv_unref_block(&p, got[i]); /* released last block first */
    /* allocation takes the free list, then evicts the block released longest ago: the chain's
     * last block (released first above); its parents stay findable */
    int32_t fresh = tsr_kv_alloc_block(&p), evicted = tsr_kv_alloc_block(&p);
    assert_true(fresh != ids[0] && fresh != ids[1] && fresh != ids[2]);
    assert_int_equal(evicted, ids[2]);
    assert_int_equal(p.evictions, 1);
    assert_int_equal(lookup(&p, a, 3, got), 2);
    tsr_kv_unref_block(&p, got[0]);
    tsr_kv_unref_block(&p, got[1]);
    assert_int_equal(tsr_kv_pool_check(&p), 0);
    tsr_kv_pool_free(&p);
}

static void test_parent_evicted_under_child(void **state)
{
    /* a child whose parent was evicted and reused for other tokens must not be matched by a new
     * chain through the reused block, even with the same tokens in the child's place */
    struct tsr_kv_pool p;
    assert_int_equal(tsr_kv_pool_init(&p, 2, 2), 0);
    const int32_t a[4] = {1, 2, 3, 4}, c[4] = {7, 8, 3, 4};
    int32_t ids[2], got[2];
    chain(&p, a, 2, ids);
    tsr_kv_unref_block(&p, ids[0]); /* the parent goes first in line */
    tsr_kv_unref_block(&p, ids[1]);
    int32_t reused = tsr_kv_alloc_block(&p);
    assert_int_equal(reused, ids[0]);
    uint64_t h = tsr_chain_hash(0, c, 2);
    assert_int_equal(tsr_kv_register(&p, reused, h, -1, c), 1);
    assert_int_equal(lookup(&p, c, 2, got), 1); /* c's first block; a's child is not c's */
    assert_int_equal(got[0], reused);
    int32_t got_a[2];
    assert_int_equal(lookup(&p, a, 2, got_a), 0);
    tsr_kv_unref_block(&p, got[0]);
    tsr_kv_unref_block(&p, reused);
    assert_int_equal(tsr_kv_pool_check(&p), 0);
    tsr_kv_pool_free(&p);
}

/* Random interleavings of allocation, sharing (a fork), release, registration, lookup and
 * eviction against a model of who holds what: the pool's invariants hold after every operation,
 * every reference the model holds is counted, and at the end every block comes back. */
static void test_prefix_cache_property(void **state)
{
    enum { BLOCKS = 24, BS = 2, HELD = 256, OPS = 20000 };
    struct tsr_kv_pool p;
    assert_int_equal(tsr_kv_pool_init(&p, BLOCKS, BS), 0);
    int32_t held[HELD];
    int n_held = 0;
    int refs[BLOCKS] = {0};
    uint32_t rng = 12345;
#define RND() (rng = rng * 1103515245u + 12345u, (rng >> 16) & 0x7fff)
    for (int op = 0; op < OPS; op++) {
        int what = RND() % 5;
        if (what == 0 && n_held < HELD) { /* allocate */
            int32_t b = tsr_kv_alloc_block(&p);
            if (b >= 0) {
                assert_int_equal(refs[b], 0);
                refs[b]++, held[n_held++] = b;
            } else {
                assert_int_equal(p.n_free, 0);
            }
        } else if (what == 1 && n_held && n_held < HELD) { /* fork: share a held block */
            int32_t b = held[RND() % n_held];
            tsr_kv_ref_block(&p, b);
            refs[b]++, held[n_held++] = b;
        } else if (what == 2 && n_held) { /* release */
            int k = RND() % n_held;
            int32_t b = held[k];
            held[k] = held[--n_held];
            tsr_kv_unref_block(&p, b);
            refs[b]--;
        } else if (what == 3 && n_held) { /* register a held block, parent any registered one */
            int32_t b = held[RND() % n_held], parent = -1;
            if (!p.registered[b]) {
                int32_t cand = (int32_t)(RND() % BLOCKS);
                if (p.registered[cand] && cand != b) parent = cand;
                int32_t toks[BS] = {(int32_t)(RND() % 3), (int32_t)(RND() % 3)};
                tsr_kv_register(&p, b, tsr_chain_hash(parent >= 0 ? p.hash[parent] : 0, toks, BS),
                                parent, toks);
            }
        } else if (what == 4 && n_held < HELD) { /* look up a random short chain */
            int32_t toks[BS] = {(int32_t)(RND() % 3), (int32_t)(RND() % 3)};
            int32_t parent = RND() % 2 ? -1 : (int32_t)(RND() % BLOCKS);
            if (parent >= 0 && !p.registered[parent]) parent = -1;
            int32_t b = tsr_kv_cached(
                &p, tsr_chain_hash(parent >= 0 ? p.hash[parent] : 0, toks, BS), parent, toks);
            if (b >= 0) {
                assert_memory_equal(p.tokens + (size_t)b * BS, toks, sizeof toks);
                refs[b]++, held[n_held++] = b;
            }
        }
        int rc = tsr_kv_pool_check(&p);
        if (rc) fail_msg("after op %d: %s", op, tsr_last_error());
        for (int b = 0; b < BLOCKS; b++) assert_int_equal(p.refcnt[b], refs[b]);
    }
#undef RND
    while (n_held) tsr_kv_unref_block(&p, held[--n_held]);
    assert_int_equal(p.n_free, BLOCKS);
    assert_int_equal(tsr_kv_pool_check(&p), 0);
    assert_true(p.evictions > 0); /* the run did exercise eviction */
    tsr_kv_pool_free(&p);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_alloc_until_empty),
        cmocka_unit_test(test_refcounts),
        cmocka_unit_test(test_bad_sizes),
        cmocka_unit_test(test_prefix_lookup_and_eviction),
        cmocka_unit_test(test_parent_evicted_under_child),
        cmocka_unit_test(test_prefix_cache_property),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
