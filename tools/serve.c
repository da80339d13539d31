/* `tessera serve`: the whole cluster on one machine (DESIGN §1, launchers). A private etcd (unless
 * --etcd), one coordinator and R worker units, each a process of its own (mpirun for tp x pp > 1),
 * supervised: a process that dies is restarted (after 1 s, backing off to 10 s while it keeps
 * dying young); one that exits 2 (a configuration error) on its first start stops serve, while a 2
 * on a restart (etcd unreachable for now) is retried. Logs and serve.json (addresses and pids,
 * rewritten on every restart) are in --dir. SIGINT/SIGTERM stops everything, draining first: the
 * coordinator refuses new requests and lets those in flight finish (up to --drain-timeout) while
 * the workers still serve; then the workers stop. A second signal skips the drain. */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <jansson.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/etcd.h"
#include "common/log.h"
#include "common/net.h"
#include "common/rpc.h"
#include "common/status.h"
#include "grpc/health/v1/health.pb-c.h"
#include "tessera/v1/inference.pb-c.h"
#include "tools/cli.h"

enum { MAX_REPLICAS = 64, MAX_ARGS = 64 };

struct child {
    char name[32], log[PATH_MAX + 32], device[32];
    char metrics_port[8], metrics[TSR_HOST_MAX + 8]; /* a worker's /metrics: "" without */
    char *argv[MAX_ARGS];
    pid_t pid;
    double started, restart_at;
    int backoff_s, runs; /* runs: how many times it was started */
};

struct serve {
    char exe[PATH_MAX], dir[PATH_MAX - 64], address[TSR_HOST_MAX + 8], etcd[1024];
    char http_address[TSR_HOST_MAX + 8]; /* "" without --http-port */
    struct tsr_etcd_server etcd_srv;
    struct child coord, workers[MAX_REPLICAS];
    int replicas, etcd_died, fatal; /* fatal: a child refused its configuration */
    int drain_s;
};

static void serve_usage(FILE *f)
{
    fprintf(f,
            "usage: tessera serve [--model M] [--tp N] [--pp M] [--ep E] [--replicas R]\n"
            "                     [--port P] [--host H] [--advertise-address A] [--etcd URLS]\n"
            "                     [--dir DIR] [--threads T] [--kv-blocks B] [--kv-mem GB]\n"
            "                     [--max-seqs S] [--gpu-memory-utilization F]\n"
            "                     [--device cpu|cuda[:N]]\n"
            "                     [--step-tokens N] [--step-timeout S] [--max-queue Q]\n"
            "                     [--drain-timeout S] [--no-prefix-caching] [--micro-batches N]\n"
            "                     [--http-port P] [--served-model-name NAME]\n"
            "                     [--max-model-len N] [--api-key-file F]\n"
            "                     [--tls-cert F --tls-key F] [--tls-client-ca F]\n"
            "                     [--routing cache|load] [--no-migration] [--metrics-port P]\n\n"
            "Runs a private etcd (unless --etcd or $ETCDCTL_ENDPOINTS), a coordinator on\n"
            "H:P (default 127.0.0.1:50051) and R worker units of tp x pp ranks each (default\n"
            "1 x 1 x 1, their Worker services on H, any port), and supervises them.\n"
            "Ask it with `tessera client --address A:P --prompt ...`.\n"
            "  --port P     the coordinator's public gRPC API (default 50051)\n" TSR_CLI_HTTP_HELP
                TSR_CLI_LISTEN_HELP
            "  --replicas R  worker units, each a whole copy of the model (default 1)\n"
            "  --etcd URLS  use this etcd (endpoints, comma-separated) instead of a private one\n"
            "  --dir DIR    logs and serve.json (default a new /tmp/tessera-serve.XXXXXX)\n"
            "  --max-queue Q  requests in flight and queued at the coordinator (default 256)\n"
            "  --routing cache|load  how the coordinator picks a replica: counting the prompt\n"
            "               blocks each likely holds in its prefix cache (default), or by load\n"
            "  --metrics-port P  replica r's leader serves Prometheus metrics on H:P+r/metrics\n"
            "               (serve.json lists them; the coordinator's are on --http-port)\n"
            "  --no-migration  a stream whose replica dies or drains after it sent tokens ends\n"
            "               UNAVAILABLE (default: it goes on from another replica, exactly)\n"
            "  --served-model-name NAME  the model's id in ListModels, /v1/models and requests\n"
            "               (default: the file's name without .gguf)\n" TSR_CLI_MODEL_HELP
                TSR_CLI_DEVICE_HELP "               (replica r takes GPUs N + r x tp x pp on, tp x "
            "pp of them each)\n" TSR_CLI_ENGINE_HELP TSR_CLI_SERVING_HELP
            "               (the coordinator drains first, while the workers still "
            "serve)\n" TSR_CLI_SECURITY_HELP
            "The key and the TLS files go to the coordinator (the key through its environment,\n"
            "never its command line); serve checks on it with them, pinning --tls-cert (and\n"
            "showing it as its client certificate under --tls-client-ca).\n");
}

