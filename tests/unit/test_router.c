/* The coordinator's router as a unit (coordinator/router.c): least-loaded picks with loads that
 * follow progress and release, cache-aware picks (a prefix goes back where it was sent, unless
 * that group runs more than 4 requests more than the least loaded; load-only ignores it), the
 * avoided group, groups that leave (remove, retain, a new generation) while requests still hold
 * them, waiting for a ready group, and the snapshot list. Channels are gRPC's, created lazily: no
 * server needs to listen at the addresses. */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "common/hash.h"
#include "common/log.h"
#include "coordinator/router.h"

/* The outstanding load of a group, from the snapshot; -1 if it is not ready. */
static int64_t load_of(tsr_router_t *r, const char *group)
{
    struct tsr_route_info info[8];
    int n = tsr_router_list(r, info, 8);
    for (int i = 0; i < n && i < 8; i++)
        if (!strcmp(info[i].group, group)) return info[i].outstanding;
    return -1;
}

static void test_empty(void **state)
{
    tsr_router_t *r = tsr_router_new();
    assert_non_null(r);
    assert_null(tsr_router_pick(r, 10, NULL, NULL, NULL));
    assert_int_equal(tsr_router_n_ready(r), 0);
    double t0 = tsr_now();
    assert_int_equal(tsr_router_wait_ready(r, 100), 0);
    assert_true(tsr_now() - t0 >= 0.09); /* it waited */
    tsr_router_remove(r, "nobody");      /* unknown: no-op */
    tsr_router_free(r);
}

static void test_least_loaded(void **state)
{
    tsr_router_t *r = tsr_router_new();
    assert_int_equal(tsr_router_upsert(r, "a", "127.0.0.1:1", 1), 0);
    assert_int_equal(tsr_router_upsert(r, "b", "127.0.0.1:2", 1), 0);
    assert_int_equal(tsr_router_n_ready(r), 2);
    tsr_route_t *x = tsr_router_pick(r, 100, NULL, NULL, NULL);
    assert_non_null(x);
    const char *first = tsr_route_name(x), *other = strcmp(first, "a") ? "a" : "b";
    assert_string_equal(tsr_route_addr(x), strcmp(first, "a") ? "127.0.0.1:2" : "127.0.0.1:1");
    assert_non_null(tsr_route_channel(x));
    /* the other group has nothing: it takes the next two, until its load passes 100 */
    tsr_route_t *y = tsr_router_pick(r, 60, NULL, NULL, NULL);
    assert_string_equal(tsr_route_name(y), other);
    tsr_route_t *z = tsr_router_pick(r, 60, NULL, NULL, NULL);
    assert_string_equal(tsr_route_name(z), other);
    assert_int_equal(load_of(r, first), 100);
    assert_int_equal(load_of(r, other), 120);
    tsr_route_t *w = tsr_router_pick(r, 1, NULL, NULL, NULL); /* 100 < 120 */
    assert_string_equal(tsr_route_name(w), first);
    /* tokens arrive: progress takes them off; release drops what is left */
    tsr_route_progress(r, y, 50);
    assert_int_equal(load_of(r, other), 70);
    tsr_route_release(r, y, 10);
    tsr_route_release(r, z, 60);
    assert_int_equal(load_of(r, other), 0);
    tsr_route_release(r, x, 100);
    tsr_route_release(r, w, 1);
    assert_int_equal(load_of(r, first), 0);
    tsr_route_release(r, NULL, 5); /* no route: no-op */
    tsr_router_free(r);
}

/* n blocks' chain hashes of a prompt whose first `shared` blocks are prefix `which`'s. */
static void prompt_blocks(uint64_t *h, int n, int which, int shared, int salt)
{
    for (int i = 0; i < n; i++) {
        int32_t toks[TSR_KV_BLOCK];
        for (int t = 0; t < TSR_KV_BLOCK; t++)
            toks[t] = i < shared ? which * 1000 + i * TSR_KV_BLOCK + t : salt * 7919 + i + t;
        h[i] = tsr_chain_hash(i ? h[i - 1] : 0, toks, TSR_KV_BLOCK);
    }
}

