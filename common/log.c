#include "common/log.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static int level_from_env(void)
{
    const char *s = getenv("TESSERA_LOG");
    if (!s) return TSR_LOG_INFO;
    if (!strcmp(s, "error")) return TSR_LOG_ERROR;
    if (!strcmp(s, "warn")) return TSR_LOG_WARN;
    if (!strcmp(s, "debug")) return TSR_LOG_DEBUG;
    return TSR_LOG_INFO;
}

double tsr_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

void tsr_log(enum tsr_log_level level, const char *fmt, ...)
{
    static const char *names[] = {"error", "warn", "info", "debug"};
    if ((int)level > level_from_env()) return;
    char line[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    fprintf(stderr, "tessera %s: %s\n", names[level], line);
}
