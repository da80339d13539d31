#include "common/metrics_http.h"

#include <microhttpd.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "common/log.h"
#include "common/net.h"
#include "common/status.h"

struct tsr_metrics_http {
    struct MHD_Daemon *d;
    tsr_metrics_render_fn render;
    void *arg;
};

static enum MHD_Result reply(struct MHD_Connection *conn, unsigned status, char *text,
                             enum MHD_ResponseMemoryMode mode, const char *type)
{
    struct MHD_Response *r = MHD_create_response_from_buffer(strlen(text), text, mode);
    if (!r) {
        if (mode == MHD_RESPMEM_MUST_FREE) free(text);
        return MHD_NO;
    }
    MHD_add_response_header(r, "Content-Type", type);
    if (status == MHD_HTTP_METHOD_NOT_ALLOWED) MHD_add_response_header(r, "Allow", "GET, HEAD");
    enum MHD_Result rc = MHD_queue_response(conn, status, r);
    MHD_destroy_response(r);
    return rc;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version, const char *upload,
                                  size_t *upload_size, void **con_cls)
{
    struct tsr_metrics_http *h = cls;
    if (!*con_cls) { /* the headers: answer once the body (if any) has been read */
        *con_cls = h;
        return MHD_YES;
    }
    if (*upload_size) {
        *upload_size = 0; /* a body is never wanted here: drop it */
        return MHD_YES;
    }
    static char not_found[] = "not found: this server has /metrics only\n",
                not_allowed[] = "use GET\n", failed[] = "cannot render the metrics\n";
    if (strcmp(url, "/metrics"))
        return reply(conn, MHD_HTTP_NOT_FOUND, not_found, MHD_RESPMEM_PERSISTENT, "text/plain");
    if (strcmp(method, "GET") && strcmp(method, "HEAD"))
        return reply(conn, MHD_HTTP_METHOD_NOT_ALLOWED, not_allowed, MHD_RESPMEM_PERSISTENT,
                     "text/plain");
    struct tsr_metrics_text t = {0};
    int rc = h->render(h->arg, &t);
    if (rc || !t.data) {
        tsr_log_warn("metrics: a scrape failed: %s", rc ? tsr_last_error() : "no text");
        free(t.data);
        return reply(conn, MHD_HTTP_INTERNAL_SERVER_ERROR, failed, MHD_RESPMEM_PERSISTENT,
                     "text/plain");
    }
    return reply(conn, MHD_HTTP_OK, t.data, MHD_RESPMEM_MUST_FREE, TSR_METRICS_CONTENT_TYPE);
}

int tsr_metrics_http_start(const char *listen, tsr_metrics_render_fn render, void *arg,
                           tsr_metrics_http_t **out, int *port)
{
    char host[TSR_HOST_MAX], port_s[16];
    int p;
    int rc = tsr_net_split(listen, host, sizeof host, &p);
    if (rc) return rc;
    snprintf(port_s, sizeof port_s, "%d", p);
    struct addrinfo hints = {.ai_family = AF_UNSPEC,
                             .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_PASSIVE | AI_NUMERICSERV},
                    *ai = NULL;
    int gai = getaddrinfo(host, port_s, &hints, &ai);
    if (gai)
        return tsr_errorf(TSR_EINVAL, "metrics listen address %s: %s", listen, gai_strerror(gai));
    struct tsr_metrics_http *h = calloc(1, sizeof *h);
    if (!h) {
        freeaddrinfo(ai);
        return tsr_errorf(TSR_ENOMEM, "out of memory");
    }
    h->render = render;
    h->arg = arg;
    /* Scrapes are rare (every few seconds) and small: one polling thread serves them all. */
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_POLL |
                     (ai->ai_family == AF_INET6 ? MHD_USE_IPv6 : 0);
    h->d = MHD_start_daemon(flags, (uint16_t)p, NULL, NULL, on_request, h, MHD_OPTION_SOCK_ADDR,
                            ai->ai_addr, MHD_OPTION_CONNECTION_LIMIT, (unsigned)64,
                            MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)30, MHD_OPTION_END);
    freeaddrinfo(ai);
    if (!h->d) {
        free(h);
        return tsr_errorf(TSR_EIO, "metrics: cannot listen on %s (in use, or not this host's)",
                          listen);
    }
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(h->d, MHD_DAEMON_INFO_BIND_PORT);
    *port = di ? di->port : p;
    *out = h;
    return 0;
}

void tsr_metrics_http_stop(tsr_metrics_http_t *h)
{
    if (!h) return;
    MHD_stop_daemon(h->d);
    free(h);
}
