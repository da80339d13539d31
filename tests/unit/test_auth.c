/* common/auth: the API key's sources and checks, the Bearer comparison, the TLS files; and
 * common/rpc over TLS with certificates openssl makes here (skipped, exit 77, without openssl):
 * a CA, a pinned certificate, mutual TLS, the key in metadata. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "common/auth.h"
#include "common/rpc.h"
#include "common/status.h"
#include "unit.h"

static char dir[] = "/tmp/tsr-auth-XXXXXX";

static const char *write_file(const char *name, const char *text)
{
    static char path[128];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
    return path;
}

static int hdr_ok(const char *key, const char *h)
{
    return tsr_auth_bearer_ok(key, h, h ? strlen(h) : 0);
}

static void test_bearer(void **state)
{
    assert_true(hdr_ok("k3y-abc", "Bearer k3y-abc"));
    assert_true(hdr_ok("k3y-abc", "bearer k3y-abc")); /* the scheme is case-insensitive */
    assert_false(hdr_ok("k3y-abc", "Bearer k3y-abd"));
    assert_false(hdr_ok("k3y-abc", "Bearer k3y-ab"));   /* a prefix of the key */
    assert_false(hdr_ok("k3y-abc", "Bearer k3y-abcd")); /* the key and more */
    assert_false(hdr_ok("k3y-abc", "Bearer "));
    assert_false(hdr_ok("k3y-abc", "k3y-abc")); /* no scheme */
    assert_false(hdr_ok("k3y-abc", "Basic k3y-abc"));
    assert_false(hdr_ok("k3y-abc", NULL));
    /* bytes past len are not read as part of the header */
    assert_false(tsr_auth_bearer_ok("k3y-abc", "Bearer k3y-abc", 13));
    assert_true(hdr_ok(NULL, NULL)); /* no key set: open */
}

static void test_key_sources(void **state)
{
    char *k = NULL;
    unsetenv("TESSERA_API_KEY");
    assert_int_equal(tsr_auth_key_load(NULL, NULL, &k), 0);
    assert_null(k);
    setenv("TESSERA_API_KEY", "from-env", 1);
    assert_int_equal(tsr_auth_key_load(NULL, NULL, &k), 0);
    assert_string_equal(k, "from-env");
    free(k);
    assert_int_equal(tsr_auth_key_load(NULL, "from-flag", &k), 0); /* the flag beats the env */
    assert_string_equal(k, "from-flag");
    free(k);
    const char *f = write_file("key", "  from-file \n# a comment line is ignored\n");
    assert_int_equal(tsr_auth_key_load(f, "from-flag", &k), 0); /* the file beats both */
    assert_string_equal(k, "from-file");
    free(k);
    unsetenv("TESSERA_API_KEY");
}

static void test_bad_keys(void **state)
{
    char *k = (char *)1;
    assert_int_equal(tsr_auth_key_load(write_file("empty", "\n\n"), NULL, &k), TSR_EINVAL);
    assert_null(k);
    assert_non_null(strstr(tsr_last_error(), "empty"));
    assert_int_equal(tsr_auth_key_load(write_file("space", "two words\n"), NULL, &k), TSR_EINVAL);
    assert_null(strstr(tsr_last_error(), "two words")); /* the message never holds the key */
    assert_int_equal(tsr_auth_key_load("/nonexistent/key", NULL, &k), TSR_EINVAL);
    assert_non_null(strstr(tsr_last_error(), "/nonexistent/key"));
    assert_int_equal(tsr_auth_key_load(NULL, "", &k), TSR_EINVAL);
    assert_int_equal(tsr_auth_key_load(NULL, "tab\there", &k), TSR_EINVAL);
    assert_null(strstr(tsr_last_error(), "tab"));
    assert_int_equal(tsr_auth_key_load(dir, NULL, &k), TSR_EINVAL); /* a directory */
}

static void test_tls_pairs(void **state)
{
    struct tsr_tls_files t;
    assert_int_equal(tsr_tls_files_load(NULL, NULL, NULL, &t), 0);
    assert_null(t.cert_pem);
    assert_int_equal(tsr_tls_files_load("c.pem", NULL, NULL, &t), TSR_EINVAL);
    assert_non_null(strstr(tsr_last_error(), "--tls-cert needs --tls-key"));
    assert_int_equal(tsr_tls_files_load(NULL, NULL, "ca.pem", &t), TSR_EINVAL);
    const char *junk = write_file("junk.pem", "not a certificate\n");
    char path[128];
    snprintf(path, sizeof path, "%s", junk);
    assert_int_equal(tsr_tls_files_load(path, path, NULL, &t), TSR_EINVAL);
    assert_non_null(strstr(tsr_last_error(), "no PEM certificate"));
    assert_null(t.cert_pem);
}

/* ---- common/rpc over TLS ---- */

static int have_certs;

static int sh(const char *cmd)
{
    char full[1024];
    snprintf(full, sizeof full, "cd %s && (%s) >/dev/null 2>&1", dir, cmd);
    return system(full);
}

static void make_certs(void)
{
    if (system("command -v openssl >/dev/null 2>&1")) return;
    const char *ec = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
    char cmd[512];
    int rc = 0;
    for (int i = 0; i < 2; i++) {
        const char *ca = i ? "other" : "ca";
        snprintf(cmd, sizeof cmd,
                 "openssl req -x509 %s -keyout %s.key -out %s.pem -days 1 -subj /CN=%s", ec, ca, ca,
                 ca);
        rc |= sh(cmd);
    }
    rc |= sh("echo subjectAltName=IP:127.0.0.1 > san.ext");
    for (int i = 0; i < 2; i++) {
        const char *n = i ? "client" : "server";
        snprintf(
            cmd, sizeof cmd,
            "openssl req %s -keyout %s.key -out %s.csr -subj /O=%s && openssl x509 -req -in "
            "%s.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out %s.pem -days 1 -extfile san.ext",
            ec, n, n, n, n, n);
        rc |= sh(cmd);
    }
    have_certs = rc == 0;
}

