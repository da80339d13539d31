/* The coordinator's cluster view as a unit (coordinator/cluster.c) against a real etcd (started
 * here; a missing etcd fails, as in test_etcd): the router follows P/ready/ (listed at start,
 * then watched: new groups, new generations, deletes, lease expiry, malformed values ignored);
 * the controller assigns each registered worker unit of the right shape to its own group on the
 * worker's lease, re-assigns a re-registered worker (a new generation), refuses other shapes;
 * and of two coordinators exactly one is the controller, the other taking over when it stops.
 * Waits are polls on the awaited state with a 10 s deadline, never fixed sleeps. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/etcd.h"
#include "common/log.h"
#include "common/status.h"
#include "coordinator/cluster.h"
#include "coordinator/router.h"

static char tmpdir[] = "/tmp/tsr-cluster-test-XXXXXX";
static struct tsr_etcd_server srv;
static tsr_etcd_t *etcd;

#define WAIT(cond)                                                                                 \
    do {                                                                                           \
        double end_ = tsr_now() + 10;                                                              \
        while (!(cond) && tsr_now() < end_) usleep(10 * 1000);                                     \
        if (!(cond)) fail_msg("waited 10 s for %s", #cond);                                        \
    } while (0)

static int64_t put(const char *key, const char *val, int64_t lease)
{
    int64_t rev;
    assert_int_equal(tsr_etcd_put(etcd, key, val, strlen(val), lease, &rev), 0);
    return rev;
}

/* The value at key, or NULL (caller frees). */
static char *get(const char *key)
{
    char *val = NULL;
    return tsr_etcd_get(etcd, key, &val, NULL, NULL) ? NULL : val;
}

static int has(const char *key, const char *want)
{
    char *v = get(key);
    int ok = v && (!want || !strcmp(v, want));
    free(v);
    return ok;
}

static int64_t generation_of(tsr_router_t *r, const char *group)
{
    struct tsr_route_info info[8];
    int n = tsr_router_list(r, info, 8);
    for (int i = 0; i < n && i < 8; i++)
        if (!strcmp(info[i].group, group)) return info[i].generation;
    return -1;
}

static tsr_cluster_t *start(tsr_router_t *r, const char *prefix, const char *id)
{
    struct tsr_cluster_opts o = {.prefix = prefix, .id = id, .tp = 1, .pp = 1, .ttl_s = 2};
    tsr_cluster_t *c;
    assert_int_equal(tsr_cluster_start(etcd, r, &o, &c), 0);
    return c;
}

static void test_router_feed(void **state)
{
    put("/rf/ready/g1", "{\"addr\": \"127.0.0.1:1\", \"generation\": 5, \"worker\": \"w1\"}", 0);
    put("/rf/ready/bad", "not json", 0);
    put("/rf/ready/nogen", "{\"addr\": \"127.0.0.1:3\"}", 0);
    put("/rfx/ready/other", "{\"addr\": \"127.0.0.1:4\", \"generation\": 1}", 0);
    tsr_router_t *r = tsr_router_new();
    tsr_cluster_t *c = start(r, "/rf", "coord-a");
    /* listed at start: only the well-formed group under this prefix */
    assert_int_equal(tsr_router_n_ready(r), 1);
    assert_int_equal(generation_of(r, "g1"), 5);

    /* watched: a new group */
    put("/rf/ready/g2", "{\"addr\": \"127.0.0.1:2\", \"generation\": 7, \"worker\": \"w2\"}", 0);
    WAIT(tsr_router_n_ready(r) == 2);
    assert_int_equal(generation_of(r, "g2"), 7);

    /* a new generation of g1: a request holding the old one sees it dead */
    tsr_route_t *held = NULL;
    for (int i = 0; i < 2 && !(held && !strcmp(tsr_route_name(held), "g1")); i++) {
        if (held) tsr_route_release(r, held, 0);
        held = tsr_router_pick(r, i ? 0 : 1000, NULL, NULL, NULL);
    }
    assert_string_equal(tsr_route_name(held), "g1");
    put("/rf/ready/g1", "{\"addr\": \"127.0.0.1:11\", \"generation\": 6, \"worker\": \"w1\"}", 0);
    WAIT(!tsr_route_alive(r, held));
    WAIT(generation_of(r, "g1") == 6);
    tsr_route_release(r, held, 0);

    /* a malformed update is ignored (the group stays as it was) */
    put("/rf/ready/g2", "{\"generation\": 8}", 0);
    /* deleted: the group leaves routing */
    assert_int_equal(tsr_etcd_delete(etcd, "/rf/ready/g1", 0), 0);
    WAIT(generation_of(r, "g1") == -1);
    assert_int_equal(generation_of(r, "g2"), 7); /* the malformed put came before the delete */

    /* a ready key on a lease that ends: the group leaves */
    int64_t lease;
    assert_int_equal(tsr_etcd_lease_grant(etcd, 5, &lease), 0);
    put("/rf/ready/g3", "{\"addr\": \"127.0.0.1:5\", \"generation\": 9}", lease);
    WAIT(generation_of(r, "g3") == 9);
    assert_int_equal(tsr_etcd_lease_revoke(etcd, lease), 0);
    WAIT(generation_of(r, "g3") == -1);
    assert_int_equal(tsr_router_n_ready(r), 1);

    tsr_cluster_stop(c);
    tsr_router_free(r);
}

