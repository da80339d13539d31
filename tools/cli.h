/* Shared pieces of the `tessera` subcommands: argument parsing helpers and the entry points. */
#ifndef TSR_TOOLS_CLI_H
#define TSR_TOOLS_CLI_H

#include <stdint.h>

#define TSR_DEFAULT_MODEL "models/SmolLM2-135M-Instruct.Q4_1.gguf"

/* Each subcommand returns the process exit code: 0 ok, 1 runtime failure, 2 usage error. */
int tsr_cmd_generate(int argc, char **argv);
int tsr_cmd_bench(int argc, char **argv);
int tsr_cmd_plan(int argc, char **argv);

/* Number parsing for flags: 0, or prints "tessera: --flag: ..." and returns 2. */
int tsr_cli_int(const char *flag, const char *s, long lo, long hi, long *out);
int tsr_cli_float(const char *flag, const char *s, double lo, double hi, double *out);
int tsr_cli_u64(const char *flag, const char *s, uint64_t *out);

#endif
