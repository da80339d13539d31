/* common/rpc over loopback: unary and streaming calls, status codes, cancellation seen by the
 * server, deadlines, an unreachable server, and a server stopped with calls in flight. */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "common/log.h"
#include "common/rpc.h"
#include "common/status.h"

static volatile int saw_cancel;

static void echo(tsr_rpc_call_t *call, void *arg)
{
    size_t n;
    const void *req = tsr_rpc_call_request(call, &n);
    tsr_rpc_call_send(call, req, n);
    tsr_rpc_call_finish(call, TSR_RPC_OK, NULL);
}

/* Streams the numbers 0..n-1 (n: the request's first byte times 10), then fails on purpose when
 * the request's second byte is set. */
static void count(tsr_rpc_call_t *call, void *arg)
{
    size_t n;
    const uint8_t *req = tsr_rpc_call_request(call, &n);
    int total = n ? req[0] * 10 : 0;
    for (int i = 0; i < total; i++) {
        char msg[16];
        int len = snprintf(msg, sizeof msg, "%d", i);
        if (tsr_rpc_call_send(call, msg, (size_t)len)) return;
    }
    if (n > 1 && req[1])
        tsr_rpc_call_finish(call, TSR_RPC_INVALID_ARGUMENT, "asked to fail");
    else
        tsr_rpc_call_finish(call, TSR_RPC_OK, NULL);
}

/* Sends one message, then waits (up to 10 s) for the client to cancel. */
static void wait_cancel(tsr_rpc_call_t *call, void *arg)
{
    tsr_rpc_call_send(call, "x", 1);
    double t0 = tsr_now();
    while (tsr_now() - t0 < 10)
        if (tsr_rpc_call_cancelled(call, 50)) {
            saw_cancel = 1;
            break;
        }
    tsr_rpc_call_finish(call, TSR_RPC_OK, NULL);
}

static const struct tsr_rpc_method methods[] = {
    {"/t.T/Echo", echo, NULL},
    {"/t.T/Count", count, NULL},
    {"/t.T/WaitCancel", wait_cancel, NULL},
};

static tsr_rpc_server_t *srv;
static tsr_rpc_channel_t *ch;

static int setup(void **state)
{
    int port;
    if (tsr_rpc_server_start("127.0.0.1:0", methods, 3, 64, &srv, &port)) return -1;
    char addr[64];
    snprintf(addr, sizeof addr, "127.0.0.1:%d", port);
    ch = tsr_rpc_channel_new(addr);
    return ch ? 0 : -1;
}

static int teardown(void **state)
{
    tsr_rpc_channel_free(ch);
    tsr_rpc_server_stop(srv);
    return 0;
}

/* Runs a call with a raw request to its end: messages received and the status. */
static int run(const char *method, const void *req, size_t len, int64_t timeout_ms, int *n_msgs,
               char *last, const char **details_out)
{
    tsr_rpc_stream_t *s;
    assert_int_equal(tsr_rpc_stream_open(ch, method, req, len, timeout_ms, &s), 0);
    const void *msg;
    size_t n;
    int rc;
    *n_msgs = 0;
    while ((rc = tsr_rpc_stream_recv(s, &msg, &n, 5000)) == 0) {
        if (last) {
            memcpy(last, msg, n);
            last[n] = 0;
        }
        ++*n_msgs;
    }
    assert_int_equal(rc, 1);
    const char *d;
    int code = tsr_rpc_stream_status(s, &d);
    static char details[256];
    snprintf(details, sizeof details, "%s", d);
    if (details_out) *details_out = details;
    tsr_rpc_stream_free(s);
    return code;
}

static void test_unary_echo(void **state)
{
    int n;
    char last[64];
    assert_int_equal(run("/t.T/Echo", "hello", 5, 5000, &n, last, NULL), TSR_RPC_OK);
    assert_int_equal(n, 1);
    assert_string_equal(last, "hello");
    /* an empty message is a message too */
    assert_int_equal(run("/t.T/Echo", "", 0, 5000, &n, NULL, NULL), TSR_RPC_OK);
    assert_int_equal(n, 1);
}

static void test_stream_in_order(void **state)
{
    uint8_t req[2] = {50, 0};
    tsr_rpc_stream_t *s;
    assert_int_equal(tsr_rpc_stream_open(ch, "/t.T/Count", req, 2, 5000, &s), 0);
    const void *msg;
    size_t n;
    for (int i = 0; i < 500; i++) {
        assert_int_equal(tsr_rpc_stream_recv(s, &msg, &n, 5000), 0);
        char want[16];
        snprintf(want, sizeof want, "%d", i);
        assert_int_equal(n, strlen(want));
        assert_memory_equal(msg, want, n);
    }
    assert_int_equal(tsr_rpc_stream_recv(s, &msg, &n, 5000), 1);
    assert_int_equal(tsr_rpc_stream_status(s, NULL), TSR_RPC_OK);
    tsr_rpc_stream_free(s);
}

static void test_status_codes(void **state)
{
    int n;
    const char *d;
    uint8_t req[2] = {1, 1};
    assert_int_equal(run("/t.T/Count", req, 2, 5000, &n, NULL, &d), TSR_RPC_INVALID_ARGUMENT);
    assert_int_equal(n, 10);
    assert_string_equal(d, "asked to fail");
    assert_int_equal(run("/t.T/Nope", "", 0, 5000, &n, NULL, &d), TSR_RPC_UNIMPLEMENTED);
    assert_non_null(strstr(d, "/t.T/Nope"));
}

