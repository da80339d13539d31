/* Process plumbing shared by the subcommands: ranks through mpirun, followers, signals. */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/status.h"
#include "tools/cli.h"

/* Re-runs this process's command under mpirun with n ranks on this machine. Returns only on
 * failure (the exit code). */
static int relaunch_mpi(const char *cmd, int n, int argc, char **argv)
{
    char exe[4096], np[16];
    ssize_t len = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (len <= 0) {
        fprintf(stderr, "tessera %s: cannot find my own executable\n", cmd);
        return 1;
    }
    exe[len] = 0;
    snprintf(np, sizeof np, "%d", n);
    char **args = calloc((size_t)argc + 12, sizeof *args);
    if (!args) return 1;
    int k = 0;
    args[k++] = "mpirun";
    args[k++] = "-np";
    args[k++] = np;
    args[k++] = "--oversubscribe"; /* more ranks than cores is fine for a CPU run */
    args[k++] = "--bind-to";
    args[k++] = "none";
    if (geteuid() == 0) args[k++] = "--allow-run-as-root";
    args[k++] = exe;
    for (int i = 0; i < argc; i++) args[k++] = argv[i];
    execvp("mpirun", args);
    fprintf(stderr, "tessera %s: --tp/--pp need mpirun (Open MPI): %s\n", cmd, strerror(errno));
    free(args);
    return 1;
}

int tsr_cli_check_model_len(const char *cmd, const tsr_model_t *m, int n)
{
    int ctx = tsr_model_config(m)->n_ctx_train;
    if (n <= ctx) return 0;
    fprintf(stderr, "tessera %s: --max-model-len %d is over %s's context of %d tokens\n", cmd, n,
            tsr_model_name(m), ctx);
    return 2;
}

int tsr_cli_served_name(const char *cmd, const char *name)
{
    size_t n = strlen(name);
    int ok = n > 0 && n <= 200;
    for (size_t i = 0; ok && i < n; i++) ok = (unsigned char)name[i] > ' ' && name[i] != 0x7f;
    if (ok) return 0;
    fprintf(stderr,
            "tessera %s: --served-model-name '%.64s': 1 to 200 printable characters, no spaces\n",
            cmd, name);
    return 2;
}

int tsr_cli_check_layout(const char *cmd, const char *path, const struct tsr_cli_model *mdl)
{
    tsr_model_t *m = NULL;
    int rc = tsr_model_open_quantized(path, mdl->quantize_type, &m);
    if (!rc) rc = tsr_group_check(m, mdl->tp, mdl->ep, mdl->pp);
    if (rc) fprintf(stderr, "tessera %s: %s\n", cmd, tsr_last_error());
    tsr_model_free(m);
    return rc;
}

int tsr_cli_launch_ranks(const char *cmd, const struct tsr_cli_model *m, int argc, char **argv)
{
    int ranks = tsr_cli_model_ranks(m);
    if (ranks <= 1 || tsr_group_under_mpi()) return -1;
    /* Check the layout here, so a bad one is one clear error, not one per rank. */
    int rc = tsr_cli_check_layout(cmd, m->model, m);
    if (rc) return rc == TSR_EINVAL ? 2 : 1;
    return relaunch_mpi(cmd, ranks, argc, argv);
}

int tsr_cli_rank_threads(int threads, int ranks, const char *device)
{
    if (threads || ranks <= 1 || strcmp(device, "cpu")) return threads;
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    return cores > ranks ? (int)(cores / ranks) : 1;
}

static volatile sig_atomic_t stop_signal, n_signals;

static void on_signal(int sig)
{
    stop_signal = sig;
    n_signals++;
}

void tsr_cli_catch_signals(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
}

int tsr_cli_stop_requested(void)
{
    return stop_signal;
}

int tsr_cli_stop_insisted(void)
{
    return n_signals > 1;
}

int tsr_cli_security_opt(int c, const char *arg, struct tsr_cli_security *s)
{
    switch (c) {
    case TSR_O_API_KEY:
        s->api_key = arg;
        return 1;
    case TSR_O_API_KEY_FILE:
        s->api_key_file = arg;
        return 1;
    case TSR_O_TLS_CERT:
        s->tls_cert = arg;
        return 1;
    case TSR_O_TLS_KEY:
        s->tls_key = arg;
        return 1;
    case TSR_O_TLS_CLIENT_CA:
        s->tls_client_ca = arg;
        return 1;
    default:
        return 0;
    }
}

int tsr_cli_security_load(const char *cmd, const struct tsr_cli_security *s, char **key,
                          struct tsr_tls_files *tls)
{
    memset(tls, 0, sizeof *tls);
    if (tsr_auth_key_load(s->api_key_file, s->api_key, key) ||
        tsr_tls_files_load(s->tls_cert, s->tls_key, s->tls_client_ca, tls)) {
        fprintf(stderr, "tessera %s: %s\n", cmd, tsr_last_error());
        free(*key);
        *key = NULL;
        return 2;
    }
    return 0;
}
