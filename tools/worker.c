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
    const char *model, *etcd, *id, *prefix, *device;
    const char *group; /* --group: started without MPI, meeting through etcd */
    struct tsr_cli_listen listen;
    int threads, tp, pp, kv_blocks, max_seqs, step_tokens, ttl, step_timeout;
    int group_rank, group_size, group_timeout, max_len, drain_s;
    int metrics_port; /* 0: no /metrics */
    double kv_mem, mem_util;
};

static void worker_usage(FILE *f)
{
    fprintf(f,
            "usage: tessera worker [--model M] [--etcd URLS] [--id ID] [--host H] [--port P]\n"
            "                      [--advertise-address A]\n"
            "                      [--tp N] [--pp M] [--threads N]\n"
            "                      [--kv-blocks N | --kv-mem GB | --gpu-memory-utilization F]\n"
            "                      [--max-seqs N] [--step-tokens N] [--max-model-len N]\n"
            "                      [--prefix P] [--ttl S] [--drain-timeout S]\n"
            "                      [--metrics-port P]\n"
            "                      [--device cpu|cuda[:N]]\n"
            "                      [--group NAME --group-rank R [--group-size N]]\n\n"
            "  --etcd         register in this etcd (endpoints, comma-separated; default\n"
            "                 $ETCDCTL_ENDPOINTS) and serve the group the controller assigns;\n"
            "                 without it the worker just serves its Worker API\n"
            "  --id           this unit's name in etcd (default w<pid>)\n"
            "  --port P     the leader's Worker service (default 0: any free "
            "port)\n" TSR_CLI_LISTEN_HELP
            "  --kv-blocks    KV cache size in 16-position blocks (default from --kv-mem)\n"
            "  --kv-mem       KV cache size in GiB (default on the CPU: 10%% of available memory,\n"
            "                 at most 2)\n"
            "  --gpu-memory-utilization F  on a GPU, the fraction of its memory to use (default\n"
            "                 0.9): the KV cache gets what is free once the weights are in, less\n"
            "                 1 - F of the whole GPU (default there unless --kv-blocks/--kv-mem)\n"
            "  --max-seqs     sequences in the running batch (default 64); more wait\n"
            "  --step-tokens  token budget of one step (default 256)\n" TSR_CLI_MODEL_LEN_HELP
            "  --metrics-port P  serve Prometheus metrics at http://HOST:P/metrics (the leader,\n"
            "                 rank 0, only; on --host; default: off)\n"
            "  --ttl          etcd lease TTL in seconds (default 3): how long a dead worker\n"
            "                 can stay in routing\n"
            "  --drain-timeout S  on SIGTERM/SIGINT, leave routing at once and let requests in\n"
            "                 flight finish, up to S seconds (default 30; 0: end them now);\n"
            "                 a second signal ends them now\n"
            "  --step-timeout S  a group whose step runs longer (a rank hung or unreachable)\n"
            "                 leaves routing and exits, so its requests end UNAVAILABLE and its\n"
            "                 supervisor restarts it (default 30; 0: never)\n"
            "  --device       cpu (default) or cuda[:N] (a group's ranks take GPUs N, N+1, ...;\n"
            "                 tensor-parallel traffic then goes over NCCL)\n"
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
    int ranks = a->tp * a->pp;
    const char *why = NULL;
    if (!a->group) {
        if (a->group_rank >= 0 || a->group_size >= 0)
            why = "--group-rank and --group-size need --group";
    } else if (a->group_rank < 0) {
        why = "--group needs --group-rank";
    } else if (!a->etcd) {
        why = "--group: the ranks meet through etcd; give --etcd (or set ETCDCTL_ENDPOINTS)";
    } else if (!strcmp(a->device, "cpu")) {
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
                a->tp, a->pp, ranks, a->group_size);
        return 2;
    }
    if (a->group && a->group_rank >= ranks) {
        fprintf(stderr, "tessera worker: --group-rank %d: tp %d x pp %d has ranks 0 to %d\n",
                a->group_rank, a->tp, a->pp, ranks - 1);
        return 2;
    }
    return 0;
}