static void test_client_cancel_reaches_server(void **state)
{
    saw_cancel = 0;
    tsr_rpc_stream_t *s;
    assert_int_equal(tsr_rpc_stream_open(ch, "/t.T/WaitCancel", "", 0, 0, &s), 0);
    const void *msg;
    size_t n;
    assert_int_equal(tsr_rpc_stream_recv(s, &msg, &n, 5000), 0);
    /* nothing more comes until we cancel: the read times out and stays posted */
    assert_int_equal(tsr_rpc_stream_recv(s, &msg, &n, 100), TSR_ETIMEDOUT);
    double t0 = tsr_now();
    tsr_rpc_stream_cancel(s);
    assert_int_equal(tsr_rpc_stream_recv(s, &msg, &n, 5000), 1);
    assert_int_equal(tsr_rpc_stream_status(s, NULL), TSR_RPC_CANCELLED);
    tsr_rpc_stream_free(s);
    while (!saw_cancel && tsr_now() - t0 < 2) usleep(10000);
    assert_true(saw_cancel);
}

static void test_deadline(void **state)
{
    saw_cancel = 0;
    int n;
    double t0 = tsr_now();
    assert_int_equal(run("/t.T/WaitCancel", "", 0, 300, &n, NULL, NULL), TSR_RPC_DEADLINE_EXCEEDED);
    assert_true(tsr_now() - t0 < 3);
    while (!saw_cancel && tsr_now() - t0 < 3) usleep(10000);
    assert_true(saw_cancel); /* the server saw the deadline pass as a cancellation */
}

static void test_unreachable(void **state)
{
    /* a port nobody listens on: bind one, take its number, close it */
    tsr_rpc_server_t *tmp;
    int port;
    assert_int_equal(tsr_rpc_server_start("127.0.0.1:0", methods, 1, 4, &tmp, &port), 0);
    tsr_rpc_server_stop(tmp);
    char addr[64];
    snprintf(addr, sizeof addr, "127.0.0.1:%d", port);
    tsr_rpc_channel_t *c2 = tsr_rpc_channel_new(addr);
    tsr_rpc_stream_t *s;
    double t0 = tsr_now();
    assert_int_equal(tsr_rpc_stream_open(c2, "/t.T/Echo", "x", 1, 5000, &s), 0);
    const void *msg;
    size_t n;
    assert_int_equal(tsr_rpc_stream_recv(s, &msg, &n, -1), 1);
    assert_int_equal(tsr_rpc_stream_status(s, NULL), TSR_RPC_UNAVAILABLE);
    assert_true(tsr_now() - t0 < 3);
    tsr_rpc_stream_free(s);
    tsr_rpc_channel_free(c2);
    /* a port in use is an error at start */
    tsr_rpc_server_t *a, *b;
    assert_int_equal(tsr_rpc_server_start("127.0.0.1:0", methods, 1, 4, &a, &port), 0);
    snprintf(addr, sizeof addr, "127.0.0.1:%d", port);
    assert_int_equal(tsr_rpc_server_start(addr, methods, 1, 4, &b, NULL), TSR_EIO);
    tsr_rpc_server_stop(a);
}

static void test_stop_with_calls_in_flight(void **state)
{
    tsr_rpc_server_t *s2;
    int port;
    assert_int_equal(tsr_rpc_server_start("127.0.0.1:0", methods, 3, 64, &s2, &port), 0);
    char addr[64];
    snprintf(addr, sizeof addr, "127.0.0.1:%d", port);
    tsr_rpc_channel_t *c2 = tsr_rpc_channel_new(addr);
    tsr_rpc_stream_t *st[8];
    const void *msg;
    size_t n;
    for (int i = 0; i < 8; i++) {
        assert_int_equal(tsr_rpc_stream_open(c2, "/t.T/WaitCancel", "", 0, 0, &st[i]), 0);
        assert_int_equal(tsr_rpc_stream_recv(st[i], &msg, &n, 5000), 0);
    }
    double t0 = tsr_now();
    tsr_rpc_server_stop(s2); /* cancels the 8 handlers and waits for them */
    assert_true(tsr_now() - t0 < 2);
    for (int i = 0; i < 8; i++) {
        assert_int_equal(tsr_rpc_stream_recv(st[i], &msg, &n, 5000), 1);
        assert_int_not_equal(tsr_rpc_stream_status(st[i], NULL), TSR_RPC_OK);
        tsr_rpc_stream_free(st[i]);
    }
    tsr_rpc_channel_free(c2);
}

/* Many streams at once from several threads share one channel. */
static void *hammer(void *arg)
{
    for (int k = 0; k < 20; k++) {
        uint8_t req[2] = {2, 0};
        tsr_rpc_stream_t *s;
        if (tsr_rpc_stream_open(ch, "/t.T/Count", req, 2, 5000, &s)) return (void *)1;
        const void *msg;
        size_t n;
        int got = 0, rc;
        while ((rc = tsr_rpc_stream_recv(s, &msg, &n, 5000)) == 0) got++;
        int bad = rc != 1 || got != 20 || tsr_rpc_stream_status(s, NULL) != TSR_RPC_OK;
        tsr_rpc_stream_free(s);
        if (bad) return (void *)1;
    }
    return NULL;
}

static void test_concurrent_streams(void **state)
{
    pthread_t t[16];
    for (int i = 0; i < 16; i++) pthread_create(&t[i], NULL, hammer, NULL);
    for (int i = 0; i < 16; i++) {
        void *r;
        pthread_join(t[i], &r);
        assert_null(r);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_unary_echo),
        cmocka_unit_test(test_stream_in_order),
        cmocka_unit_test(test_status_codes),
        cmocka_unit_test(test_client_cancel_reaches_server),
        cmocka_unit_test(test_deadline),
        cmocka_unit_test(test_unreachable),
        cmocka_unit_test(test_stop_with_calls_in_flight),
        cmocka_unit_test(test_concurrent_streams),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
