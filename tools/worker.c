/* `tessera worker`: one worker unit (DESIGN §1). A unit is the tp x pp ranks of one group, started
 * together (under mpirun or srun when there are several), or one by one with --group (each pod of
 * a LeaderWorkerSet: the ranks meet through etcd and NCCL). Rank 0 is the leader: it runs the
 * engine and the Worker service, registers the unit in etcd and publishes its group as ready once
 * the controller assigned it. The other ranks follow the leader's steps. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/etcd.h"
#include "common/hash.h"
#include "common/log.h"
#include "common/metrics_http.h"
#include "common/net.h"
#include "common/status.h"
#include "kernels/backend.h"
#include "model/model.h"
#include "tools/cli.h"
#include "worker/step.h"
#include "worker/engine.h"
#include "worker/group.h"
#include "worker/leader.h"
#include "worker/member.h"
#include "worker/rendezvous.h"

struct worker_args {
    struct tsr_cli_model mdl;
    struct tsr_cli_device dev;
    struct tsr_cli_engine eng;
    struct tsr_cli_serving srv;
    const char *etcd, *id, *prefix;
    const char *group; /* --group: started without MPI, meeting through etcd */
    struct tsr_cli_listen listen;
    int ttl, group_rank, group_size, group_timeout;
    int metrics_port;        /* 0: no /metrics */
    const char *served_name; /* the model_name label of the metrics; NULL: the file's */
};

static void worker_usage(FILE *f)
{
    fprintf(f,
            "usage: tessera worker [--model M] [--etcd URLS] [--id ID] [--host H] [--port P]\n"
            "                      [--advertise-address A]\n"
            "                      [--tp N] [--pp M] [--threads N]\n"
            "                      [--kv-blocks N | --kv-mem GB | --gpu-memory-utilization F]\n"
            "                      [--max-seqs N] [--step-tokens N] [--step-timeout S]\n"
            "                      [--max-model-len N] [--prefix P] [--ttl S] [--drain-timeout S]\n"
            "                      [--metrics-port P] [--served-model-name NAME]\n"
            "                      [--no-prefix-caching] [--micro-batches N]\n"
            "                      [--device cpu|cuda[:N]]\n"
            "                      [--group NAME --group-rank R [--group-size N]]\n\n"
            "  --etcd         register in this etcd (endpoints, comma-separated; default\n"
            "                 $ETCDCTL_ENDPOINTS) and serve the group the controller assigns;\n"
            "                 without it the worker just serves its Worker API\n"
            "  --id           this unit's name in etcd (default w<pid>)\n"
            "  --port P     the leader's Worker service (default 0: any free "
            "port)\n" TSR_CLI_LISTEN_HELP TSR_CLI_MODEL_HELP TSR_CLI_DEVICE_HELP TSR_CLI_ENGINE_HELP
                TSR_CLI_SERVING_HELP
            "  --metrics-port P  serve Prometheus metrics at http://HOST:P/metrics (the leader,\n"
            "                 rank 0, only; on --host; default: off)\n"
            "  --served-model-name NAME  the model_name label of those metrics (pass the\n"
            "                 coordinator's; default: the file's name without .gguf)\n"
            "  --ttl          etcd lease TTL in seconds (default 3): how long a dead worker\n"
            "                 can stay in routing\n"
            "                 (a leader that drains leaves routing at once)\n"
            "  --group NAME   this process is one rank of group NAME, whose tp x pp ranks start\n"
            "                 on their own (no mpirun: a LeaderWorkerSet's pods) and meet\n"
            "                 through --etcd and NCCL; needs --device cuda. Every rank passes\n"
            "                 the same NAME, --tp and --pp; rank 0 serves\n"
            "  --group-rank R this rank's number, 0 to tp x pp - 1\n"
            "  --group-size N the ranks the launcher started: must be tp x pp\n"
            "  --group-timeout S  how long a rank waits for the others (default 300)\n");
}