static pid_t spawn(struct child *c)
{
    pid_t pid = fork();
    if (pid < 0) return -1;
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGTERM); /* never outlive the supervisor */
        setpgid(0, 0); /* a terminal's Ctrl-C reaches serve alone, which drains, then stops us */
        int fd = open(c->log, O_WRONLY | O_CREAT | O_APPEND, 0644);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
            close(fd);
        }
        int null = open("/dev/null", O_RDONLY);
        if (null >= 0) dup2(null, 0);
        execv(c->argv[0], c->argv);
        fprintf(stderr, "exec %s: %s\n", c->argv[0], strerror(errno));
        _exit(127);
    }
    c->pid = pid;
    c->started = tsr_now();
    c->runs++;
    return pid;
}

static void write_state(struct serve *s)
{
    json_t *w = json_array();
    for (int i = 0; i < s->replicas; i++) {
        const struct child *c = &s->workers[i];
        json_t *o = json_pack("{s:s, s:i, s:s}", "id", c->name, "pid", (int)c->pid, "log", c->log);
        if (o && c->metrics[0]) json_object_set_new(o, "metrics_address", json_string(c->metrics));
        json_array_append_new(w, o);
    }
    json_t *j = json_pack("{s:s, s:s, s:i, s:s, s:o}", "address", s->address, "etcd", s->etcd,
                          "coordinator_pid", (int)s->coord.pid, "dir", s->dir, "workers", w);
    if (j && s->http_address[0])
        json_object_set_new(j, "http_address", json_string(s->http_address));
    char tmp[PATH_MAX + 16], path[PATH_MAX + 16];
    snprintf(tmp, sizeof tmp, "%s/serve.json.tmp", s->dir);
    snprintf(path, sizeof path, "%s/serve.json", s->dir);
    if (j && !json_dump_file(j, tmp, JSON_INDENT(2))) rename(tmp, path); /* atomic for readers */
    json_decref(j);
}

/* 1 when the coordinator answers SERVING and reports `want` ready replicas. */
static int cluster_ready(tsr_rpc_channel_t *ch, int want, int *ready)
{
    Tessera__V1__ListModelsRequest r = TESSERA__V1__LIST_MODELS_REQUEST__INIT;
    void *resp = NULL;
    size_t len;
    int code = -1;
    *ready = 0;
    if (tsr_rpc_unary(ch, "/tessera.v1.Inference/ListModels", &r.base, 1000, &resp, &len, &code,
                      NULL) ||
        code != TSR_RPC_OK || !resp) {
        free(resp);
        return 0;
    }
    Tessera__V1__ListModelsResponse *m = tessera__v1__list_models_response__unpack(NULL, len, resp);
    free(resp);
    if (m && m->n_models > 0) *ready = m->models[0]->ready_replicas;
    if (m) tessera__v1__list_models_response__free_unpacked(m, NULL);
    return *ready >= want;
}

