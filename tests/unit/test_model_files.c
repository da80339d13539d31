/* Model files: error messages compose without aliasing (tsr_error_prefix), and what a bad file
 * gets is one clear error. The malformed-model suite (tests/cli/test_malformed_models.sh) runs
 * the same classes through the CLI; these check the library's exact texts. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "common/status.h"

/* The message of a nested error reads outermost context first, each piece once, whatever the
 * lengths: formatting a buffer into itself printed "P: P: s" here. */
static void test_error_prefix_nested(void **state)
{
    (void)state;
    int rc = tsr_errorf(TSR_EFORMAT, "config: %d heads do not divide into %d KV heads", 9, 2);
    assert_int_equal(tsr_error_prefix(rc, "%s", "/models/x.gguf"), TSR_EFORMAT);
    assert_int_equal(tsr_error_prefix(rc, "plan"), TSR_EFORMAT);
    assert_string_equal(tsr_last_error(),
                        "plan: /models/x.gguf: config: 9 heads do not divide into 2 KV heads");
    /* The context may itself quote the last message. */
    tsr_errorf(TSR_EIO, "inner");
    tsr_error_prefix(TSR_EIO, "[%s]", tsr_last_error());
    assert_string_equal(tsr_last_error(), "[inner]: inner");
    /* Too long for the buffer: cut at the end, the start intact. */
    char big[2000];
    memset(big, 'p', sizeof big - 1);
    big[sizeof big - 1] = 0;
    tsr_errorf(TSR_EIO, "why");
    tsr_error_prefix(TSR_EIO, "%s", big);
    assert_int_equal(strlen(tsr_last_error()), 1023);
    assert_int_equal(tsr_last_error()[0], 'p');
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_error_prefix_nested),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
