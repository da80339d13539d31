/* Shared pieces of the `tessera` subcommands: argument parsing helpers and the entry points. */
#ifndef TSR_TOOLS_CLI_H
#define TSR_TOOLS_CLI_H

#include <stdint.h>

#include "common/auth.h"
#include "kernels/backend.h"
#include "model/model.h"
#include "worker/forward.h"
#include "worker/group.h"

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
/* "1, 2,3" -> *ids (malloc'ed, caller frees), *n. 0; 2 after printing a bad id; 1 out of memory. */
int tsr_cli_ids(const char *cmd, const char *flag, const char *s, int32_t **ids, size_t *n);

/* The listener flags of serve, coordinator and worker (DESIGN §1: a bind address and an
 * advertised one; common/net.h says how the advertised one is found). */
enum { TSR_O_HOST = 1000, TSR_O_PORT, TSR_O_ADVERTISE };
#define TSR_CLI_LISTEN_OPTIONS                                                                     \
    {"host", required_argument, 0, TSR_O_HOST}, {"port", required_argument, 0, TSR_O_PORT},        \
    {                                                                                              \
        "advertise-address", required_argument, 0, TSR_O_ADVERTISE                                 \
    }
#define TSR_CLI_LISTEN_HELP                                                                        \
    "  --host H     bind address (default 127.0.0.1; 0.0.0.0 for every interface)\n"               \
    "  --advertise-address A\n"                                                                    \
    "               the address others reach this process at: one of this host's\n"                \
    "               (default: --host, or for 0.0.0.0 the first non-loopback address)\n"
/* The OpenAI HTTP API's port (serve and coordinator): on --host, off unless given. */
#define TSR_CLI_MODEL_LEN_HELP                                                                     \
    "  --max-model-len N  the longest request served, prompt plus max_tokens (default:\n"          \
    "               the model's context); longer ones are refused\n"
/* --max-model-len N against the model m: 0 when N (> 0) fits its context, or N is 0 (unset); 2
 * after printing why not. */
int tsr_cli_check_model_len(const char *cmd, const tsr_model_t *m, int n);

#define TSR_CLI_HTTP_HELP                                                                          \
    "  --http-port P  also serve OpenAI's HTTP API (/v1/chat/completions, /v1/completions,\n"      \
    "               /v1/models) on H:P (default: off)\n"
struct tsr_cli_listen {
    const char *host, *advertise;
    int port;
};
/* Takes getopt's c when it is a listener option: 1 taken, 2 after printing a bad value, 0 not
 * one of them. */
int tsr_cli_listen_opt(int c, const char *arg, struct tsr_cli_listen *l);
/* The bind address ("host:port") and the advertised host, checked; 2 after printing why not. */
int tsr_cli_listen_resolve(const char *cmd, const struct tsr_cli_listen *l, char *bind,
                           size_t bind_cap, char *adv_host, size_t adv_cap);
/* The etcd endpoints: --etcd's value when given, else $ETCDCTL_ENDPOINTS (etcdctl's
 * convention: a comma-separated list), else NULL. */
const char *tsr_cli_etcd(const char *flag_value);
/* One clear error before anything starts: 0 when an etcd at endpoints answers (within 3 s each);
 * else prints "tessera <cmd>: etcd <endpoints> cannot be reached: <why>" and returns 2. */
int tsr_cli_etcd_reachable(const char *cmd, const char *endpoints);

/* The security flags of serve and coordinator (docs/operations.md, Security): an API key for the
 * public gRPC and HTTP ports, and TLS on both. */
enum {
    TSR_O_API_KEY = 1100,
    TSR_O_API_KEY_FILE,
    TSR_O_TLS_CERT,
    TSR_O_TLS_KEY,
    TSR_O_TLS_CLIENT_CA
};
#define TSR_CLI_SECURITY_OPTIONS                                                                   \
    {"api-key", required_argument, 0, TSR_O_API_KEY},                                              \
        {"api-key-file", required_argument, 0, TSR_O_API_KEY_FILE},                                \
        {"tls-cert", required_argument, 0, TSR_O_TLS_CERT},                                        \
        {"tls-key", required_argument, 0, TSR_O_TLS_KEY},                                          \
    {                                                                                              \
        "tls-client-ca", required_argument, 0, TSR_O_TLS_CLIENT_CA                                 \
    }
#define TSR_CLI_SECURITY_HELP                                                                      \
    "  --api-key-file F  every call to the public API (gRPC tessera.v1.Inference, HTTP /v1/*)\n"   \
    "               must send \"authorization: Bearer KEY\", KEY being F's first line;\n"          \
    "               grpc.health.v1, /health and /ready stay open (default: $TESSERA_API_KEY;\n"    \
    "               unset: no key)\n"                                                              \
    "  --api-key KEY  the same, from the command line, where `ps` shows it to every user of\n"     \
    "               the machine: prefer --api-key-file or $TESSERA_API_KEY\n"                      \
    "  --tls-cert F --tls-key F  TLS on the gRPC and HTTP ports (PEM: the certificate chain\n"     \
    "               and its private key); plain-text clients are refused\n"                        \
    "  --tls-client-ca F  mutual TLS: clients must show a certificate this CA (PEM) signed\n"
struct tsr_cli_security {
    const char *api_key, *api_key_file, *tls_cert, *tls_key, *tls_client_ca;
};
/* Takes getopt's c when it is a security option: 1 taken, 0 not one of them. */
int tsr_cli_security_opt(int c, const char *arg, struct tsr_cli_security *s);
/* Loads the key (*key, NULL for none; caller frees) and the TLS files (free with
 * tsr_tls_files_free()); 2 after printing "tessera <cmd>: <why>". */
int tsr_cli_security_load(const char *cmd, const struct tsr_cli_security *s, char **key,
                          struct tsr_tls_files *tls);

/* Opens the model and checks that tp x pp divides it; prints "tessera <cmd>: <why>" and returns
 * the code when not. */
int tsr_cli_check_layout(const char *cmd, const char *model, int tp, int pp);
/* For a command that shards a model over tp x pp ranks: when there are several and no MPI launcher
 * started us, checks the layout against the model (one clear error, not one per rank) and re-runs
 * the command under mpirun on this machine. Returns -1 when this process goes on (one rank, or a
 * rank already), else the exit code. */
int tsr_cli_launch_ranks(const char *cmd, const char *model, int tp, int pp, int argc, char **argv);
/* CPU threads for each of `ranks` ranks sharing this machine: threads when given (non-zero) or
 * not on the CPU, else the cores shared out (at least 1). */
int tsr_cli_rank_threads(int threads, int ranks, const char *device);
/* SIGINT and SIGTERM set a flag instead of killing; SIGPIPE is ignored. */
void tsr_cli_catch_signals(void);
/* The signal that asked us to stop, or 0. */
int tsr_cli_stop_requested(void);
/* 1 once a second stop signal came: stop now, skip draining. */
int tsr_cli_stop_insisted(void);

#endif
