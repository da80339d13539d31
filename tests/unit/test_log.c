/* common/log: every line carries an RFC 3339 UTC time, the component, the pid and the level; the
 * JSON format is one valid object a line whatever the message holds (quotes, newlines, control
 * bytes, broken UTF-8, a message longer than a line); a message cannot start a second line; the
 * request id is carried when given; TESSERA_LOG filters by level; a whole line is one write. */
#include <regex.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include <jansson.h>

#include "common/log.h"

static void assert_matches(const char *s, const char *pattern)
{
    regex_t re;
    assert_int_equal(regcomp(&re, pattern, REG_EXTENDED | REG_NOSUB), 0);
    int rc = regexec(&re, s, 0, NULL, 0);
    regfree(&re);
    if (rc) fail_msg("'%s' does not match /%s/", s, pattern);
}

#define TIME_RE "[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\\.[0-9]{3}Z"

static void test_text(void **state)
{
    (void)state;
    char line[512];
    tsr_log_set_component("worker");
    size_t n = tsr_log_format(line, sizeof line, TSR_LOG_WARN, NULL, "hello \"x\"", 0);
    assert_int_equal(n, strlen(line));
    char want[128];
    snprintf(want, sizeof want, "^" TIME_RE " worker\\[%d\\] warn: hello \"x\"\n$", (int)getpid());
    assert_matches(line, want);
    tsr_log_format(line, sizeof line, TSR_LOG_INFO, "r-1", "done", 0);
    assert_matches(line, " info: \\[req r-1\\] done\n$");
    /* a message cannot forge a second line, or write control bytes to a terminal */
    tsr_log_format(line, sizeof line, TSR_LOG_ERROR, NULL, "a\nb\x1b[31m", 0);
    assert_matches(line, " error: a\\\\nb\\\\x1b\\[31m\n$");
    assert_int_equal(strchr(line, '\n'), line + strlen(line) - 1);
}

static json_t *parse_line(const char *line)
{
    size_t n = strlen(line);
    assert_true(n > 0 && line[n - 1] == '\n');
    assert_null(memchr(line, '\n', n - 1));
    json_error_t err;
    json_t *j = json_loadb(line, n - 1, 0, &err);
    if (!j) fail_msg("not JSON (%s): %s", err.text, line);
    return j;
}

static void test_json(void **state)
{
    (void)state;
    char line[512];
    tsr_log_set_component("coordinator");
    const char *msg = "q\"uote\\ new\nline tab\t bell\x07 \xc3\xa9 broken \xff\xc3 end";
    tsr_log_format(line, sizeof line, TSR_LOG_INFO, "req \"7\"", msg, 1);
    json_t *j = parse_line(line);
    assert_string_equal(json_string_value(json_object_get(j, "level")), "info");
    assert_string_equal(json_string_value(json_object_get(j, "component")), "coordinator");
    assert_int_equal(json_integer_value(json_object_get(j, "pid")), getpid());
    assert_string_equal(json_string_value(json_object_get(j, "request_id")), "req \"7\"");
    assert_matches(json_string_value(json_object_get(j, "time")), "^" TIME_RE "$");
    /* every byte that was valid comes back; each broken one is U+FFFD */
    assert_string_equal(
        json_string_value(json_object_get(j, "msg")),
        "q\"uote\\ new\nline tab\t bell\x07 \xc3\xa9 broken \xef\xbf\xbd\xef\xbf\xbd"
        " end");
    json_decref(j);
    /* no request id: no field */
    tsr_log_format(line, sizeof line, TSR_LOG_DEBUG, "", "x", 1);
    j = parse_line(line);
    assert_null(json_object_get(j, "request_id"));
    json_decref(j);
}

/* A message longer than the line is cut on a character boundary; the line stays whole. */
static void test_long(void **state)
{
    (void)state;
    char msg[3000], line[256];
    for (size_t i = 0; i + 2 < sizeof msg; i += 2) memcpy(msg + i, "\xc3\xa9", 2); /* é */
    msg[sizeof msg - 1 - (sizeof msg - 1) % 2] = 0;
    for (int json = 0; json <= 1; json++) {
        for (size_t cap = 120; cap <= sizeof line; cap += 7) {
            size_t n = tsr_log_format(line, cap, TSR_LOG_INFO, "id", msg, json);
            assert_true(n < cap);
            assert_int_equal(line[n - 1], '\n');
            if (json) json_decref(parse_line(line));
            /* no half é at the cut */
            const char *tail = strstr(line, json ? "\"}\n" : "\n");
            assert_non_null(tail);
            assert_true((unsigned char)tail[-1] == 0xa9);
        }
    }
}

/* Through stderr: one line per call, filtered by TESSERA_LOG. */
static void test_write(void **state)
{
    (void)state;
    char path[] = "/tmp/tsr-log-test-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    int saved = dup(STDERR_FILENO);
    dup2(fd, STDERR_FILENO);
    setenv("TESSERA_LOG", "warn", 1);
    setenv("TESSERA_LOG_FORMAT", "json", 1);
    tsr_log_info("not shown");
    tsr_log_warn("shown %d", 1);
    tsr_log_req(TSR_LOG_ERROR, "abc", "also %s", "shown");
    unsetenv("TESSERA_LOG_FORMAT");
    tsr_log_error("text");
    unsetenv("TESSERA_LOG");
    dup2(saved, STDERR_FILENO);
    close(saved);
    char buf[2048] = {0};
    assert_true(pread(fd, buf, sizeof buf - 1, 0) > 0);
    close(fd);
    unlink(path);
    char *l1 = buf, *l2 = strchr(l1, '\n') + 1, *l3 = strchr(l2, '\n') + 1;
    assert_null(strstr(buf, "not shown"));
    char one[512];
    snprintf(one, sizeof one, "%.*s", (int)(l2 - l1), l1);
    json_t *j = parse_line(one);
    assert_string_equal(json_string_value(json_object_get(j, "msg")), "shown 1");
    json_decref(j);
    snprintf(one, sizeof one, "%.*s", (int)(l3 - l2), l2);
    j = parse_line(one);
    assert_string_equal(json_string_value(json_object_get(j, "request_id")), "abc");
    json_decref(j);
    assert_matches(l3, "^" TIME_RE " [a-z]+\\[[0-9]+\\] error: text\n$");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_text),
        cmocka_unit_test(test_json),
        cmocka_unit_test(test_long),
        cmocka_unit_test(test_write),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
