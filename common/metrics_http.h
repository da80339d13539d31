/* A minimal Prometheus endpoint (libmicrohttpd) for a process that has no HTTP server of its own:
 * a group leader's `tessera worker --metrics-port`. GET (or HEAD) /metrics answers what the render
 * callback writes (TSR_METRICS_CONTENT_TYPE); other paths are 404, other methods on /metrics 405.
 * The coordinator serves /metrics on its own HTTP server instead (coordinator/http.c). */
#ifndef TSR_COMMON_METRICS_HTTP_H
#define TSR_COMMON_METRICS_HTTP_H

#include "common/metrics.h"

typedef struct tsr_metrics_http tsr_metrics_http_t;

/* Appends the exposition to out; 0 or a TSR_E* code (the scrape then gets a 500). Called on the
 * server's connection threads, several at once. */
typedef int (*tsr_metrics_render_fn)(void *arg, struct tsr_metrics_text *out);

/* Listens on listen ("host:port" or "[v6]:port"; port 0: any free one, written to *port).
 * TSR_EINVAL for an address that does not parse, TSR_EIO when it cannot be bound. */
int tsr_metrics_http_start(const char *listen, tsr_metrics_render_fn render, void *arg,
                           tsr_metrics_http_t **out, int *port);
/* Stops listening and joins the connection threads; NULL is a no-op. */
void tsr_metrics_http_stop(tsr_metrics_http_t *h);

#endif
