/* Logging to stderr with a level and a monotonic timestamp. The level comes from TESSERA_LOG
 * (error|warn|info|debug), default info. Thread-safe: one fprintf per line. */
#ifndef TSR_COMMON_LOG_H
#define TSR_COMMON_LOG_H

enum tsr_log_level { TSR_LOG_ERROR, TSR_LOG_WARN, TSR_LOG_INFO, TSR_LOG_DEBUG };

void tsr_log(enum tsr_log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define tsr_log_error(...) tsr_log(TSR_LOG_ERROR, __VA_ARGS__)
#define tsr_log_warn(...)  tsr_log(TSR_LOG_WARN, __VA_ARGS__)
#define tsr_log_info(...)  tsr_log(TSR_LOG_INFO, __VA_ARGS__)
#define tsr_log_debug(...) tsr_log(TSR_LOG_DEBUG, __VA_ARGS__)

/* Seconds on a monotonic clock, for timing and progress. */
double tsr_now(void);

#endif
