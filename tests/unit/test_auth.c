/* common/auth: the API key's sources and checks, and the Bearer comparison. The TLS files are
 * checked with real certificates in tests/integration/test_security.py. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "common/auth.h"
#include "common/status.h"

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

int main(void)
{
    if (!mkdtemp(dir)) return 1;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bearer),
        cmocka_unit_test(test_key_sources),
        cmocka_unit_test(test_bad_keys),
        cmocka_unit_test(test_tls_pairs),
    };
    int failed = cmocka_run_group_tests(tests, NULL, NULL);
    char cmd[64];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    if (system(cmd)) return 1;
    return failed;
}