/* SIGTERM to each child in all[0, n), then SIGKILL to those still there after grace_s. */
static void stop_children(struct child **all, int n, double grace_s)
{
    for (int i = 0; i < n; i++)
        if (all[i]->pid > 0) kill(all[i]->pid, SIGTERM);
    double t0 = tsr_now();
    for (;;) {
        int left = 0;
        for (int i = 0; i < n; i++) {
            if (all[i]->pid <= 0) continue;
            if (waitpid(all[i]->pid, NULL, WNOHANG) == all[i]->pid)
                all[i]->pid = 0;
            else
                left++;
        }
        if (!left) break;
        if (tsr_now() - t0 > grace_s) {
            for (int i = 0; i < n; i++)
                if (all[i]->pid > 0) {
                    fprintf(stderr, "tessera serve: %s did not stop in %.0f s; killing it\n",
                            all[i]->name, grace_s);
                    kill(all[i]->pid, SIGKILL);
                    waitpid(all[i]->pid, NULL, 0);
                    all[i]->pid = 0;
                }
            break;
        }
        usleep(50 * 1000);
    }
}

/* The coordinator first, given the drain time to let requests in flight finish while the workers
 * still serve them; then the workers; then etcd. */
static void stop_all(struct serve *s)
{
    struct child *coord = &s->coord, *workers[MAX_REPLICAS];
    for (int i = 0; i < s->replicas; i++) workers[i] = &s->workers[i];
    stop_children(&coord, 1, s->drain_s + 10);
    stop_children(workers, s->replicas, 10);
    tsr_etcd_server_stop(&s->etcd_srv);
}

/* Reaps children that ended and schedules their restart. */
static void supervise(struct serve *s)
{
    int st;
    pid_t pid;
    while ((pid = waitpid(-1, &st, WNOHANG)) > 0) {
        if (pid == s->etcd_srv.pid) {
            fprintf(stderr, "tessera serve: etcd exited (log %s/etcd.log); stopping\n", s->dir);
            s->etcd_srv.pid = 0;
            s->etcd_died = 1;
            continue;
        }
        struct child *c = pid == s->coord.pid ? &s->coord : NULL;
        for (int i = 0; i < s->replicas && !c; i++)
            if (pid == s->workers[i].pid) c = &s->workers[i];
        if (!c) continue;
        double lived = tsr_now() - c->started;
        c->backoff_s = lived > 30 ? 1 : (c->backoff_s ? 2 * c->backoff_s : 1);
        if (c->backoff_s > 10) c->backoff_s = 10;
        c->pid = 0;
        c->restart_at = tsr_now() + c->backoff_s;
        if (WIFEXITED(st) && WEXITSTATUS(st) == 2 && c->runs == 1) {
            /* a usage or configuration error: restarting cannot help. Only on a first run: the
             * same arguments were accepted before, so a 2 on a restart is something outside that
             * went away for now (etcd unreachable while it restarts), and restarting does help. */
            fprintf(stderr, "tessera serve: %s refused its configuration (log %s); stopping\n",
                    c->name, c->log);
            s->fatal = 1;
            continue;
        }
        if (WIFSIGNALED(st))
            fprintf(stderr,
                    "tessera serve: %s was killed by signal %d; restarting in %d s (log %s)\n",
                    c->name, WTERMSIG(st), c->backoff_s, c->log);
        else
            fprintf(stderr,
                    "tessera serve: %s exited with status %d; restarting in %d s (log %s)\n",
                    c->name, WEXITSTATUS(st), c->backoff_s, c->log);
    }
    struct child *all[MAX_REPLICAS + 1];
    int n = 0;
    all[n++] = &s->coord;
    for (int i = 0; i < s->replicas; i++) all[n++] = &s->workers[i];
    for (int i = 0; i < n; i++)
        if (all[i]->pid == 0 && tsr_now() >= all[i]->restart_at) {
            if (spawn(all[i]) < 0)
                fprintf(stderr, "tessera serve: cannot restart %s: %s\n", all[i]->name,
                        strerror(errno));
            else
                write_state(s);
        }
}

