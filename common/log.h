/* Logging to stderr, one line per call (one write, so lines of threads and processes sharing a
 * terminal do not interleave), with the wall-clock time (RFC 3339, UTC, milliseconds), the
 * component (the subcommand: coordinator, worker, serve, ...), the pid and the level.
 *
 *   TESSERA_LOG         error | warn | info (default) | debug: the lowest level printed
 *   TESSERA_LOG_FORMAT  text (default):
 *                         2026-12-06T17:22:14.123Z coordinator[4242] info: message
 *                         2026-12-06T17:22:14.123Z coordinator[4242] info: [req 7f3a] message
 *                       json: one object a line, for log collectors:
 *                         {"time":"...","level":"info","component":"coordinator","pid":4242,
 *                          "request_id":"7f3a","msg":"message"}   (request_id only when given)
 * Thread-safe. */
#ifndef TSR_COMMON_LOG_H
#define TSR_COMMON_LOG_H

#include <stddef.h>

enum tsr_log_level { TSR_LOG_ERROR, TSR_LOG_WARN, TSR_LOG_INFO, TSR_LOG_DEBUG };

/* Names this process in every line (default "tessera"); call once, early, before threads. */
void tsr_log_set_component(const char *component);

void tsr_log(enum tsr_log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* The same, about one request (request_id: the client's or the coordinator's id; NULL or "" for
 * none). */
void tsr_log_req(enum tsr_log_level level, const char *request_id, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#define tsr_log_error(...) tsr_log(TSR_LOG_ERROR, __VA_ARGS__)
#define tsr_log_warn(...)  tsr_log(TSR_LOG_WARN, __VA_ARGS__)
#define tsr_log_info(...)  tsr_log(TSR_LOG_INFO, __VA_ARGS__)
#define tsr_log_debug(...) tsr_log(TSR_LOG_DEBUG, __VA_ARGS__)

/* Formats one line as tsr_log would print it (without printing): at most cap bytes with its
 * '\n' and NUL, cut short (on a character boundary, still valid JSON) when longer; returns its
 * length. For tests. */
size_t tsr_log_format(char *out, size_t cap, enum tsr_log_level level, const char *request_id,
                      const char *msg, int json);

/* Seconds on a monotonic clock, for timing and progress. */
double tsr_now(void);

#endif