/* --group and its companions, against the layout: 2 after printing what is wrong. */
static int check_group_args(const struct worker_args *a)
{
    int ranks = tsr_cli_model_ranks(&a->mdl);
    const char *why = NULL;
    if (!a->group) {
        if (a->group_rank >= 0 || a->group_size >= 0)
            why = "--group-rank and --group-size need --group";
    } else if (a->group_rank < 0) {
        why = "--group needs --group-rank";
    } else if (!a->etcd) {
        why = "--group: the ranks meet through etcd; give --etcd (or set ETCDCTL_ENDPOINTS)";
    } else if (!strcmp(a->dev.device, "cpu")) {
        why = "--group: ranks started without MPI meet through NCCL and need --device cuda; CPU "
              "groups start under mpirun or srun";
    } else if (tsr_group_under_mpi()) {
        why = "--group is for ranks started one by one; under mpirun or srun the launcher already "
              "makes the group (leave --group out)";
    }
    if (why) {
        fprintf(stderr, "tessera worker: %s\n", why);
        return 2;
    }
    if (a->group && tsr_rdv_check_group(a->group)) {
        fprintf(stderr, "tessera worker: --group: %s\n", tsr_last_error());
        return 2;
    }
    if (a->group && a->group_size >= 0 && a->group_size != ranks) {
        fprintf(stderr,
                "tessera worker: tp %d x pp %d needs %d ranks; the launcher started %d "
                "(--group-size)\n",
                a->mdl.tp, a->mdl.pp, ranks, a->group_size);
        return 2;
    }
    if (a->group && a->group_rank >= ranks) {
        fprintf(stderr, "tessera worker: --group-rank %d: tp %d x pp %d has ranks 0 to %d\n",
                a->group_rank, a->mdl.tp, a->mdl.pp, ranks - 1);
        return 2;
    }
    return 0;
}

static int parse_args(int argc, char **argv, struct worker_args *a)
{
    enum { O_PREFIX = 256, O_TTL, O_GROUP, O_GRANK, O_GSIZE, O_GTIME, O_METRICS, O_NAME };
    static const struct option opts[] = {TSR_CLI_MODEL_OPTIONS,
                                         TSR_CLI_DEVICE_OPTIONS,
                                         TSR_CLI_ENGINE_OPTIONS,
                                         TSR_CLI_SERVING_OPTIONS,
                                         TSR_CLI_LISTEN_OPTIONS,
                                         {"etcd", required_argument, 0, 'e'},
                                         {"id", required_argument, 0, 'i'},
                                         {"prefix", required_argument, 0, O_PREFIX},
                                         {"ttl", required_argument, 0, O_TTL},
                                         {"group", required_argument, 0, O_GROUP},
                                         {"group-rank", required_argument, 0, O_GRANK},
                                         {"group-size", required_argument, 0, O_GSIZE},
                                         {"group-timeout", required_argument, 0, O_GTIME},
                                         {"metrics-port", required_argument, 0, O_METRICS},
                                         {"served-model-name", required_argument, 0, O_NAME},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    memset(a, 0, sizeof *a);
    tsr_cli_model_init(&a->mdl);
    tsr_cli_device_init(&a->dev);
    tsr_cli_engine_init(&a->eng);
    tsr_cli_serving_init(&a->srv);
    a->listen.host = "127.0.0.1";
    a->prefix = "/tessera";
    a->ttl = 3;
    a->group_rank = a->group_size = -1;
    a->group_timeout = 300;
    long l;
    int c, rc;
    optind = 1;
    while ((c = getopt_long(argc, argv, "m:e:i:j:h", opts, NULL)) != -1) {
        if ((rc = tsr_cli_listen_opt(c, optarg, &a->listen)) ||
            (rc = tsr_cli_model_opt(c, optarg, &a->mdl)) ||
            (rc = tsr_cli_device_opt(c, optarg, &a->dev)) ||
            (rc = tsr_cli_engine_opt(c, optarg, &a->eng)) ||
            (rc = tsr_cli_serving_opt(c, optarg, &a->srv))) {
            if (rc == 2) return 2;
            continue;
        }
        switch (c) {
        case 'e':
            a->etcd = optarg;
            break;
        case 'i':
            a->id = optarg;
            break;
        case O_PREFIX:
            a->prefix = optarg;
            break;
        case O_TTL:
            if (!(rc = tsr_cli_int("--ttl", optarg, 1, 3600, &l))) a->ttl = l;
            break;
        case O_GROUP:
            a->group = optarg;
            break;
        case O_GRANK:
            if (!(rc = tsr_cli_int("--group-rank", optarg, 0, 65535, &l))) a->group_rank = l;
            break;
        case O_GSIZE:
            if (!(rc = tsr_cli_int("--group-size", optarg, 1, 65536, &l))) a->group_size = l;
            break;
        case O_GTIME:
            if (!(rc = tsr_cli_int("--group-timeout", optarg, 1, 86400, &l))) a->group_timeout = l;
            break;
        case O_METRICS:
            if (!(rc = tsr_cli_int("--metrics-port", optarg, 1, 65535, &l))) a->metrics_port = l;
            break;
        case O_NAME:
            if (!(rc = tsr_cli_served_name("worker", optarg))) a->served_name = optarg;
            break;
        case 'h':
            worker_usage(stdout);
            exit(0);
        default:
            worker_usage(stderr);
            return 2;
        }
        if (rc) return rc;
    }
    if (optind < argc) {
        fprintf(stderr, "tessera worker: unexpected argument '%s'\n", argv[optind]);
        return 2;
    }
    a->etcd = tsr_cli_etcd(a->etcd);
    if (a->eng.mem_util > 0 &&
        (a->eng.kv_blocks || a->eng.kv_mem > 0 || !strcmp(a->dev.device, "cpu"))) {
        fprintf(stderr, "tessera worker: --gpu-memory-utilization sizes the KV cache on a GPU "
                        "(--device cuda), without --kv-blocks or --kv-mem\n");
        return 2;
    }
    return check_group_args(a);
}

/* Bytes of available memory (MemAvailable), or 0 if unknown. */
static double mem_available(void)
{
    FILE *f = fopen("/proc/meminfo", "r");
    if (!f) return 0;
    char line[256];
    double kb = 0;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "MemAvailable: %lf kB", &kb) == 1) break;
    fclose(f);
    return kb * 1024;
}

