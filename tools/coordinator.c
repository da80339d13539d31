/* `tessera coordinator`: the public gRPC API, and OpenAI's HTTP API with --http-port (DESIGN §1).
 * It reads the model's tokenizer, chat template and config (never its weights), follows the ready
 * groups in etcd, and runs for the controller role. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/etcd.h"
#include "common/log.h"
#include "common/net.h"
#include "common/status.h"
#include "coordinator/cluster.h"
#include "coordinator/http.h"
#include "coordinator/service.h"
#include "model/model.h"
#include "tools/cli.h"

static void coord_usage(FILE *f)
{
    fprintf(
        f,
        "usage: tessera coordinator [--etcd URLS] [--model M] [--host H] [--port P]\n"
        "                           [--advertise-address A] [--tp N] [--pp M] [--max-queue N]\n"
        "                           [--id ID] [--prefix P] [--drain-timeout S] [--http-port P]\n"
        "                           [--served-model-name NAME] [--max-model-len N]\n"
        "                           [--api-key-file F] [--tls-cert F --tls-key F]\n"
        "                           [--tls-client-ca F] [--routing cache|load]\n"
        "                           [--no-migration]\n\n"
        "  --etcd       etcd endpoints, comma-separated (default $ETCDCTL_ENDPOINTS)\n"
        "  --port P     the public gRPC API (default 50051)\n" TSR_CLI_HTTP_HELP TSR_CLI_LISTEN_HELP
        "  --model M    where the tokenizer, chat template and config come from\n"
        "               (default $TESSERA_MODEL, else " TSR_DEFAULT_MODEL ")\n"
        "  --tp, --pp   the layout of every group (the controller assigns worker units of\n"
        "               this shape)\n"
        "  --max-queue  requests in flight at once; beyond it RESOURCE_EXHAUSTED (default "
        "256)\n"
        "  --id ID      this coordinator's name in etcd (default coordinator-<pid>)\n"
        "  --prefix P   the etcd key prefix of this cluster (default /tessera)\n"
        "  --routing cache|load  cache (default): send a request where its work ends soonest,\n"
        "               counting the prompt blocks a group likely holds in its prefix cache\n"
        "               (from what was sent there); load: the least loaded group alone\n"
        "  --no-migration  a stream whose replica dies or drains after it sent tokens ends\n"
        "               UNAVAILABLE (default: it goes on from another replica, exactly as it\n"
        "               would have, the tokens sent becoming part of its prompt there)\n"
        "  --served-model-name NAME  the model's id in ListModels, /v1/models and requests\n"
        "               (default: the file's name without .gguf)\n" TSR_CLI_SERVING_HELP
            TSR_CLI_SECURITY_HELP);
}

int tsr_cmd_coordinator(int argc, char **argv)
{
    enum { O_QUEUE = 256, O_PREFIX, O_HTTP, O_NAME, O_ROUTING, O_NO_MIGRATION };
    static const struct option opts[] = {TSR_CLI_MODEL_OPTIONS,
                                         TSR_CLI_SERVING_OPTIONS,
                                         {"etcd", required_argument, 0, 'e'},
                                         TSR_CLI_LISTEN_OPTIONS,
                                         TSR_CLI_SECURITY_OPTIONS,
                                         {"id", required_argument, 0, 'i'},
                                         {"max-queue", required_argument, 0, O_QUEUE},
                                         {"prefix", required_argument, 0, O_PREFIX},
                                         {"http-port", required_argument, 0, O_HTTP},
                                         {"served-model-name", required_argument, 0, O_NAME},
                                         {"routing", required_argument, 0, O_ROUTING},
                                         {"no-migration", no_argument, 0, O_NO_MIGRATION},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    struct tsr_cli_model mdl;
    struct tsr_cli_serving srv;
    tsr_cli_model_init(&mdl);
    tsr_cli_serving_init(&srv);
    const char *etcd_url = NULL, *prefix = "/tessera", *id = NULL, *served_name = NULL;
    struct tsr_cli_listen listen = {.host = "127.0.0.1", .port = 50051};
    struct tsr_cli_security sec = {0};
    int max_queue = 256, http_port = -1, no_migration = 0, c, rc;
    enum tsr_routing routing = TSR_ROUTING_CACHE;
    long l;
    optind = 1;
    while ((c = getopt_long(argc, argv, "m:e:i:h", opts, NULL)) != -1) {
        if ((rc = tsr_cli_listen_opt(c, optarg, &listen)) ||
            (rc = tsr_cli_model_opt(c, optarg, &mdl)) ||
            (rc = tsr_cli_serving_opt(c, optarg, &srv))) {
            if (rc == 2) return 2;
            continue;
        }
        if (tsr_cli_security_opt(c, optarg, &sec)) continue;
        switch (c) {
        case 'e':
            etcd_url = optarg;
            break;
        case 'i':
            id = optarg;
            break;
        case O_QUEUE:
            if (!(rc = tsr_cli_int("--max-queue", optarg, 1, 1 << 20, &l))) max_queue = l;
            break;
        case O_PREFIX:
            prefix = optarg;
            break;
        case O_HTTP:
            if (!(rc = tsr_cli_int("--http-port", optarg, 0, 65535, &l))) http_port = l;
            break;
        case O_NAME:
            if ((rc = tsr_cli_served_name("coordinator", optarg))) break;
            served_name = optarg;
            break;
        case O_ROUTING:
            if (tsr_routing_parse(optarg, &routing)) {
                fprintf(stderr, "tessera coordinator: --routing: %s\n", tsr_last_error());
                rc = 2;
            }
            break;
        case O_NO_MIGRATION:
            no_migration = 1;
            break;
        case 'h':
            coord_usage(stdout);
            return 0;
        default:
            coord_usage(stderr);
            return 2;
        }
        if (rc) return rc;
    }
    if (!(etcd_url = tsr_cli_etcd(etcd_url))) {
        fprintf(stderr, "tessera coordinator: --etcd (or ETCDCTL_ENDPOINTS) is required\n");
        coord_usage(stderr);
        return 2;
    }
    char bind[TSR_HOST_MAX + 8], adv[TSR_HOST_MAX];
    if ((rc = tsr_cli_listen_resolve("coordinator", &listen, bind, sizeof bind, adv, sizeof adv)))
        return rc;
    char *api_key = NULL;
    struct tsr_tls_files tls;
    if ((rc = tsr_cli_security_load("coordinator", &sec, &api_key, &tls))) return rc;
    if ((rc = tsr_cli_etcd_reachable("coordinator", etcd_url))) {
        free(api_key);
        tsr_tls_files_free(&tls);
        return rc;
    }
    tsr_cli_catch_signals();
    char idbuf[64];
    if (!id) {
        snprintf(idbuf, sizeof idbuf, "coordinator-%d", (int)getpid());
        id = idbuf;
    }
    int exit_code = 1;
    tsr_model_t *m = NULL;
    tsr_etcd_t *etcd = NULL;
    tsr_router_t *r = NULL;
    tsr_cluster_t *cl = NULL;
    tsr_sessions_t *ss = NULL;
    tsr_coord_t *co = NULL;
    tsr_http_t *http = NULL;
    if ((rc = tsr_model_open_quantized(mdl.model, mdl.quantize_type, &m))) {
        fprintf(stderr, "tessera coordinator: %s\n", tsr_last_error());
        exit_code = 2;
        goto out;
    }
    if (tsr_cli_check_model_len("coordinator", m, srv.max_len)) {
        exit_code = 2;
        goto out;
    }
    if (!(r = tsr_router_new())) goto out;
    tsr_router_set_routing(r, routing);
    struct tsr_cluster_opts clo = {
        .prefix = prefix, .id = id, .tp = mdl.tp, .pp = mdl.pp, .ttl_s = 3};
    if ((rc = tsr_etcd_open(etcd_url, &etcd)) || (rc = tsr_cluster_start(etcd, r, &clo, &cl))) {
        fprintf(stderr, "tessera coordinator: etcd %s: %s\n", etcd_url, tsr_last_error());
        goto out;
    }
    struct tsr_session_opts so = {.max_queue = max_queue,
                                  .served_name = served_name,
                                  .max_model_len = srv.max_len,
                                  .no_migration = no_migration};
    /* Calls beyond the queue bound still get a thread, to be told RESOURCE_EXHAUSTED. */
    struct tsr_coord_opts co_opts = {
        .listen = bind, .max_calls = max_queue + 256, .api_key = api_key, .tls = &tls};
    int port;
    if (!(ss = tsr_sessions_new(m, r, &so))) goto out;
    if ((rc = tsr_coord_start(ss, &co_opts, &co, &port))) {
        fprintf(stderr, "tessera coordinator: %s\n", tsr_last_error());
        goto out;
    }
    char where[TSR_HOST_MAX + 8];
    tsr_net_join(adv, port, where, sizeof where);
    tsr_log_info("coordinator %s: serving %s on %s (bound to %s; %s, %s)", id, tsr_model_name(m),
                 where, bind,
                 tls.cert_pem ? (tls.client_ca_pem ? "mutual TLS" : "TLS") : "plain text",
                 api_key ? "API key required" : "no API key");
    if (http_port >= 0) {
        char http_bind[TSR_HOST_MAX + 8];
        tsr_net_join(listen.host, http_port, http_bind, sizeof http_bind);
        struct tsr_http_opts ho = {.listen = http_bind,
                                   .max_connections = max_queue + 256,
                                   .api_key = api_key,
                                   .tls = &tls};
        if ((rc = tsr_http_start(ss, &ho, &http, &http_port))) {
            fprintf(stderr, "tessera coordinator: --http-port: %s\n", tsr_last_error());
            goto out;
        }
        tsr_net_join(adv, http_port, where, sizeof where);
        tsr_log_info("coordinator %s: OpenAI HTTP API on %s://%s/v1", id,
                     tls.cert_pem ? "https" : "http", where);
    }
    while (!tsr_cli_stop_requested()) usleep(100 * 1000);
    int64_t left = tsr_sessions_drain(ss);
    if (left > 0 && srv.drain_s > 0) {
        tsr_log_info("coordinator %s: draining: %lld requests in flight, up to %d s", id,
                     (long long)left, srv.drain_s);
        double t0 = tsr_now();
        while ((left = tsr_sessions_drain(ss)) > 0 && tsr_now() - t0 < srv.drain_s &&
               !tsr_cli_stop_insisted())
            usleep(50 * 1000);
        if (left > 0)
            tsr_log_warn("coordinator %s: %lld requests still in flight; ending them", id,
                         (long long)left);
    }
    tsr_log_info("coordinator %s: stopping", id);
    exit_code = 0;
out:
    tsr_http_stop(http); /* first: no request may outlive the sessions or the router */
    tsr_coord_stop(co);
    tsr_sessions_free(ss);
    tsr_cluster_stop(cl);
    tsr_router_free(r);
    tsr_etcd_close(etcd);
    tsr_model_free(m);
    tsr_tls_files_free(&tls);
    free(api_key);
    return exit_code;
}
