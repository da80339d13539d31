/* Shared pieces of the `tessera` subcommands: argument parsing helpers and the entry points. */
#ifndef TSR_TOOLS_CLI_H
#define TSR_TOOLS_CLI_H

#include <stdint.h>

#define TSR_DEFAULT_MODEL "models/SmolLM2-135M-Instruct.Q4_1.gguf"

/* Each subcommand returns the process exit code: 0 ok, 1 runtime failure, 2 usage error. */
int tsr_cmd_generate(int argc, char **argv);
int tsr_cmd_bench(int argc, char **argv);
int tsr_cmd_plan(int argc, char **argv);
int tsr_cmd_worker(int argc, char **argv);
int tsr_cmd_coordinator(int argc, char **argv);
int tsr_cmd_serve(int argc, char **argv);
int tsr_cmd_client(int argc, char **argv);

/* Number parsing for flags: 0, or prints "tessera: --flag: ..." and returns 2. */
int tsr_cli_int(const char *flag, const char *s, long lo, long hi, long *out);
int tsr_cli_float(const char *flag, const char *s, double lo, double hi, double *out);
int tsr_cli_u64(const char *flag, const char *s, uint64_t *out);

/* Re-runs this process's command under mpirun with n ranks on this machine. Returns only on
 * failure (the exit code). */
int tsr_cli_relaunch_mpi(const char *cmd, int n, int argc, char **argv);
/* SIGINT and SIGTERM set a flag instead of killing; SIGPIPE is ignored. */
void tsr_cli_catch_signals(void);
/* The signal that asked us to stop, or 0. */
int tsr_cli_stop_requested(void);

#endif
