#include "common/status.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static _Thread_local char last_error[1024];

const char *tsr_strerror(int code)
{
    switch (code) {
    case TSR_OK:
        return "OK";
    case TSR_EINVAL:
        return "EINVAL";
    case TSR_EIO:
        return "EIO";
    case TSR_ENOMEM:
        return "ENOMEM";
    case TSR_EFORMAT:
        return "EFORMAT";
    case TSR_EUNSUPPORTED:
        return "EUNSUPPORTED";
    case TSR_ERANGE:
        return "ERANGE";
    case TSR_ENOTFOUND:
        return "ENOTFOUND";
    case TSR_EINTERNAL:
        return "EINTERNAL";
    case TSR_EEXHAUSTED:
        return "EEXHAUSTED";
    case TSR_ETIMEDOUT:
        return "ETIMEDOUT";
    case TSR_ECANCELLED:
        return "ECANCELLED";
    case TSR_EUNAVAILABLE:
        return "EUNAVAILABLE";
    default:
        return "EUNKNOWN";
    }
}

int tsr_errorf(int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(last_error, sizeof last_error, fmt, ap);
    va_end(ap);
    return code;
}

int tsr_error_prefix(int code, const char *fmt, ...)
{
    /* Both pieces are copied out before last_error is written: snprintf's source and destination
     * must not overlap. */
    char prefix[sizeof last_error], old[sizeof last_error];
    memcpy(old, last_error, sizeof old);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof prefix, fmt, ap);
    va_end(ap);
    /* "<prefix>: <old>", cut to the buffer (a cut message still reads from its start). */
    size_t n = 0;
    const char *parts[] = {prefix, ": ", old};
    for (size_t i = 0; i < 3; i++) {
        size_t k = strnlen(parts[i], sizeof last_error - 1 - n);
        memcpy(last_error + n, parts[i], k);
        n += k;
    }
    last_error[n] = '\0';
    return code;
}

const char *tsr_last_error(void)
{
    return last_error;
}