static void test_cache_aware(void **state)
{
    tsr_router_t *r = tsr_router_new();
    assert_int_equal(tsr_router_upsert(r, "a", "127.0.0.1:1", 1), 0);
    assert_int_equal(tsr_router_upsert(r, "b", "127.0.0.1:2", 1), 0);
    uint64_t p1[50], p2[50], q1[50];
    prompt_blocks(p1, 50, 1, 48, 1); /* prefix 1: 48 blocks (768 tokens), then its own */
    prompt_blocks(q1, 50, 1, 48, 2); /* prefix 1 again, another tail */
    prompt_blocks(p2, 50, 2, 48, 3); /* prefix 2 */
    struct tsr_route_prompt rp1 = {p1, 50}, rq1 = {q1, 50}, rp2 = {p2, 50};
    int64_t load = 50 * TSR_KV_BLOCK + 17 + 32, booked;
    /* cold: the least loaded (a tie: either), booked whole */
    tsr_route_t *g1 = tsr_router_pick(r, load, &rp1, NULL, &booked);
    assert_non_null(g1);
    assert_int_equal(booked, load);
    /* prefix 2 goes to the other group: the first is busier and holds nothing of it */
    tsr_route_t *g2 = tsr_router_pick(r, load, &rp2, NULL, &booked);
    assert_ptr_not_equal(g2, g1);
    assert_int_equal(booked, load);
    tsr_route_progress(r, g1, load);
    tsr_route_release(r, g1, 0);
    tsr_route_progress(r, g2, load);
    tsr_route_release(r, g2, 0);
    /* prefix 1 with another tail: back to g1, booked less the 48 blocks it likely holds */
    tsr_route_t *h = tsr_router_pick(r, load, &rq1, NULL, &booked);
    assert_ptr_equal(h, g1);
    assert_int_equal(booked, load - 48 * TSR_KV_BLOCK);
    /* ... even while g1 is somewhat busier (1 request more) */
    tsr_route_t *h2 = tsr_router_pick(r, load, &rq1, NULL, &booked);
    assert_ptr_equal(h2, g1);
    /* but not once g1 runs 5 more: a hot prefix spreads */
    tsr_route_t *busy[3];
    for (int i = 0; i < 3; i++) {
        busy[i] = tsr_router_pick(r, 5000, NULL, g2, NULL);
        assert_ptr_equal(busy[i], g1);
    }
    tsr_route_t *h3 = tsr_router_pick(r, load, &rq1, NULL, &booked);
    assert_ptr_equal(h3, g2);
    assert_int_equal(booked, load);
    tsr_route_t *held[] = {h, h2, busy[0], busy[1], busy[2], h3};
    for (int i = 0; i < 6; i++) tsr_route_release(r, held[i], 0);
    /* load-only routing ignores what a group holds: the least loaded */
    tsr_router_set_routing(r, TSR_ROUTING_LOAD);
    int64_t la = load_of(r, "a"), lb = load_of(r, "b");
    tsr_route_t *l = tsr_router_pick(r, load, &rq1, NULL, &booked);
    assert_string_equal(tsr_route_name(l), la <= lb ? "a" : "b");
    assert_int_equal(booked, load);
    tsr_route_release(r, l, load);
    enum tsr_routing m;
    assert_int_equal(tsr_routing_parse("load", &m), 0);
    assert_int_equal(m, TSR_ROUTING_LOAD);
    assert_int_equal(tsr_routing_parse("cache", &m), 0);
    assert_int_equal(m, TSR_ROUTING_CACHE);
    assert_int_not_equal(tsr_routing_parse("round-robin", &m), 0);
    tsr_router_free(r);
}

static void test_avoid(void **state)
{
    tsr_router_t *r = tsr_router_new();
    assert_int_equal(tsr_router_upsert(r, "a", "127.0.0.1:1", 1), 0);
    tsr_route_t *x = tsr_router_pick(r, 5, NULL, NULL, NULL);
    assert_null(tsr_router_pick(r, 5, NULL, x, NULL)); /* the only group is the avoided one */
    assert_int_equal(load_of(r, "a"), 5);              /* and a failed pick adds no load */
    assert_int_equal(tsr_router_upsert(r, "b", "127.0.0.1:2", 1), 0);
    tsr_route_t *y = tsr_router_pick(r, 1000, NULL, NULL, NULL); /* b: the least loaded */
    assert_string_equal(tsr_route_name(y), "b");
    tsr_route_t *z = tsr_router_pick(r, 1, NULL, y, NULL); /* a anyway, as b is avoided */
    assert_string_equal(tsr_route_name(z), "a");
    tsr_route_release(r, z, 1);
    z = tsr_router_pick(r, 1, NULL, x, NULL); /* b, though more loaded, as a is avoided */
    assert_string_equal(tsr_route_name(z), "b");
    tsr_route_release(r, z, 1);
    tsr_route_release(r, y, 1000);
    tsr_route_release(r, x, 5);
    tsr_router_free(r);
}

