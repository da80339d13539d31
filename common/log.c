#include "common/log.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static const char *component = "tessera";

void tsr_log_set_component(const char *c)
{
    if (c && *c) component = c;
}

static int level_from_env(void)
{
    const char *s = getenv("TESSERA_LOG");
    if (!s) return TSR_LOG_INFO;
    if (!strcmp(s, "error")) return TSR_LOG_ERROR;
    if (!strcmp(s, "warn")) return TSR_LOG_WARN;
    if (!strcmp(s, "debug")) return TSR_LOG_DEBUG;
    return TSR_LOG_INFO;
}

static int json_from_env(void)
{
    const char *s = getenv("TESSERA_LOG_FORMAT");
    return s && !strcmp(s, "json");
}

double tsr_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* A bounded writer: keeps the first cap - reserve bytes, then drops the rest. */
struct out {
    char *p;
    size_t n, cap;
};

static void put(struct out *o, const char *s, size_t n)
{
    if (o->n + n > o->cap) n = o->cap - o->n;
    memcpy(o->p + o->n, s, n);
    o->n += n;
}

static void puts_(struct out *o, const char *s)
{
    put(o, s, strlen(s));
}

/* s as the inside of a JSON string (json) or as text with control characters shown as \xNN (so a
 * message cannot forge a second line); stops before a character that would not fit whole. */
static void put_escaped(struct out *o, const char *s, int json)
{
    for (const unsigned char *c = (const unsigned char *)s; *c; c++) {
        char e[8];
        size_t n = 1;
        e[0] = (char)*c;
        if (*c == '"' && json) {
            n = (size_t)snprintf(e, sizeof e, "\\\"");
        } else if (*c == '\\' && json) {
            n = (size_t)snprintf(e, sizeof e, "\\\\");
        } else if (*c == '\n' || *c == '\t') {
            n = (size_t)snprintf(e, sizeof e, "\\%c", *c == '\n' ? 'n' : 't');
        } else if (*c < 0x20 || *c == 0x7f) {
            n = (size_t)snprintf(e, sizeof e, json ? "\\u%04x" : "\\x%02x", *c);
        } else if (*c >= 0x80) {
            /* a UTF-8 sequence goes whole or not at all; a malformed byte is shown as U+FFFD */
            int len = *c >= 0xf0 ? 4 : *c >= 0xe0 ? 3 : *c >= 0xc0 ? 2 : 0;
            int ok = len > 0 && (*c < 0xf5) && !(*c == 0xc0 || *c == 0xc1);
            for (int k = 1; ok && k < len; k++) ok = (c[k] & 0xc0) == 0x80;
            if (ok) {
                if (o->n + (size_t)len > o->cap) break;
                put(o, (const char *)c, (size_t)len);
                c += len - 1;
                continue;
            }
            n = 3;
            memcpy(e, "\xef\xbf\xbd", 3);
        }
        if (o->n + n > o->cap) break;
        put(o, e, n);
    }
}

size_t tsr_log_format(char *buf, size_t cap, enum tsr_log_level level, const char *request_id,
                      const char *msg, int json)
{
    static const char *names[] = {"error", "warn", "info", "debug"};
    if (cap == 0) return 0;
    struct timeval tv;
    gettimeofday(&tv, NULL);
    struct tm tm;
    gmtime_r(&tv.tv_sec, &tm);
    char when[40], head[160];
    size_t w = strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(when + w, sizeof when - w, ".%03dZ", (int)(tv.tv_usec / 1000));
    const char *lv = names[(unsigned)level < 4 ? level : TSR_LOG_INFO];
    int has_req = request_id && *request_id;
    /* the tail (closing and newline) is reserved, so a long message is cut, never the line's end */
    const char *tail = json ? "\"}\n" : "\n";
    struct out o = {buf, 0, cap - 1 - strlen(tail)};
    if (json) {
        snprintf(head, sizeof head, "{\"time\":\"%s\",\"level\":\"%s\",\"component\":\"", when, lv);
        puts_(&o, head);
        put_escaped(&o, component, 1);
        snprintf(head, sizeof head, "\",\"pid\":%d,", (int)getpid());
        puts_(&o, head);
        if (has_req) {
            puts_(&o, "\"request_id\":\"");
            put_escaped(&o, request_id, 1);
            puts_(&o, "\",");
        }
        puts_(&o, "\"msg\":\"");
        /* a cut inside the head would break the object: the head is short, and cap is large */
        put_escaped(&o, msg, 1);
    } else {
        snprintf(head, sizeof head, "%s %s[%d] %s: ", when, component, (int)getpid(), lv);
        puts_(&o, head);
        if (has_req) {
            puts_(&o, "[req ");
            put_escaped(&o, request_id, 0);
            puts_(&o, "] ");
        }
        put_escaped(&o, msg, 0);
    }
    o.cap = cap - 1;
    puts_(&o, tail);
    buf[o.n] = 0;
    return o.n;
}

static void vlog(enum tsr_log_level level, const char *request_id, const char *fmt, va_list ap)
{
    if ((int)level > level_from_env()) return;
    char msg[2048], line[4096];
    vsnprintf(msg, sizeof msg, fmt, ap);
    size_t n = tsr_log_format(line, sizeof line, level, request_id, msg, json_from_env());
    ssize_t r = write(STDERR_FILENO, line, n);
    (void)r;
}

void tsr_log(enum tsr_log_level level, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vlog(level, NULL, fmt, ap);
    va_end(ap);
}

void tsr_log_req(enum tsr_log_level level, const char *request_id, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vlog(level, request_id, fmt, ap);
    va_end(ap);
}
