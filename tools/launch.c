/* Process plumbing shared by the subcommands: re-running under mpirun, waiting for a signal. */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tools/cli.h"

int tsr_cli_relaunch_mpi(const char *cmd, int n, int argc, char **argv)
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

static volatile sig_atomic_t stop_signal;

static void on_signal(int sig)
{
    stop_signal = sig;
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