static void test_controller_assigns(void **state)
{
    tsr_router_t *r = tsr_router_new();
    int64_t lease, lease_bad;
    assert_int_equal(tsr_etcd_lease_grant(etcd, 30, &lease), 0);
    assert_int_equal(tsr_etcd_lease_grant(etcd, 30, &lease_bad), 0);
    /* another shape first: the pass that assigns w1 has considered it */
    put("/ca/workers/wbad",
        "{\"addr\": \"127.0.0.1:8\", \"ranks\": 2, \"tp\": 2, \"pp\": 1, \"model\": \"m\", "
        "\"pid\": 2}",
        lease_bad);
    int64_t gen = put("/ca/workers/w1",
                      "{\"addr\": \"127.0.0.1:7\", \"ranks\": 1, \"tp\": 1, \"pp\": 1, "
                      "\"model\": \"m\", \"pid\": 1}",
                      lease);
    tsr_cluster_t *c = start(r, "/ca", "coord-a");
    WAIT(has("/ca/controller", "coord-a"));
    char want[256];
    snprintf(want, sizeof want, "{\"group\":\"g-w1\",\"generation\":%lld}", (long long)gen);
    WAIT(has("/ca/assign/w1", want));
    snprintf(want, sizeof want, "{\"members\":[\"w1\"],\"tp\":1,\"pp\":1,\"generation\":%lld}",
             (long long)gen);
    assert_true(has("/ca/groups/g-w1", want));
    assert_false(has("/ca/assign/wbad", NULL));
    assert_false(has("/ca/groups/g-wbad", NULL));

    /* the worker re-registers (a restart): a new generation is assigned */
    int64_t gen2 = put("/ca/workers/w1",
                       "{\"addr\": \"127.0.0.1:7\", \"ranks\": 1, \"tp\": 1, \"pp\": 1, "
                       "\"model\": \"m\", \"pid\": 3}",
                       lease);
    assert_true(gen2 > gen);
    snprintf(want, sizeof want, "{\"group\":\"g-w1\",\"generation\":%lld}", (long long)gen2);
    WAIT(has("/ca/assign/w1", want));

    /* the plan lives on the worker's lease: the worker gone, its keys go too */
    assert_int_equal(tsr_etcd_lease_revoke(etcd, lease), 0);
    assert_false(has("/ca/assign/w1", NULL));
    assert_false(has("/ca/groups/g-w1", NULL));
    assert_false(has("/ca/workers/w1", NULL));
    assert_false(has("/ca/assign/wbad", NULL));

    tsr_cluster_stop(c);
    /* stopping hands the controller role back at once (the lease is revoked) */
    assert_false(has("/ca/controller", NULL));
    tsr_etcd_lease_revoke(etcd, lease_bad);
    tsr_router_free(r);
}

/* Two coordinators: one controller; when it stops, the other takes over and plans. */
static void test_controller_failover(void **state)
{
    tsr_router_t *ra = tsr_router_new(), *rb = tsr_router_new();
    tsr_cluster_t *a = start(ra, "/fo", "coord-a");
    WAIT(has("/fo/controller", "coord-a"));
    tsr_cluster_t *b = start(rb, "/fo", "coord-b");
    int64_t lease;
    assert_int_equal(tsr_etcd_lease_grant(etcd, 30, &lease), 0);
    int64_t gen = put("/fo/workers/w1",
                      "{\"addr\": \"127.0.0.1:7\", \"ranks\": 1, \"tp\": 1, \"pp\": 1, "
                      "\"model\": \"m\", \"pid\": 1}",
                      lease);
    char want[256];
    snprintf(want, sizeof want, "{\"group\":\"g-w1\",\"generation\":%lld}", (long long)gen);
    WAIT(has("/fo/assign/w1", want));
    assert_true(has("/fo/controller", "coord-a")); /* b did not take the role */

    /* both routers follow the same ready groups */
    put("/fo/ready/g-w1", "{\"addr\": \"127.0.0.1:7\", \"generation\": 1}", lease);
    WAIT(tsr_router_n_ready(ra) == 1 && tsr_router_n_ready(rb) == 1);

    tsr_cluster_stop(a);
    WAIT(has("/fo/controller", "coord-b"));
    int64_t gen2 = put("/fo/workers/w2",
                       "{\"addr\": \"127.0.0.1:9\", \"ranks\": 1, \"tp\": 1, \"pp\": 1, "
                       "\"model\": \"m\", \"pid\": 2}",
                       lease);
    snprintf(want, sizeof want, "{\"group\":\"g-w2\",\"generation\":%lld}", (long long)gen2);
    WAIT(has("/fo/assign/w2", want));
    tsr_cluster_stop(b);
    tsr_etcd_lease_revoke(etcd, lease);
    tsr_router_free(ra);
    tsr_router_free(rb);
}

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    return remove(path);
}

static int teardown(void **state)
{
    tsr_etcd_close(etcd);
    tsr_etcd_server_stop(&srv);
    nftw(tmpdir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    return 0;
}

static int setup(void **state)
{
    if (!mkdtemp(tmpdir)) return -1;
    if (tsr_etcd_server_start(tmpdir, &srv) || tsr_etcd_open(srv.endpoint, &etcd)) {
        fprintf(stderr, "cannot start etcd: %s\n", tsr_last_error());
        teardown(state);
        return -1;
    }
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_router_feed),
        cmocka_unit_test(test_controller_assigns),
        cmocka_unit_test(test_controller_failover),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