/* KV blocks: --kv-blocks, or --kv-mem (default on the CPU 10% of available memory, at most 2 GiB)
 * over the bytes of one block on this rank (K and V of every layer in kv_type; KV heads split
 * over tp). 0 on a GPU without either: the runner sizes it from the GPU's free memory
 * (*mem_util). */
static int kv_blocks(const struct worker_args *a, const struct tsr_model_config *c, int block,
                     enum tsr_dtype kv_type, double *mem_util)
{
    *mem_util = 0;
    if (a->eng.kv_blocks) return a->eng.kv_blocks;
    if (a->eng.kv_mem <= 0 && strcmp(a->dev.device, "cpu")) {
        *mem_util = a->eng.mem_util > 0 ? a->eng.mem_util : 0.9;
        return 0;
    }
    double mem = a->eng.kv_mem * 1073741824.0;
    if (mem <= 0) {
        mem = mem_available() * 0.10;
        if (mem <= 0 || mem > 2147483648.0) mem = 2147483648.0;
    }
    int kv_heads = c->n_kv_head >= a->mdl.tp ? c->n_kv_head / a->mdl.tp : 1;
    int layers = (c->n_layer + a->mdl.pp - 1) / a->mdl.pp;
    int heads, width, caches = tsr_config_kv_rows(c, kv_heads, &heads, &width);
    double per_block = (double)caches * layers * tsr_kv_row_bytes(kv_type, heads, width) * block;
    double n = mem / per_block;
    return n > 1 << 24 ? 1 << 24 : (int)n;
}

/* A stats line every STATS_S seconds while the worker has work: token rates since the last line,
 * requests running and waiting, the KV cache in use. */
enum { STATS_S = 10 };
struct stats_line {
    double t;
    uint64_t prompt, decode;
};

