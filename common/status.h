/* Status codes and the per-thread error message.
 *
 * Functions return 0 on success or a negative TSR_E* code. The function that detects a failure
 * records a message a person can act on with tsr_errorf(); callers at a boundary (the CLI, an RPC
 * handler) read it once with tsr_last_error() and log or return it. */
#ifndef TSR_COMMON_STATUS_H
#define TSR_COMMON_STATUS_H

enum {
    TSR_OK = 0,
    TSR_EINVAL = -1,        /* bad argument or request */
    TSR_EIO = -2,           /* open/read/mmap failed */
    TSR_ENOMEM = -3,        /* allocation failed */
    TSR_EFORMAT = -4,       /* malformed file or message */
    TSR_EUNSUPPORTED = -5,  /* well-formed but not something we handle */
    TSR_ERANGE = -6,        /* value out of range (context full, index too large) */
    TSR_ENOTFOUND = -7,     /* key, tensor or file missing */
    TSR_EINTERNAL = -8,     /* invariant broken: a bug */
    TSR_EEXHAUSTED = -9,    /* a pool or queue is full */
    TSR_ETIMEDOUT = -10,    /* a wait ran out of time */
    TSR_ECANCELLED = -11,   /* the other side cancelled or went away */
    TSR_EUNAVAILABLE = -12, /* a peer or service cannot be reached now; retry may work */
};

/* Short name of a code ("EFORMAT"); never NULL. */
const char *tsr_strerror(int code);

/* Records a printf-style message for this thread and returns code, so callers can write
 * `return tsr_errorf(TSR_EFORMAT, "%s: bad magic", path);`. */
int tsr_errorf(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Puts context in front of this thread's last message ("<context>: <last message>") and returns
 * code: `return tsr_error_prefix(rc, "%s", path);`. The context is formatted into a buffer of its
 * own before the message is rewritten, so its arguments may point into the last message (never
 * write tsr_errorf(rc, "%s: %s", path, tsr_last_error()): that formats a buffer into itself). */
int tsr_error_prefix(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* The last message recorded on this thread ("" if none). Valid until the next tsr_errorf(). */
const char *tsr_last_error(void);

#endif
