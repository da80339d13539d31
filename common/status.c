#include "common/status.h"

#include <stdarg.h>
#include <stdio.h>

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

const char *tsr_last_error(void)
{
    return last_error;
}