static void log_stats(tsr_leader_t *l, struct stats_line *last)
{
    double now = tsr_now(), dt = now - last->t;
    if (dt < STATS_S) return;
    struct tsr_engine_stats s;
    int waiting;
    tsr_leader_stats(l, &s, &waiting);
    uint64_t dp = s.prompt_tokens - last->prompt, dd = s.decode_tokens - last->decode;
    if (dp || dd || s.n_running || waiting)
        tsr_log_info("stats: %.1f tok/s generated, %.1f tok/s prompt; %d running, %d waiting; "
                     "KV cache %.1f%% used (%d of %d blocks); %llu preemptions",
                     dd / dt, dp / dt, s.n_running, waiting,
                     s.n_blocks ? 100.0 * (s.n_blocks - s.n_free_blocks) / s.n_blocks : 0.0,
                     s.n_blocks - s.n_free_blocks, s.n_blocks, (unsigned long long)s.preemptions);
    *last = (struct stats_line){now, s.prompt_tokens, s.decode_tokens};
}

/* A clean stop: out of routing first (coordinators send nothing new; one that already picked us
 * is still served), then the requests running and waiting finish, up to drain_s seconds or a
 * second signal; then the caller leaves. A rolling restart then loses nothing. */
static void drain(tsr_leader_t *l, tsr_member_t *mem, const char *id, int drain_s)
{
    if (mem && tsr_member_drain(mem))
        tsr_log_warn("worker %s: cannot say in etcd that it drains: %s", id, tsr_last_error());
    int n = tsr_leader_calls(l);
    if (n == 0 || drain_s == 0) return;
    tsr_log_info("worker %s: draining: %d requests in flight, up to %d s", id, n, drain_s);
    double t0 = tsr_now();
    while (tsr_now() - t0 < drain_s && !tsr_cli_stop_insisted() && !tsr_leader_failed(l)) {
        usleep(50 * 1000);
        if ((n = tsr_leader_calls(l)) == 0) return;
    }
    tsr_log_warn("worker %s: %d requests still in flight; ending them", id, n);
}

/* What /metrics renders: the leader's families, labelled with the model's id. */
struct metrics_src {
    tsr_leader_t *l;
    char model_id[256];
};

static int render_metrics(void *arg, struct tsr_metrics_text *out)
{
    const struct metrics_src *m = arg;
    return tsr_leader_metrics_render(m->l, m->model_id, out);
}

