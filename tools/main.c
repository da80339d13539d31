/* tessera: the command-line entry point. Subcommands live in their own files. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>

#include "common/etcd.h"
#include "common/log.h"
#include "common/net.h"
#include "common/status.h"
#include "tools/cli.h"

/* Set by CMake for this file: project(VERSION) and the commit configured at. */
#ifndef TSR_VERSION
#define TSR_VERSION "unknown"
#endif
#ifndef TSR_GIT_COMMIT
#define TSR_GIT_COMMIT "unknown"
#endif
#ifdef TSR_HAVE_CUDA
#define TSR_BUILT_WITH "CUDA built in"
#else
#define TSR_BUILT_WITH "CPU only, built without CUDA"
#endif

static void usage(FILE *f)
{
    fprintf(f, "usage: tessera <command> [options]\n\n"
               "commands:\n"
               "  generate   run a model in this process and stream its answer to a prompt\n"
               "  bench      prompt and decode tokens/s of a model on this machine\n"
               "  plan       tp x pp x replicas layout of a model on a cluster, per-GPU memory and "
               "KV room\n"
               "  serve      a whole cluster on this machine: etcd, a coordinator and workers\n"
               "  client     talk to a running server: generate, tokenize, list models, status\n"
               "  worker     one worker unit (a group of tp x pp ranks); registers in etcd\n"
               "  coordinator  the public gRPC API: validation, routing, the controller\n\n"
               "Run `tessera <command> --help` for a command's options; `tessera --version` for\n"
               "the version, commit and whether CUDA is built in.\n");
}

int tsr_cli_int(const char *flag, const char *s, long lo, long hi, long *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi) {
        fprintf(stderr, "tessera: %s: '%s' is not an integer in [%ld, %ld]\n", flag, s, lo, hi);
        return 2;
    }
    *out = v;
    return 0;
}

int tsr_cli_listen_opt(int c, const char *arg, struct tsr_cli_listen *l)
{
    long v;
    switch (c) {
    case TSR_O_HOST:
        l->host = arg;
        return 1;
    case TSR_O_ADVERTISE:
        l->advertise = arg;
        return 1;
    case TSR_O_PORT:
        if (tsr_cli_int("--port", arg, 0, 65535, &v)) return 2;
        l->port = (int)v;
        return 1;
    default:
        return 0;
    }
}

int tsr_cli_listen_resolve(const char *cmd, const struct tsr_cli_listen *l, char *bind,
                           size_t bind_cap, char *adv_host, size_t adv_cap)
{
    if (tsr_net_advertise(l->host, l->advertise, adv_host, adv_cap)) {
        fprintf(stderr, "tessera %s: %s\n", cmd, tsr_last_error());
        return 2;
    }
    tsr_net_join(l->host, l->port, bind, bind_cap);
    return 0;
}

const char *tsr_cli_etcd(const char *flag_value)
{
    if (flag_value && flag_value[0]) return flag_value;
    const char *env = getenv("ETCDCTL_ENDPOINTS");
    return env && env[0] ? env : NULL;
}

int tsr_cli_etcd_reachable(const char *cmd, const char *endpoints)
{
    tsr_etcd_t *e;
    int rc = tsr_etcd_open(endpoints, &e);
    if (!rc) {
        tsr_etcd_set_timeout_ms(e, 3000);
        rc = tsr_etcd_get(e, "/tessera-reachability-check", NULL, NULL, NULL);
        if (rc == TSR_ENOTFOUND) rc = 0;
        tsr_etcd_close(e);
    }
    if (!rc) return 0;
    fprintf(stderr, "tessera %s: etcd %s cannot be reached: %s\n", cmd, endpoints,
            tsr_last_error());
    return 2;
}

int tsr_cli_float(const char *flag, const char *s, double lo, double hi, double *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || !(v >= lo && v <= hi)) {
        fprintf(stderr, "tessera: %s: '%s' is not a number in [%g, %g]\n", flag, s, lo, hi);
        return 2;
    }
    *out = v;
    return 0;
}

int tsr_cli_u64(const char *flag, const char *s, uint64_t *out)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s || *end || *s == '-') {
        fprintf(stderr, "tessera: %s: '%s' is not a non-negative integer\n", flag, s);
        return 2;
    }
    *out = v;
    return 0;
}

int tsr_cli_ids(const char *cmd, const char *flag, const char *s, int32_t **ids, size_t *n)
{
    size_t cap = 16;
    *n = 0;
    *ids = malloc(cap * sizeof **ids);
    while (*ids && *s) {
        char *end;
        long v = strtol(s, &end, 10);
        if (end == s || v < 0 || v > INT32_MAX) {
            fprintf(stderr, "tessera %s: %s: bad id near '%s'\n", cmd, flag, s);
            free(*ids);
            *ids = NULL;
            return 2;
        }
        if (*n == cap) {
            int32_t *g = realloc(*ids, (cap *= 2) * sizeof **ids);
            if (!g) {
                free(*ids);
                *ids = NULL;
                break;
            }
            *ids = g;
        }
        (*ids)[(*n)++] = (int32_t)v;
        s = end;
        while (*s == ',' || *s == ' ') s++;
    }
    if (*ids) return 0;
    fprintf(stderr, "tessera %s: out of memory for %s\n", cmd, flag);
    return 1;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    tsr_log_set_component(argv[1]); /* every log line names the subcommand */
    if (!strcmp(argv[1], "generate")) return tsr_cmd_generate(argc - 1, argv + 1);
    if (!strcmp(argv[1], "bench")) return tsr_cmd_bench(argc - 1, argv + 1);
    if (!strcmp(argv[1], "plan")) return tsr_cmd_plan(argc - 1, argv + 1);
    if (!strcmp(argv[1], "worker")) return tsr_cmd_worker(argc - 1, argv + 1);
    if (!strcmp(argv[1], "coordinator")) return tsr_cmd_coordinator(argc - 1, argv + 1);
    if (!strcmp(argv[1], "serve")) return tsr_cmd_serve(argc - 1, argv + 1);
    if (!strcmp(argv[1], "client")) return tsr_cmd_client(argc - 1, argv + 1);
    if (!strcmp(argv[1], "--version") || !strcmp(argv[1], "version")) {
        printf("tessera %s (commit %s, %s)\n", TSR_VERSION, TSR_GIT_COMMIT, TSR_BUILT_WITH);
        return 0;
    }
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        usage(stdout);
        return 0;
    }
    fprintf(stderr, "tessera: unknown command '%s'\n", argv[1]);
    usage(stderr);
    return 2;
}