static char *pem(const char *name)
{
    char path[128];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    char *out = NULL;
    assert_int_equal(tsr_tls_read_certs(name, path, &out), 0);
    return out;
}

static void keyed_echo(tsr_rpc_call_t *call, void *arg)
{
    const char *v;
    size_t n;
    int ok = tsr_rpc_call_metadata(call, "authorization", &v, &n) && tsr_auth_bearer_ok("k", v, n);
    tsr_rpc_call_finish(call, ok ? TSR_RPC_OK : TSR_RPC_UNAUTHENTICATED, NULL);
}

/* The status of one call to port over a channel made with o. */
static int call_with(int port, const struct tsr_rpc_channel_opts *o)
{
    char addr[64];
    snprintf(addr, sizeof addr, "127.0.0.1:%d", port);
    tsr_rpc_channel_t *ch = tsr_rpc_channel_new_opts(addr, o);
    assert_non_null(ch);
    tsr_rpc_stream_t *s;
    assert_int_equal(tsr_rpc_stream_open(ch, "/t.T/Echo", "x", 1, 5000, &s), 0);
    const void *m;
    size_t len;
    while (tsr_rpc_stream_recv(s, &m, &len, -1) == 0) {
    }
    const char *det;
    int code = tsr_rpc_stream_status(s, &det);
    if (getenv("TSR_TEST_VERBOSE")) fprintf(stderr, "call: %d %s\n", code, det);
    tsr_rpc_stream_free(s);
    tsr_rpc_channel_free(ch);
    return code;
}

static void test_rpc_tls(void **state)
{
    if (!have_certs) {
        fprintf(stderr, "skipped: openssl could not make test certificates\n");
        tsr_test_n_skipped++;
        return;
    }
    char cert[128], key[128], ca_path[128], ckey[128];
    snprintf(cert, sizeof cert, "%s/server.pem", dir);
    snprintf(key, sizeof key, "%s/server.key", dir);
    snprintf(ca_path, sizeof ca_path, "%s/ca.pem", dir);
    snprintf(ckey, sizeof ckey, "%s/client.key", dir);
    struct tsr_tls_files t;
    assert_int_equal(tsr_tls_files_load(cert, ckey, NULL, &t), TSR_EINVAL);
    assert_non_null(strstr(tsr_last_error(), "is not the key of"));
    char *ca = pem("ca.pem"), *other = pem("other.pem"), *server = pem("server.pem"),
         *client = pem("client.pem");
    struct tsr_tls_files cl;
    char ccert[128];
    snprintf(ccert, sizeof ccert, "%s/client.pem", dir);
    assert_int_equal(tsr_tls_files_load(ccert, ckey, NULL, &cl), 0);
    const struct tsr_rpc_method m[] = {{"/t.T/Echo", keyed_echo, NULL}};
    for (int mutual = 0; mutual < 2; mutual++) {
        assert_int_equal(tsr_tls_files_load(cert, key, mutual ? ca_path : NULL, &t), 0);
        tsr_rpc_server_t *srv;
        int port;
        assert_int_equal(tsr_rpc_server_start_tls("127.0.0.1:0", m, 1, 8, &t, &srv, &port), 0);
        const char *cc = mutual ? cl.cert_pem : NULL, *ck = mutual ? cl.key_pem : NULL;
        struct tsr_rpc_channel_opts o = {
            .ca_pem = ca, .cert_pem = cc, .key_pem = ck, .api_key = "k"};
        assert_int_equal(call_with(port, &o), TSR_RPC_OK);
        o.api_key = "wrong";
        assert_int_equal(call_with(port, &o), TSR_RPC_UNAUTHENTICATED);
        o.api_key = NULL;
        assert_int_equal(call_with(port, &o), TSR_RPC_UNAUTHENTICATED);
        o = (struct tsr_rpc_channel_opts){.ca_pem = other, .cert_pem = cc, .key_pem = ck};
        assert_int_equal(call_with(port, &o), TSR_RPC_UNAVAILABLE);   /* another CA */
        assert_int_equal(call_with(port, NULL), TSR_RPC_UNAVAILABLE); /* plain text */
        o = (struct tsr_rpc_channel_opts){
            .pin_pem = server, .cert_pem = cc, .key_pem = ck, .api_key = "k"};
        assert_int_equal(call_with(port, &o), TSR_RPC_OK);
        o.pin_pem = client; /* the CA signed it too, but it is not the server's */
        assert_int_equal(call_with(port, &o), TSR_RPC_UNAVAILABLE);
        if (mutual) { /* no client certificate: refused at the handshake */
            o = (struct tsr_rpc_channel_opts){.ca_pem = ca, .api_key = "k"};
            assert_int_equal(call_with(port, &o), TSR_RPC_UNAVAILABLE);
        }
        tsr_rpc_server_stop(srv);
        tsr_tls_files_free(&t);
    }
    tsr_tls_files_free(&cl);
    free(ca);
    free(other);
    free(server);
    free(client);
}

int main(void)
{
    if (!mkdtemp(dir)) return 1;
    make_certs();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bearer),   cmocka_unit_test(test_key_sources),
        cmocka_unit_test(test_bad_keys), cmocka_unit_test(test_tls_pairs),
        cmocka_unit_test(test_rpc_tls),
    };
    int failed = cmocka_run_group_tests(tests, NULL, NULL);
    char cmd[64];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    if (system(cmd)) return 1;
    return tsr_test_exit(failed);
}