int tsr_cmd_worker(int argc, char **argv)
{
    struct worker_args a;
    int rc = parse_args(argc, argv, &a);
    if (rc) return rc;
    int ranks = tsr_cli_model_ranks(&a.mdl);
    int by_etcd = a.group && ranks > 1; /* ranks started one by one, meeting through etcd */
    int leader = a.group ? a.group_rank == 0 : tsr_group_world_rank() == 0;
    /* Only the leader (rank 0) listens: under a launcher that spans hosts, the other ranks' hosts
     * need not own its address. */
    char bind[TSR_HOST_MAX + 8], adv[TSR_HOST_MAX];
    if ((leader &&
         (rc = tsr_cli_listen_resolve("worker", &a.listen, bind, sizeof bind, adv, sizeof adv))) ||
        ((leader || by_etcd) && a.etcd && (rc = tsr_cli_etcd_reachable("worker", a.etcd))))
        return rc;
    if (!a.group && (rc = tsr_cli_launch_ranks("worker", &a.mdl, argc, argv)) >= 0) return rc;
    tsr_cli_catch_signals();
    char idbuf[64];
    if (!a.id) {
        snprintf(idbuf, sizeof idbuf, "w%d", (int)getpid());
        a.id = idbuf;
    }
    struct tsr_group group = {0};
    int exit_code = 1;
    tsr_model_t *m = NULL;
    tsr_backend_t *b = NULL;
    tsr_engine_t *e = NULL;
    tsr_leader_t *l = NULL;
    tsr_metrics_http_t *metrics = NULL;
    struct metrics_src msrc = {0};
    tsr_etcd_t *etcd = NULL;
    tsr_member_t *mem = NULL;
    int64_t rdv_lease = 0; /* by_etcd: holds this rank's key in the group's rendezvous */
    tsr_etcd_keepalive_t *rdv_keep = NULL;
    double t0 = tsr_now();
    if ((rc = tsr_cli_model_open(&a.mdl, &m))) {
        fprintf(stderr, "tessera worker: %s\n", tsr_last_error());
        exit_code = rc == TSR_EINVAL ? 2 : 1;
        goto out;
    }
    if (tsr_cli_check_model_len("worker", m, a.srv.max_len)) {
        exit_code = 2;
        goto out;
    }
    if (ranks > 1 && !by_etcd &&
        (rc = tsr_group_join_mpi(m, a.mdl.tp, a.mdl.ep, a.mdl.pp, &group))) {
        fprintf(stderr, "tessera worker: %s\n", tsr_last_error());
        exit_code = rc == TSR_EINVAL ? 2 : 1;
        goto out;
    }
    a.dev.threads = tsr_cli_rank_threads(a.dev.threads, ranks, a.dev.device);
    if ((rc = tsr_group_backend(ranks > 1 && !by_etcd ? &group : NULL, a.dev.device, a.dev.threads,
                                &b))) {
        fprintf(stderr, "tessera worker: %s\n", tsr_last_error());
        exit_code = rc == TSR_EINVAL || rc == TSR_EUNSUPPORTED ? 2 : 1;
        goto out;
    }
    if (by_etcd) {
        struct tsr_group_rdv r = {.prefix = a.prefix,
                                  .name = a.group,
                                  .rank = a.group_rank,
                                  .timeout_ms = a.group_timeout * 1000};
        if ((rc = tsr_etcd_open(a.etcd, &etcd)) ||
            (rc = tsr_etcd_lease_grant(etcd, a.ttl, &rdv_lease)) ||
            (rc = tsr_etcd_keepalive_start(etcd, rdv_lease, a.ttl, NULL, NULL, &rdv_keep))) {
            fprintf(stderr, "tessera worker: etcd %s: %s\n", a.etcd, tsr_last_error());
            goto out;
        }
        r.etcd = etcd;
        r.lease = rdv_lease;
        if ((rc = tsr_group_join_etcd(m, a.mdl.tp, a.mdl.ep, a.mdl.pp, &r, b, &group))) {
            fprintf(stderr, "tessera worker: group %s, rank %d: %s\n", a.group, a.group_rank,
                    tsr_last_error());
            exit_code = rc == TSR_EINVAL || rc == TSR_EUNSUPPORTED ? 2 : 1;
            goto out;
        }
    }
    const struct tsr_model_config *c = tsr_model_config(m);
    int block = TSR_KV_BLOCK;
    double mem_util;
    enum tsr_dtype kv_type = tsr_cli_kv_type(&a.mdl, a.dev.device);
    struct tsr_engine_opts eo = {.n_blocks = kv_blocks(&a, c, block, kv_type, &mem_util),
                                 .mem_util = mem_util,
                                 .kv_type = kv_type,
                                 .block_size = block,
                                 .max_step_tokens = a.eng.step_tokens,
                                 .max_seqs = a.eng.max_seqs,
                                 .no_prefix_cache = a.eng.no_prefix_cache,
                                 .micro_batches = a.eng.micro_batches,
                                 .max_context = a.srv.max_len ? a.srv.max_len : c->n_ctx_train,
                                 .shard = ranks > 1 ? &group.shard : NULL};
    if (ranks > 1 && group.rank != 0) {
        struct tsr_runner_opts ro = tsr_engine_runner_opts(&eo);
        if ((rc = tsr_step_follow(m, b, &ro, &group)))
            fprintf(stderr, "tessera worker: rank %d: %s\n", group.rank, tsr_last_error());
        exit_code = rc ? 1 : 0;
        goto out;
    }
    if ((rc = tsr_engine_new(m, b, &eo, &e))) {
        fprintf(stderr, "tessera worker: %s\n", tsr_last_error());
        goto out;
    }
    int port = 0;
    if ((rc = tsr_leader_start(e, bind, &l, &port))) {
        fprintf(stderr, "tessera worker: %s\n", tsr_last_error());
        goto out;
    }
    if (a.metrics_port) {
        char mbind[TSR_HOST_MAX + 8];
        int mport = 0;
        msrc.l = l;
        if (a.served_name)
            snprintf(msrc.model_id, sizeof msrc.model_id, "%s", a.served_name);
        else
            tsr_model_id(a.mdl.model, msrc.model_id, sizeof msrc.model_id);
        tsr_net_join(a.listen.host, a.metrics_port, mbind, sizeof mbind);
        if ((rc = tsr_metrics_http_start(mbind, render_metrics, &msrc, &metrics, &mport))) {
            fprintf(stderr, "tessera worker: --metrics-port: %s\n", tsr_last_error());
            goto out;
        }
        tsr_log_info("worker %s: Prometheus metrics on http://%s/metrics", a.id, mbind);
    }
    char addr[TSR_HOST_MAX + 8]; /* what the coordinators dial */
    tsr_net_join(adv, port, addr, sizeof addr);
    char eps[48] = "";
    if (c->n_expert > 0)
        snprintf(eps, sizeof eps, ", experts over ep %d", a.mdl.ep ? a.mdl.ep : a.mdl.tp);
    tsr_log_info("worker %s: %s (tp %d x pp %d%s%s%s) loaded in %.1f s; KV cache %d blocks of %d "
                 "(%s); Worker service on %s",
                 a.id, tsr_model_name(m), a.mdl.tp, a.mdl.pp, eps,
                 a.mdl.quantize ? ", projections converted to " : "",
                 a.mdl.quantize ? tsr_dtype_name(a.mdl.quantize_type) : "", tsr_now() - t0,
                 tsr_engine_n_blocks(e), block, tsr_dtype_name(kv_type), addr);
    if (a.etcd) {
        struct tsr_member_opts mo = {.prefix = a.prefix,
                                     .id = a.id,
                                     .addr = addr,
                                     .model = tsr_model_name(m),
                                     .ranks = ranks,
                                     .tp = a.mdl.tp,
                                     .pp = a.mdl.pp,
                                     .ttl_s = a.ttl};
        if ((!etcd && (rc = tsr_etcd_open(a.etcd, &etcd))) ||
            (rc = tsr_member_join(etcd, &mo, &mem))) {
            fprintf(stderr, "tessera worker: etcd %s: %s\n", a.etcd, tsr_last_error());
            goto out;
        }
    }
    exit_code = 0;
    struct stats_line sl = {.t = tsr_now()};
    while (!tsr_cli_stop_requested()) {
        log_stats(l, &sl);
        if (mem && tsr_member_lost(mem)) {
            fprintf(stderr, "tessera worker %s: lost the etcd lease; exiting to re-register\n",
                    a.id);
            exit_code = 3;
            break;
        }
        if (tsr_leader_failed(l)) {
            fprintf(stderr, "tessera worker %s: the group failed; exiting\n", a.id);
            exit_code = 4;
            break;
        }
        double step_s = ranks > 1 && a.eng.step_timeout ? tsr_leader_step_seconds(l) : 0;
        if (step_s > a.eng.step_timeout) {
            /* The engine thread waits in a collective that will not end: leave routing (the
             * coordinators end or retry our requests) and exit without joining it; mpirun then
             * ends the other ranks. */
            fprintf(stderr,
                    "tessera worker %s: a step has run for %.0f s (--step-timeout %d): a rank of "
                    "the group is hung or unreachable; exiting\n",
                    a.id, step_s, a.eng.step_timeout);
            tsr_member_leave(mem);
            fflush(NULL);
            _exit(4);
        }
        usleep(100 * 1000);
    }
    if (exit_code == 0) drain(l, mem, a.id, a.srv.drain_s);
    tsr_log_info("worker %s: stopping", a.id);
out:
    tsr_member_leave(mem); /* leave routing first: nobody sends us more work */
    tsr_etcd_keepalive_stop(rdv_keep);
    if (rdv_lease) tsr_etcd_lease_revoke(etcd, rdv_lease); /* the next start need not wait */
    tsr_etcd_close(etcd);
    tsr_metrics_http_stop(metrics);
    tsr_leader_stop(l);
    if (ranks > 1 && exit_code != 0) {
        /* Leave without finalizing MPI: mpirun then ends the other ranks. */
        fflush(stdout);
        _exit(exit_code);
    }
    tsr_engine_free(e); /* on the leader of a group, this also stops the followers */
    tsr_backend_free(b);
    tsr_group_leave(&group);
    tsr_model_free(m);
    return exit_code;
}