/* A group that leaves routing is dead to the requests that hold it, which can still read it and
 * release it (the route lives until its last reference: ASan checks the frees). */
static void test_groups_leave(void **state)
{
    tsr_router_t *r = tsr_router_new();
    assert_int_equal(tsr_router_upsert(r, "a", "127.0.0.1:1", 1), 0);
    assert_int_equal(tsr_router_upsert(r, "b", "127.0.0.1:2", 1), 0);
    assert_int_equal(tsr_router_upsert(r, "c", "127.0.0.1:3", 1), 0);
    tsr_route_t *held[3];
    for (int i = 0; i < 3; i++) held[i] = tsr_router_pick(r, 10, NULL, NULL, NULL);
    tsr_route_t *a = NULL, *b = NULL, *c = NULL;
    for (int i = 0; i < 3; i++) {
        const char *n = tsr_route_name(held[i]);
        if (!strcmp(n, "a")) a = held[i];
        if (!strcmp(n, "b")) b = held[i];
        if (!strcmp(n, "c")) c = held[i];
    }
    assert_true(a && b && c); /* equal loads spread over all three */

    /* the same generation and address again: nothing changes */
    assert_int_equal(tsr_router_upsert(r, "a", "127.0.0.1:1", 1), 0);
    assert_true(tsr_route_alive(r, a));
    assert_int_equal(load_of(r, "a"), 10);

    /* a new generation replaces the group: requests on the old one see it dead */
    assert_int_equal(tsr_router_upsert(r, "a", "127.0.0.1:11", 2), 0);
    assert_false(tsr_route_alive(r, a));
    assert_string_equal(tsr_route_addr(a), "127.0.0.1:1");
    assert_int_equal(load_of(r, "a"), 0);
    struct tsr_route_info info[4];
    assert_int_equal(tsr_router_list(r, info, 4), 3);
    /* so does a new address in the same generation */
    tsr_route_t *a2 = tsr_router_pick(r, 1, NULL, NULL, NULL);
    assert_string_equal(tsr_route_name(a2), "a");
    assert_string_equal(tsr_route_addr(a2), "127.0.0.1:11");
    assert_int_equal(tsr_router_upsert(r, "a", "127.0.0.1:12", 2), 0);
    assert_false(tsr_route_alive(r, a2));

    tsr_router_remove(r, "b");
    assert_false(tsr_route_alive(r, b));
    assert_true(tsr_route_alive(r, c));
    assert_int_equal(tsr_router_n_ready(r), 2);
    assert_int_equal(load_of(r, "b"), -1);

    /* after a re-listing only "a" is left */
    const char *keep[] = {"a", "zz"};
    tsr_router_retain(r, keep, 2);
    assert_false(tsr_route_alive(r, c));
    assert_int_equal(tsr_router_n_ready(r), 1);
    for (int k = 0; k < 5; k++) {
        tsr_route_t *g = tsr_router_pick(r, 1, NULL, NULL, NULL);
        assert_string_equal(tsr_route_name(g), "a");
        assert_true(tsr_route_alive(r, g));
        tsr_route_release(r, g, 1);
    }
    /* the dead routes are still readable until released */
    assert_string_equal(tsr_route_name(b), "b");
    for (int i = 0; i < 3; i++) tsr_route_release(r, held[i], 10);
    tsr_route_release(r, a2, 1);
    tsr_router_retain(r, NULL, 0);
    assert_int_equal(tsr_router_n_ready(r), 0);
    assert_null(tsr_router_pick(r, 1, NULL, NULL, NULL));
    tsr_router_free(r);
}