int tsr_cmd_serve(int argc, char **argv)
{
    enum {
        O_REPL = 256,
        O_ETCD,
        O_DIR,
        O_QUEUE,
        O_HTTP,
        O_NAME,
        O_ROUTING,
        O_NO_MIGRATION,
        O_METRICS
    };
    static const struct option opts[] = {TSR_CLI_MODEL_OPTIONS,
                                         TSR_CLI_DEVICE_OPTIONS,
                                         TSR_CLI_ENGINE_OPTIONS,
                                         TSR_CLI_SERVING_OPTIONS,
                                         TSR_CLI_LISTEN_OPTIONS,
                                         TSR_CLI_SECURITY_OPTIONS,
                                         {"replicas", required_argument, 0, O_REPL},
                                         {"etcd", required_argument, 0, O_ETCD},
                                         {"dir", required_argument, 0, O_DIR},
                                         {"max-queue", required_argument, 0, O_QUEUE},
                                         {"http-port", required_argument, 0, O_HTTP},
                                         {"served-model-name", required_argument, 0, O_NAME},
                                         {"routing", required_argument, 0, O_ROUTING},
                                         {"no-migration", no_argument, 0, O_NO_MIGRATION},
                                         {"metrics-port", required_argument, 0, O_METRICS},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    static struct serve s; /* large (paths); one per process */
    memset(&s, 0, sizeof s);
    struct tsr_cli_model mdl;
    struct tsr_cli_device dev;
    struct tsr_cli_engine eng;
    struct tsr_cli_serving srv;
    tsr_cli_model_init(&mdl);
    tsr_cli_device_init(&dev);
    tsr_cli_engine_init(&eng);
    tsr_cli_serving_init(&srv);
    const char *etcd = NULL, *dir = NULL, *queue = "256", *served_name = NULL, *routing = NULL;
    int http_port = -1, metrics_port = 0, no_migration = 0, c, rc;
    struct tsr_cli_listen listen = {.host = "127.0.0.1", .port = 50051};
    struct tsr_cli_security sec = {0};
    long l;
    s.replicas = 1;
    optind = 1;
    while ((c = getopt_long(argc, argv, "m:j:h", opts, NULL)) != -1) {
        if ((rc = tsr_cli_listen_opt(c, optarg, &listen)) ||
            (rc = tsr_cli_model_opt(c, optarg, &mdl)) ||
            (rc = tsr_cli_device_opt(c, optarg, &dev)) ||
            (rc = tsr_cli_engine_opt(c, optarg, &eng)) ||
            (rc = tsr_cli_serving_opt(c, optarg, &srv))) {
            if (rc == 2) return 2;
            continue;
        }
        if (tsr_cli_security_opt(c, optarg, &sec)) continue;
        switch (c) {
        case O_REPL:
            if (!(rc = tsr_cli_int("--replicas", optarg, 1, MAX_REPLICAS, &l))) s.replicas = l;
            break;
        case O_ETCD:
            etcd = optarg;
            break;
        case O_DIR:
            dir = optarg;
            break;
        case O_QUEUE:
            if (!(rc = tsr_cli_int("--max-queue", optarg, 1, 1 << 20, &l))) queue = optarg;
            break;
        case O_HTTP:
            if (!(rc = tsr_cli_int("--http-port", optarg, 1, 65535, &l))) http_port = l;
            break;
        case O_NAME:
            if (!(rc = tsr_cli_served_name("serve", optarg))) served_name = optarg;
            break;
        case O_ROUTING:
            routing = optarg; /* the coordinator checks it */
            break;
        case O_NO_MIGRATION:
            no_migration = 1;
            break;
        case O_METRICS:
            if (!(rc = tsr_cli_int("--metrics-port", optarg, 1, 65535, &l))) metrics_port = l;
            break;
        case 'h':
            serve_usage(stdout);
            return 0;
        default:
            serve_usage(stderr);
            return 2;
        }
        if (rc) return rc;
    }
    s.drain_s = srv.drain_s;
    const char *model = mdl.model, *device = dev.device, *max_len = srv.max_len_given;
    int tp = mdl.tp, pp = mdl.pp, threads = dev.threads, group_ranks = tsr_cli_model_ranks(&mdl);
    if (optind < argc) {
        fprintf(stderr, "tessera serve: unexpected argument '%s'\n", argv[optind]);
        return 2;
    }
    if (metrics_port && metrics_port + s.replicas - 1 > 65535) {
        fprintf(stderr, "tessera serve: --metrics-port %d: %d replicas need ports up to %d\n",
                metrics_port, s.replicas, metrics_port + s.replicas - 1);
        return 2;
    }
    /* Children run elsewhere in the tree: give them absolute paths. */
    char model_abs[PATH_MAX];
    if (strncmp(model, "synthetic:", 10) && realpath(model, model_abs))
        model = model_abs;
    else if (strncmp(model, "synthetic:", 10)) {
        fprintf(stderr,
                "tessera serve: model %s: %s (run scripts/fetch_model.sh for the default)\n", model,
                strerror(errno));
        return 2;
    }
    /* One clear error for a model that will not load or a layout that does not divide, before
     * any process starts. */
    if (tsr_cli_check_layout("serve", model, &mdl)) return 2;
    /* The key and the TLS files, checked here: one clear error before any process starts. The
     * coordinator gets absolute paths (it runs elsewhere in the tree). */
    static char *api_key;
    static struct tsr_tls_files tls;
    static char key_file_abs[PATH_MAX], cert_abs[PATH_MAX], key_abs[PATH_MAX], ca_abs[PATH_MAX];
    if (tsr_cli_security_load("serve", &sec, &api_key, &tls)) return 2;
    if ((sec.api_key_file && !realpath(sec.api_key_file, key_file_abs)) ||
        (sec.tls_cert && !realpath(sec.tls_cert, cert_abs)) ||
        (sec.tls_key && !realpath(sec.tls_key, key_abs)) ||
        (sec.tls_client_ca && !realpath(sec.tls_client_ca, ca_abs))) {
        fprintf(stderr, "tessera serve: a TLS or key file: %s\n", strerror(errno));
        return 2;
    }
    /* a key from the command line or the environment reaches the coordinator by its environment */
    if (api_key && !sec.api_key_file) setenv("TESSERA_API_KEY", api_key, 1);
    if ((etcd = tsr_cli_etcd(etcd)) && strlen(etcd) >= sizeof s.etcd) {
        fprintf(stderr, "tessera serve: --etcd: over %zu bytes of endpoints\n", sizeof s.etcd - 1);
        return 2;
    }
    char bind[TSR_HOST_MAX + 8], adv[TSR_HOST_MAX], port_s[16];
    if (tsr_cli_listen_resolve("serve", &listen, bind, sizeof bind, adv, sizeof adv) ||
        (etcd && tsr_cli_etcd_reachable("serve", etcd)))
        return 2;
    if (listen.port == 0) {
        fprintf(stderr, "tessera serve: --port 0: give the coordinator a port clients can find\n");
        return 2;
    }
    snprintf(port_s, sizeof port_s, "%d", listen.port);
    ssize_t len = readlink("/proc/self/exe", s.exe, sizeof s.exe - 1);
    if (len <= 0) {
        fprintf(stderr, "tessera serve: cannot find my own executable\n");
        return 1;
    }
    s.exe[len] = 0;
    if (dir) {
        char real[PATH_MAX];
        mkdir(dir, 0755);
        if (!realpath(dir, real) || strlen(real) >= sizeof s.dir) {
            fprintf(stderr, "tessera serve: --dir %s: %s\n", dir,
                    errno ? strerror(errno) : "path too long");
            return 2;
        }
        memcpy(s.dir, real, strlen(real) + 1);
    } else {
        snprintf(s.dir, sizeof s.dir, "/tmp/tessera-serve.XXXXXX");
        if (!mkdtemp(s.dir)) {
            fprintf(stderr, "tessera serve: cannot make a directory in /tmp: %s\n",
                    strerror(errno));
            return 1;
        }
    }
    tsr_cli_catch_signals();
    if (etcd)
        snprintf(s.etcd, sizeof s.etcd, "%s", etcd);
    else {
        fprintf(stderr, "tessera serve: starting etcd\n");
        if (tsr_etcd_server_start(s.dir, &s.etcd_srv)) {
            fprintf(stderr, "tessera serve: %s\n", tsr_last_error());
            return 1;
        }
        snprintf(s.etcd, sizeof s.etcd, "%s", s.etcd_srv.endpoint);
        /* the private etcd is plain and open: etcdctl's TLS and user settings are for others */
        const char *etcdctl_env[] = {"ETCDCTL_CACERT", "ETCDCTL_CERT", "ETCDCTL_KEY",
                                     "ETCDCTL_USER", "ETCDCTL_PASSWORD"};
        for (size_t i = 0; i < sizeof etcdctl_env / sizeof *etcdctl_env; i++)
            unsetenv(etcdctl_env[i]);
    }
    tsr_net_join(adv, listen.port, s.address, sizeof s.address);
    if (!threads) {
        long cores = sysconf(_SC_NPROCESSORS_ONLN);
        long ranks = (long)s.replicas * group_ranks;
        threads = cores > ranks ? (int)(cores / ranks) : 1;
    }
    static char tp_s[16], pp_s[16], ep_s[16], threads_s[16], drain_s[16], http_s[16];
    snprintf(http_s, sizeof http_s, "%d", http_port);
    if (http_port > 0) tsr_net_join(adv, http_port, s.http_address, sizeof s.http_address);
    snprintf(drain_s, sizeof drain_s, "%d", s.drain_s);
    snprintf(tp_s, sizeof tp_s, "%d", tp);
    snprintf(pp_s, sizeof pp_s, "%d", pp);
    snprintf(ep_s, sizeof ep_s, "%d", mdl.ep);
    snprintf(threads_s, sizeof threads_s, "%d", threads);

    struct child *co = &s.coord;
    snprintf(co->name, sizeof co->name, "coordinator");
    snprintf(co->log, sizeof co->log, "%s/coordinator.log", s.dir);
    char **a = co->argv;
    int k = 0;
    const char *cargs[] = {s.exe,
                           "coordinator",
                           "--etcd",
                           s.etcd,
                           "--model",
                           model,
                           "--host",
                           listen.host,
                           "--port",
                           port_s,
                           "--advertise-address",
                           adv,
                           "--tp",
                           tp_s,
                           "--pp",
                           pp_s,
                           "--max-queue",
                           queue,
                           "--id",
                           "coordinator-0",
                           "--drain-timeout",
                           drain_s};
    for (size_t i = 0; i < sizeof cargs / sizeof *cargs; i++) a[k++] = (char *)cargs[i];
    if (http_port > 0) a[k++] = "--http-port", a[k++] = http_s;
    if (served_name) a[k++] = "--served-model-name", a[k++] = (char *)served_name;
    if (routing) a[k++] = "--routing", a[k++] = (char *)routing;
    if (no_migration) a[k++] = "--no-migration";
    if (max_len) a[k++] = "--max-model-len", a[k++] = (char *)max_len;
    /* the coordinator opens the model as the workers do: an int8 checkpoint whose scales are not
     * f16s opens only converted */
    if (mdl.quantize) a[k++] = "--quantize", a[k++] = (char *)mdl.quantize;
    if (sec.api_key_file) a[k++] = "--api-key-file", a[k++] = key_file_abs;
    if (sec.tls_cert)
        a[k++] = "--tls-cert", a[k++] = cert_abs, a[k++] = "--tls-key", a[k++] = key_abs;
    if (sec.tls_client_ca) a[k++] = "--tls-client-ca", a[k++] = ca_abs;
    a[k] = NULL;
    for (int r = 0; r < s.replicas; r++) {
        struct child *w = &s.workers[r];
        snprintf(w->name, sizeof w->name, "w%d", r);
        snprintf(w->log, sizeof w->log, "%s/worker-%d.log", s.dir, r);
        a = w->argv;
        k = 0;
        const char *wargs[] = {s.exe,
                               "worker",
                               "--etcd",
                               s.etcd,
                               "--model",
                               model,
                               "--id",
                               w->name,
                               "--tp",
                               tp_s,
                               "--pp",
                               pp_s,
                               "--threads",
                               threads_s,
                               "--host",
                               listen.host,
                               "--advertise-address",
                               adv};
        for (size_t i = 0; i < sizeof wargs / sizeof *wargs; i++) a[k++] = (char *)wargs[i];
        tsr_cli_engine_argv(&eng, a, &k);
        if (mdl.ep) a[k++] = "--ep", a[k++] = ep_s;
        if (mdl.quantize) a[k++] = "--quantize", a[k++] = (char *)mdl.quantize;
        if (mdl.kv_dtype) a[k++] = "--kv-cache-dtype", a[k++] = (char *)mdl.kv_dtype;
        if (max_len) a[k++] = "--max-model-len", a[k++] = (char *)max_len;
        if (served_name) a[k++] = "--served-model-name", a[k++] = (char *)served_name;
        if (metrics_port) {
            snprintf(w->metrics_port, sizeof w->metrics_port, "%d", metrics_port + r);
            tsr_net_join(adv, metrics_port + r, w->metrics, sizeof w->metrics);
            a[k++] = "--metrics-port", a[k++] = w->metrics_port;
        }
        /* replica r's ranks take GPUs from r * group_ranks on (cuda:N offsets them all by N) */
        if (strncmp(device, "cuda", 4))
            a[k++] = "--device", a[k++] = (char *)device;
        else {
            int base = device[4] == ':' ? atoi(device + 5) : 0;
            snprintf(w->device, sizeof w->device, "cuda:%d", base + r * group_ranks);
            a[k++] = "--device", a[k++] = w->device;
        }
        a[k] = NULL;
    }
    if (spawn(co) < 0) goto fail_spawn;
    for (int r = 0; r < s.replicas; r++)
        if (spawn(&s.workers[r]) < 0) goto fail_spawn;
    write_state(&s);

    /* Wait for every replica, showing progress; a worker that fails to start is restarted. */
    const struct tsr_rpc_channel_opts probe = {.pin_pem = tls.cert_pem,
                                               .cert_pem = tls.client_ca_pem ? tls.cert_pem : NULL,
                                               .key_pem = tls.client_ca_pem ? tls.key_pem : NULL,
                                               .api_key = api_key};
    tsr_rpc_channel_t *ch = tsr_rpc_channel_new_opts(s.address, &probe);
    if (!ch) {
        fprintf(stderr, "tessera serve: %s\n", tsr_last_error());
        stop_all(&s);
        return 1;
    }
    double t0 = tsr_now(), last_note = 0;
    int ready = 0, shown = -1;
    while (!tsr_cli_stop_requested() && !s.fatal && !s.etcd_died &&
           !cluster_ready(ch, s.replicas, &ready)) {
        supervise(&s);
        if (ready != shown || tsr_now() - last_note > 10) {
            fprintf(stderr, "tessera serve: %d of %d replicas ready (%.0f s)\n", ready, s.replicas,
                    tsr_now() - t0);
            shown = ready;
            last_note = tsr_now();
        }
        if (tsr_now() - t0 > 600) {
            fprintf(stderr,
                    "tessera serve: the cluster did not become ready in 10 minutes; "
                    "see the logs in %s\n",
                    s.dir);
            tsr_rpc_channel_free(ch);
            stop_all(&s);
            return 1;
        }
        usleep(200 * 1000);
    }
    tsr_rpc_channel_free(ch);
    if (!tsr_cli_stop_requested() && !s.fatal && !s.etcd_died) {
        printf("tessera: serving %s on %s with %d replica%s (tp %d x pp %d); etcd %s; logs in %s\n",
               model, s.address, s.replicas, s.replicas == 1 ? "" : "s", tp, pp, s.etcd, s.dir);
        if (s.http_address[0])
            printf("tessera: OpenAI HTTP API on %s://%s/v1\n", tls.cert_pem ? "https" : "http",
                   s.http_address);
        fflush(stdout);
    }
    while (!tsr_cli_stop_requested() && !s.etcd_died && !s.fatal) {
        supervise(&s);
        usleep(100 * 1000);
    }
    fprintf(stderr, "tessera serve: stopping\n");
    stop_all(&s);
    return s.fatal ? 2 : s.etcd_died ? 1 : 0;
fail_spawn:
    fprintf(stderr, "tessera serve: cannot start a process: %s\n", strerror(errno));
    stop_all(&s);
    return 1;
}
