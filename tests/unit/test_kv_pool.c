/* The KV block pool: allocation order, exhaustion, reference counts. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

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

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_alloc_until_empty),
        cmocka_unit_test(test_refcounts),
        cmocka_unit_test(test_bad_sizes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
