/* common/net: HOST:PORT parsing and the advertised address (DESIGN §1: a bind address and an
 * advertised one, never a wildcard, always one of this host's). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "common/net.h"
#include "common/status.h"

static void test_split_join(void **state)
{
    (void)state;
    char host[TSR_HOST_MAX], out[TSR_HOST_MAX + 8];
    int port;
    assert_int_equal(tsr_net_split("10.1.2.3:50051", host, sizeof host, &port), 0);
    assert_string_equal(host, "10.1.2.3");
    assert_int_equal(port, 50051);
    assert_int_equal(tsr_net_split("[fd00::1]:0", host, sizeof host, &port), 0);
    assert_string_equal(host, "fd00::1");
    assert_int_equal(port, 0);
    assert_int_equal(tsr_net_split("node-7.cluster.local:1", host, sizeof host, &port), 0);
    assert_string_equal(host, "node-7.cluster.local");
    const char *bad[] = {"", "host", ":80", "h:", "h:65536", "h:-1", "h:8x", "fd00::1:80",
                         "[fd00::1]80", "[fd00::1"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        assert_int_equal(tsr_net_split(bad[i], host, sizeof host, &port), TSR_EINVAL);
        assert_non_null(strstr(tsr_last_error(), "is not HOST:PORT"));
    }
    tsr_net_join("fd00::1", 80, out, sizeof out);
    assert_string_equal(out, "[fd00::1]:80");
    tsr_net_join("10.0.0.1", 80, out, sizeof out);
    assert_string_equal(out, "10.0.0.1:80");
}

static void test_local(void **state)
{
    (void)state;
    assert_true(tsr_net_is_local("127.0.0.1"));
    assert_true(tsr_net_is_local("localhost"));
    assert_true(tsr_net_is_local("0.0.0.0"));
    /* benchmark-testing range (RFC 2544): no interface here has it */
    assert_false(tsr_net_is_local("198.18.255.254"));
    assert_false(tsr_net_is_local("no-such-host.invalid"));
}

static void test_advertise(void **state)
{
    (void)state;
    char out[TSR_HOST_MAX];
    /* bound to one address: that one, loopback included */
    assert_int_equal(tsr_net_advertise("127.0.0.1", NULL, out, sizeof out), 0);
    assert_string_equal(out, "127.0.0.1");
    assert_int_equal(tsr_net_advertise("0.0.0.0", "127.0.0.1", out, sizeof out), 0);
    assert_string_equal(out, "127.0.0.1");
    assert_int_equal(tsr_net_advertise("0.0.0.0", "198.18.255.254", out, sizeof out), TSR_EINVAL);
    assert_string_equal(tsr_last_error(), "--advertise-address 198.18.255.254 is not an address "
                                          "of this host (see `ip addr`)");
    assert_int_equal(tsr_net_advertise("127.0.0.1", "0.0.0.0", out, sizeof out), TSR_EINVAL);
    assert_non_null(strstr(tsr_last_error(), "is a wildcard"));
    /* a wildcard bind: a routable address of this host, never loopback or a wildcard; or, on a
     * host with loopback only, an error that says what to pass */
    int rc = tsr_net_advertise("0.0.0.0", "", out, sizeof out);
    if (rc == 0) {
        assert_true(tsr_net_is_local(out));
        assert_true(strcmp(out, "0.0.0.0") && strncmp(out, "127.", 4));
    } else {
        assert_int_equal(rc, TSR_EINVAL);
        assert_non_null(strstr(tsr_last_error(), "pass --advertise-address"));
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_split_join),
        cmocka_unit_test(test_local),
        cmocka_unit_test(test_advertise),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