static void test_snapshot(void **state)
{
    tsr_router_t *r = tsr_router_new();
    char name[16], addr[32];
    for (int i = 0; i < 5; i++) {
        snprintf(name, sizeof name, "g%d", i);
        snprintf(addr, sizeof addr, "10.0.0.%d:50051", i);
        assert_int_equal(tsr_router_upsert(r, name, addr, 100 + i), 0);
    }
    struct tsr_route_info info[5];
    assert_int_equal(tsr_router_list(r, info, 2), 5); /* how many there are, cap or not */
    assert_int_equal(tsr_router_list(r, info, 5), 5);
    int seen = 0;
    for (int i = 0; i < 5; i++) {
        int k = info[i].group[1] - '0';
        assert_true(k >= 0 && k < 5);
        seen |= 1 << k;
        snprintf(addr, sizeof addr, "10.0.0.%d:50051", k);
        assert_string_equal(info[i].addr, addr);
        assert_int_equal(info[i].generation, 100 + k);
        assert_int_equal(info[i].outstanding, 0);
    }
    assert_int_equal(seen, 31);
    tsr_router_free(r);
}

struct later {
    tsr_router_t *r;
    int delay_ms;
};

static void *upsert_later(void *p)
{
    struct later *l = p;
    usleep((useconds_t)l->delay_ms * 1000);
    tsr_router_upsert(l->r, "late", "127.0.0.1:9", 1);
    return NULL;
}

/* A waiter wakes when a group becomes ready, not at its deadline. */
static void test_wait_ready_wakes(void **state)
{
    tsr_router_t *r = tsr_router_new();
    struct later l = {r, 100};
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, upsert_later, &l), 0);
    double t0 = tsr_now();
    assert_int_equal(tsr_router_wait_ready(r, 20000), 1);
    double dt = tsr_now() - t0;
    pthread_join(th, NULL);
    assert_true(dt >= 0.09 && dt < 10);
    assert_int_equal(tsr_router_wait_ready(r, 0), 1); /* ready already: no wait */
    tsr_router_free(r);
}

/* A draining group keeps its requests (alive) but takes no new ones and is not counted ready; a
 * drain for another generation changes nothing. */
static void test_group_drains(void **state)
{
    (void)state;
    tsr_router_t *r = tsr_router_new();
    assert_int_equal(tsr_router_upsert(r, "a", "127.0.0.1:1", 1), 0);
    assert_int_equal(tsr_router_upsert(r, "b", "127.0.0.1:2", 1), 0);
    tsr_route_t *held = tsr_router_pick(r, 5, NULL, NULL, NULL);
    const char *name = tsr_route_name(held);
    tsr_router_drain(r, name, 2); /* another generation */
    assert_int_equal(tsr_router_n_ready(r), 2);
    tsr_router_drain(r, name, 1);
    assert_true(tsr_route_alive(r, held));
    assert_int_equal(tsr_router_n_ready(r), 1);
    assert_int_equal(tsr_router_wait_ready(r, 0), 1);
    struct tsr_route_info info[4];
    assert_int_equal(tsr_router_list(r, info, 4), 1);
    assert_string_not_equal(info[0].group, name);
    for (int i = 0; i < 4; i++) { /* the least loaded is the draining one: never picked */
        tsr_route_t *g = tsr_router_pick(r, 1, NULL, NULL, NULL);
        assert_string_not_equal(tsr_route_name(g), name);
        tsr_route_release(r, g, 1);
    }
    tsr_router_drain(r, info[0].group, 1); /* both drain: nothing to pick */
    assert_null(tsr_router_pick(r, 1, NULL, NULL, NULL));
    assert_int_equal(tsr_router_n_ready(r), 0);
    tsr_router_remove(r, name); /* then it leaves: its request sees it dead */
    assert_false(tsr_route_alive(r, held));
    tsr_route_release(r, held, 5);
    tsr_router_free(r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_empty),        cmocka_unit_test(test_least_loaded),
        cmocka_unit_test(test_cache_aware),  cmocka_unit_test(test_avoid),
        cmocka_unit_test(test_groups_leave), cmocka_unit_test(test_group_drains),
        cmocka_unit_test(test_snapshot),     cmocka_unit_test(test_wait_ready_wakes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