static int parse_args(int argc, char **argv, struct worker_args *a)
{
    enum {
        O_KVB = 256,
        O_KVM,
        O_SEQS,
        O_STEP,
        O_PREFIX,
        O_TTL,
        O_TP,
        O_PP,
        O_DEVICE,
        O_STIME,
        O_GROUP,
        O_GRANK,
        O_GSIZE,
        O_GTIME,
        O_MLEN,
        O_DRAIN,
        O_MEMU,
        O_METRICS
    };
    static const struct option opts[] = {{"model", required_argument, 0, 'm'},
                                         {"etcd", required_argument, 0, 'e'},
                                         {"id", required_argument, 0, 'i'},
                                         TSR_CLI_LISTEN_OPTIONS,
                                         {"threads", required_argument, 0, 'j'},
                                         {"kv-blocks", required_argument, 0, O_KVB},
                                         {"kv-mem", required_argument, 0, O_KVM},
                                         {"max-seqs", required_argument, 0, O_SEQS},
                                         {"step-tokens", required_argument, 0, O_STEP},
                                         {"prefix", required_argument, 0, O_PREFIX},
                                         {"ttl", required_argument, 0, O_TTL},
                                         {"step-timeout", required_argument, 0, O_STIME},
                                         {"tp", required_argument, 0, O_TP},
                                         {"pp", required_argument, 0, O_PP},
                                         {"device", required_argument, 0, O_DEVICE},
                                         {"group", required_argument, 0, O_GROUP},
                                         {"group-rank", required_argument, 0, O_GRANK},
                                         {"group-size", required_argument, 0, O_GSIZE},
                                         {"group-timeout", required_argument, 0, O_GTIME},
                                         {"max-model-len", required_argument, 0, O_MLEN},
                                         {"drain-timeout", required_argument, 0, O_DRAIN},
                                         {"gpu-memory-utilization", required_argument, 0, O_MEMU},
                                         {"metrics-port", required_argument, 0, O_METRICS},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    memset(a, 0, sizeof *a);
    a->model = getenv("TESSERA_MODEL") ? getenv("TESSERA_MODEL") : TSR_DEFAULT_MODEL;
    a->listen.host = "127.0.0.1";
    a->prefix = "/tessera";
    a->device = "cpu";
    a->tp = a->pp = 1;
    a->max_seqs = 64;
    a->step_tokens = 256;
    a->ttl = 3;
    a->step_timeout = 30;
    a->group_rank = a->group_size = -1;
    a->group_timeout = 300;
    a->drain_s = 30;
    long l;
    double d;
    int c, rc;
    optind = 1;
    while ((c = getopt_long(argc, argv, "m:e:i:j:h", opts, NULL)) != -1) {
        if ((rc = tsr_cli_listen_opt(c, optarg, &a->listen))) {
            if (rc == 2) return 2;
            continue;
        }
        switch (c) {
        case 'm':
            a->model = optarg;
            break;
        case 'e':
            a->etcd = optarg;
            break;
        case 'i':
            a->id = optarg;
            break;
        case 'j':
            if (!(rc = tsr_cli_int("--threads", optarg, 1, 1024, &l))) a->threads = l;
            break;
        case O_KVB:
            if (!(rc = tsr_cli_int("--kv-blocks", optarg, 1, 1 << 24, &l))) a->kv_blocks = l;
            break;
        case O_KVM:
            if (!(rc = tsr_cli_float("--kv-mem", optarg, 1e-3, 1 << 20, &d))) a->kv_mem = d;
            break;
        case O_SEQS:
            if (!(rc = tsr_cli_int("--max-seqs", optarg, 1, 4096, &l))) a->max_seqs = l;
            break;
        case O_STEP:
            if (!(rc = tsr_cli_int("--step-tokens", optarg, 1, 1 << 16, &l))) a->step_tokens = l;
            break;
        case O_PREFIX:
            a->prefix = optarg;
            break;
        case O_TTL:
            if (!(rc = tsr_cli_int("--ttl", optarg, 1, 3600, &l))) a->ttl = l;
            break;
        case O_STIME:
            if (!(rc = tsr_cli_int("--step-timeout", optarg, 0, 86400, &l))) a->step_timeout = l;
            break;
        case O_TP:
            if (!(rc = tsr_cli_int("--tp", optarg, 1, 1024, &l))) a->tp = l;
            break;
        case O_PP:
            if (!(rc = tsr_cli_int("--pp", optarg, 1, 1024, &l))) a->pp = l;
            break;
        case O_DEVICE:
            a->device = optarg;
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
        case O_MLEN:
            if (!(rc = tsr_cli_int("--max-model-len", optarg, 1, 1 << 30, &l))) a->max_len = l;
            break;
        case O_MEMU:
            if (!(rc = tsr_cli_float("--gpu-memory-utilization", optarg, 0.01, 1, &d)))
                a->mem_util = d;
            break;
        case O_DRAIN:
            if (!(rc = tsr_cli_int("--drain-timeout", optarg, 0, 3600, &l))) a->drain_s = l;
            break;
        case O_METRICS:
            if (!(rc = tsr_cli_int("--metrics-port", optarg, 1, 65535, &l))) a->metrics_port = l;
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
    if (a->mem_util > 0 && (a->kv_blocks || a->kv_mem > 0 || !strcmp(a->device, "cpu"))) {
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
 * over the bytes of one block on this rank (f32 K and V of every layer; KV heads split over tp).
 * 0 on a GPU without either: the runner sizes it from the GPU's free memory (*mem_util). */
static int kv_blocks(const struct worker_args *a, const struct tsr_model_config *c, int block,
                     double *mem_util)
{
    *mem_util = 0;
    if (a->kv_blocks) return a->kv_blocks;
    if (a->kv_mem <= 0 && strcmp(a->device, "cpu")) {
        *mem_util = a->mem_util > 0 ? a->mem_util : 0.9;
        return 0;
    }
    double mem = a->kv_mem * 1073741824.0;
    if (mem <= 0) {
        mem = mem_available() * 0.10;
        if (mem <= 0 || mem > 2147483648.0) mem = 2147483648.0;
    }
    int kv_heads = c->n_kv_head >= a->tp ? c->n_kv_head / a->tp : 1;
    int layers = (c->n_layer + a->pp - 1) / a->pp;
    double per_block = 2.0 * layers * kv_heads * c->head_dim * sizeof(float) * block;
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
    int ranks = a.tp * a.pp;
    int by_etcd = a.group && ranks > 1; /* ranks started one by one, meeting through etcd */
    int leader = a.group ? a.group_rank == 0 : tsr_group_world_rank() == 0;
    /* Only the leader (rank 0) listens: under a launcher that spans hosts, the other ranks' hosts
     * need not own its address. */
    char bind[TSR_HOST_MAX + 8], adv[TSR_HOST_MAX];
    if ((leader &&
         (rc = tsr_cli_listen_resolve("worker", &a.listen, bind, sizeof bind, adv, sizeof adv))) ||
        ((leader || by_etcd) && a.etcd && (rc = tsr_cli_etcd_reachable("worker", a.etcd))))
        return rc;
    if (!a.group && (rc = tsr_cli_launch_ranks("worker", a.model, a.tp, a.pp, argc, argv)) >= 0)
        return rc;
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
    if ((rc = tsr_model_open(a.model, &m))) {
        fprintf(stderr, "tessera worker: %s\n", tsr_last_error());
        exit_code = rc == TSR_EINVAL ? 2 : 1;
        goto out;
    }
    if (tsr_cli_check_model_len("worker", m, a.max_len)) {
        exit_code = 2;
        goto out;
    }
    if (ranks > 1 && !by_etcd && (rc = tsr_group_join_mpi(m, a.tp, a.pp, &group))) {
        fprintf(stderr, "tessera worker: %s\n", tsr_last_error());
        exit_code = rc == TSR_EINVAL ? 2 : 1;
        goto out;
    }
    a.threads = tsr_cli_rank_threads(a.threads, ranks, a.device);
    if ((rc = tsr_group_backend(ranks > 1 && !by_etcd ? &group : NULL, a.device, a.threads, &b))) {
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
        if ((rc = tsr_group_join_etcd(m, a.tp, a.pp, &r, b, &group))) {
            fprintf(stderr, "tessera worker: group %s, rank %d: %s\n", a.group, a.group_rank,
                    tsr_last_error());
            exit_code = rc == TSR_EINVAL || rc == TSR_EUNSUPPORTED ? 2 : 1;
            goto out;
        }
    }
    const struct tsr_model_config *c = tsr_model_config(m);
    int block = 16;
    double mem_util;
    struct tsr_engine_opts eo = {.n_blocks = kv_blocks(&a, c, block, &mem_util),
                                 .mem_util = mem_util,
                                 .block_size = block,
                                 .max_step_tokens = a.step_tokens,
                                 .max_seqs = a.max_seqs,
                                 .max_context = a.max_len ? a.max_len : c->n_ctx_train,
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
        tsr_model_id(a.model, msrc.model_id, sizeof msrc.model_id);
        tsr_net_join(a.listen.host, a.metrics_port, mbind, sizeof mbind);
        if ((rc = tsr_metrics_http_start(mbind, render_metrics, &msrc, &metrics, &mport))) {
            fprintf(stderr, "tessera worker: --metrics-port: %s\n", tsr_last_error());
            goto out;
        }
        tsr_log_info("worker %s: Prometheus metrics on http://%s/metrics", a.id, mbind);
    }
    char addr[TSR_HOST_MAX + 8]; /* what the coordinators dial */
    tsr_net_join(adv, port, addr, sizeof addr);
    tsr_log_info("worker %s: %s (tp %d x pp %d) loaded in %.1f s; KV cache %d blocks of %d; "
                 "Worker service on %s",
                 a.id, tsr_model_name(m), a.tp, a.pp, tsr_now() - t0, tsr_engine_n_blocks(e), block,
                 addr);
    if (a.etcd) {
        struct tsr_member_opts mo = {.prefix = a.prefix,
                                     .id = a.id,
                                     .addr = addr,
                                     .model = tsr_model_name(m),
                                     .ranks = ranks,
                                     .tp = a.tp,
                                     .pp = a.pp,
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
        double step_s = ranks > 1 && a.step_timeout ? tsr_leader_step_seconds(l) : 0;
        if (step_s > a.step_timeout) {
            /* The engine thread waits in a collective that will not end: leave routing (the
             * coordinators end or retry our requests) and exit without joining it; mpirun then
             * ends the other ranks. */
            fprintf(stderr,
                    "tessera worker %s: a step has run for %.0f s (--step-timeout %d): a rank of "
                    "the group is hung or unreachable; exiting\n",
                    a.id, step_s, a.step_timeout);
            tsr_member_leave(mem);
            fflush(NULL);
            _exit(4);
        }
        usleep(100 * 1000);
    }
    if (exit_code == 0) drain(l, mem, a.id, a.drain_s);
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
