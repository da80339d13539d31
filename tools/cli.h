/* Shared pieces of the `tessera` subcommands: argument parsing helpers and the entry points. */
#ifndef TSR_TOOLS_CLI_H
#define TSR_TOOLS_CLI_H

#include <stdint.h>

#include "common/auth.h"
#include "kernels/backend.h"
#include "model/model.h"
#include "model/sampling.h"
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
/* --max-model-len N against the model m: 0 when N (> 0) fits its context, or N is 0 (unset); 2
 * after printing why not. */
int tsr_cli_check_model_len(const char *cmd, const tsr_model_t *m, int n);

/* --served-model-name NAME: 0 when it is 1 to 200 printable characters with no spaces (it goes
 * in URLs, logs and metrics labels); 2 after printing why not. */
int tsr_cli_served_name(const char *cmd, const char *name);

/* The OpenAI HTTP API's port (serve and coordinator): on --host, off unless given. */
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

/* The flags several subcommands share, defined once each (tools/flags.c) so that they cannot
 * drift apart: a group is an options macro for getopt_long's table, a help macro, a struct that
 * tsr_cli_*_init fills with the defaults, and tsr_cli_*_opt, which takes getopt's c when it is one
 * of the group's: 1 taken, 2 after printing a bad value, 0 not one of them. A command lists the
 * groups it accepts in its table; a group's function takes only what getopt matched there. */

/* The model and its layout: --model (-m), --tp, --pp, --ep, --quantize, --kv-cache-dtype (generate,
 * bench, worker, coordinator, serve; the coordinator, which loads no weights and keeps no KV
 * cache, ignores the last, and takes --quantize only to open the model as the workers do: an int8
 * checkpoint whose scales are not f16s opens only converted). */
enum { TSR_O_TP = 1200, TSR_O_PP, TSR_O_QUANTIZE, TSR_O_KV_DTYPE, TSR_O_EP };
#define TSR_CLI_MODEL_OPTIONS                                                                      \
    {"model", required_argument, 0, 'm'}, {"tp", required_argument, 0, TSR_O_TP},                  \
        {"pp", required_argument, 0, TSR_O_PP}, {"ep", required_argument, 0, TSR_O_EP},            \
        {"quantize", required_argument, 0, TSR_O_QUANTIZE},                                        \
    {                                                                                              \
        "kv-cache-dtype", required_argument, 0, TSR_O_KV_DTYPE                                     \
    }
#define TSR_CLI_MODEL_HELP                                                                         \
    "  --model M    a .gguf file, a Hugging Face directory, or synthetic:NAME[:TYPE]\n"            \
    "               (default $TESSERA_MODEL, else " TSR_DEFAULT_MODEL ")\n"                        \
    "  --tp N, --pp M  shard the model over N x M ranks (tensor x pipeline parallel)\n"            \
    "  --ep E       mixture of experts: spread each stage's experts over E ranks, a\n"             \
    "               multiple of N (default N); E / N attention groups of N ranks each\n"           \
    "               run the whole batch: E x M ranks (CPU, under MPI)\n"                           \
    "  --quantize T convert the layers' matrices to T on load (" TSR_WEIGHT_TYPES ")\n"            \
    "  --kv-cache-dtype T  the KV cache's elements: auto (default: bf16 on a GPU, f32 on\n"        \
    "               the CPU), f32, bf16 (half the bytes: twice the blocks in the same\n"           \
    "               memory, K and V rounded to 8 significant bits) or fp8 (E4M3 with a\n"          \
    "               scale per token and head: about a quarter of f32's bytes, 4 bits)\n"
struct tsr_cli_model {
    const char *model;
    int tp, pp;
    int ep;               /* --ep: ranks a stage's experts are spread over; 0: tp */
    const char *quantize; /* --quantize's argument, checked; NULL: the file's types */
    int quantize_type;    /* its tsr_dtype; -1 without */
    const char *kv_dtype; /* --kv-cache-dtype's argument, checked; NULL: auto */
    int kv_type;          /* its tsr_dtype; -1 for auto */
};
void tsr_cli_model_init(struct tsr_cli_model *m);
int tsr_cli_model_opt(int c, const char *arg, struct tsr_cli_model *m);
/* The ranks of one group: max(tp, ep) x pp (the layout itself is checked against the model by
 * tsr_cli_check_layout). */
int tsr_cli_model_ranks(const struct tsr_cli_model *m);
/* The KV cache's element type on `device` (--device's value): --kv-cache-dtype's, or for auto
 * TSR_BF16 on a GPU and TSR_F32 on the CPU. */
enum tsr_dtype tsr_cli_kv_type(const struct tsr_cli_model *m, const char *device);
/* tsr_model_open and tsr_model_quantize as the flags say. */
int tsr_cli_model_open(const struct tsr_cli_model *m, tsr_model_t **out);

/* Where it runs: --device, --threads (-j) (generate, bench, worker, serve). */
enum { TSR_O_DEVICE = 1210 };
#define TSR_CLI_DEVICE_OPTIONS                                                                     \
    {"device", required_argument, 0, TSR_O_DEVICE},                                                \
    {                                                                                              \
        "threads", required_argument, 0, 'j'                                                       \
    }
#define TSR_CLI_DEVICE_HELP                                                                        \
    "  --threads N  CPU threads per rank (default: the cores shared out)\n"                        \
    "  --device D   cpu (default) or cuda[:N]: the ranks of --tp/--pp take GPUs N, N+1, ...\n"     \
    "               and talk through NCCL\n"
struct tsr_cli_device {
    const char *device;
    int threads; /* 0: tsr_cli_rank_threads decides */
};
void tsr_cli_device_init(struct tsr_cli_device *d);
int tsr_cli_device_opt(int c, const char *arg, struct tsr_cli_device *d);

/* A worker's engine: the KV cache, the batch and its step (worker; serve passes them on). */
enum {
    TSR_O_KV_BLOCKS = 1220,
    TSR_O_KV_MEM,
    TSR_O_MEM_UTIL,
    TSR_O_MAX_SEQS,
    TSR_O_STEP_TOKENS,
    TSR_O_STEP_TIMEOUT,
    TSR_O_NO_PREFIX_CACHE,
    TSR_O_MICRO_BATCHES,
    TSR_O_ENGINE_END
};
#define TSR_CLI_ENGINE_OPTIONS                                                                     \
    {"kv-blocks", required_argument, 0, TSR_O_KV_BLOCKS},                                          \
        {"kv-mem", required_argument, 0, TSR_O_KV_MEM},                                            \
        {"gpu-memory-utilization", required_argument, 0, TSR_O_MEM_UTIL},                          \
        {"max-seqs", required_argument, 0, TSR_O_MAX_SEQS},                                        \
        {"step-tokens", required_argument, 0, TSR_O_STEP_TOKENS},                                  \
        {"step-timeout", required_argument, 0, TSR_O_STEP_TIMEOUT},                                \
        {"no-prefix-caching", no_argument, 0, TSR_O_NO_PREFIX_CACHE},                              \
    {                                                                                              \
        "micro-batches", required_argument, 0, TSR_O_MICRO_BATCHES                                 \
    }
#define TSR_CLI_ENGINE_HELP                                                                        \
    "  --kv-blocks N  KV cache size in 16-position blocks (default from --kv-mem)\n"               \
    "  --kv-mem GB  KV cache size in GiB (default on the CPU: 10%% of available memory,\n"         \
    "               at most 2)\n"                                                                  \
    "  --gpu-memory-utilization F  on a GPU, the fraction of its memory to use (default\n"         \
    "               0.9): the KV cache gets what is free once the weights are in, less\n"          \
    "               1 - F of the whole GPU (default there unless --kv-blocks/--kv-mem)\n"          \
    "  --max-seqs N  sequences in the running batch (default 64); more wait\n"                     \
    "  --step-tokens N  token budget of one step (default 256)\n"                                  \
    "  --step-timeout S  a group whose step runs longer (a rank hung or unreachable)\n"            \
    "               leaves routing and exits, so its requests end UNAVAILABLE and its\n"           \
    "               supervisor restarts it (default 30; 0: never)\n"                               \
    "  --no-prefix-caching  compute every prompt whole; by default full blocks of K/V stay\n"      \
    "               cached and requests that begin with the same tokens reuse them\n"              \
    "  --micro-batches N  with --pp > 1, steps in flight at once, the batch split between\n"       \
    "               them so that every stage works (default: pp; 1: one step at a time)\n"
struct tsr_cli_engine {
    int kv_blocks, max_seqs, step_tokens, step_timeout, no_prefix_cache;
    int micro_batches;                                     /* 0: pp */
    double kv_mem, mem_util;                               /* 0: not given */
    const char *given[TSR_O_ENGINE_END - TSR_O_KV_BLOCKS]; /* each flag's value as given */
};
void tsr_cli_engine_init(struct tsr_cli_engine *e);
int tsr_cli_engine_opt(int c, const char *arg, struct tsr_cli_engine *e);
/* Appends "--flag value" for each flag given to argv[*k...]: what serve passes to its workers.
 * argv needs room for 2 x TSR_O_ENGINE_END - TSR_O_KV_BLOCKS more. */
void tsr_cli_engine_argv(const struct tsr_cli_engine *e, char **argv, int *k);

/* A server's limits: --max-model-len, --drain-timeout (worker, coordinator, serve). */
enum { TSR_O_MODEL_LEN = 1240, TSR_O_DRAIN };
#define TSR_CLI_SERVING_OPTIONS                                                                    \
    {"max-model-len", required_argument, 0, TSR_O_MODEL_LEN},                                      \
    {                                                                                              \
        "drain-timeout", required_argument, 0, TSR_O_DRAIN                                         \
    }
#define TSR_CLI_SERVING_HELP                                                                       \
    "  --max-model-len N  the longest request served, prompt plus max_tokens (default:\n"          \
    "               the model's context); longer ones are refused\n"                               \
    "  --drain-timeout S  on SIGTERM/SIGINT, take no new requests (UNAVAILABLE) and let\n"         \
    "               those in flight finish for up to S seconds (default 30; 0: stop at\n"          \
    "               once); a second signal stops at once\n"
struct tsr_cli_serving {
    int max_len; /* 0: the model's context */
    int drain_s;
    const char *max_len_given; /* as given, or NULL */
};
void tsr_cli_serving_init(struct tsr_cli_serving *s);
int tsr_cli_serving_opt(int c, const char *arg, struct tsr_cli_serving *s);

/* What to generate from: --prompt (-p), --prompt-ids, --chat (-c), --system, --show-ids
 * (generate, client). */
enum { TSR_O_PROMPT_IDS = 1250, TSR_O_SYSTEM, TSR_O_SHOW_IDS };
#define TSR_CLI_PROMPT_OPTIONS                                                                     \
    {"prompt", required_argument, 0, 'p'}, {"prompt-ids", required_argument, 0, TSR_O_PROMPT_IDS}, \
        {"chat", no_argument, 0, 'c'}, {"system", required_argument, 0, TSR_O_SYSTEM},             \
    {                                                                                              \
        "show-ids", no_argument, 0, TSR_O_SHOW_IDS                                                 \
    }
#define TSR_CLI_PROMPT_HELP                                                                        \
    "  --prompt TEXT  the prompt\n"                                                                \
    "  --prompt-ids 1,2,3  token ids instead of text (synthetic models have no tokenizer)\n"       \
    "  --chat       send the prompt as a user message through the chat template\n"                 \
    "  --system TEXT  with --chat, a system message before it\n"                                   \
    "  --show-ids   print the generated token ids, one line, after the text\n"
struct tsr_cli_prompt {
    const char *prompt, *prompt_ids, *system;
    int chat, show_ids;
};
int tsr_cli_prompt_opt(int c, const char *arg, struct tsr_cli_prompt *p);

/* Sampling (generate, client): the API's fields (model/sampling.h), and max-tokens and
 * ignore-eos. Values are only parsed here; their limits are checked once, by
 * tsr_sampling_validate (the engine for generate, the server for client). */
enum {
    TSR_O_TOP_K = 1260,
    TSR_O_MIN_P,
    TSR_O_REPETITION,
    TSR_O_PRESENCE,
    TSR_O_FREQUENCY,
    TSR_O_IGNORE_EOS,
    TSR_O_LOGIT_BIAS
};
#define TSR_CLI_SAMPLING_OPTIONS                                                                   \
    {"max-tokens", required_argument, 0, 'n'}, {"temperature", required_argument, 0, 't'},         \
        {"top-k", required_argument, 0, TSR_O_TOP_K}, {"top-p", required_argument, 0, 'P'},        \
        {"min-p", required_argument, 0, TSR_O_MIN_P},                                              \
        {"repetition-penalty", required_argument, 0, TSR_O_REPETITION},                            \
        {"repeat-penalty", required_argument, 0, TSR_O_REPETITION},                                \
        {"presence-penalty", required_argument, 0, TSR_O_PRESENCE},                                \
        {"frequency-penalty", required_argument, 0, TSR_O_FREQUENCY},                              \
        {"seed", required_argument, 0, 's'}, {"ignore-eos", no_argument, 0, TSR_O_IGNORE_EOS},     \
    {                                                                                              \
        "logit-bias", required_argument, 0, TSR_O_LOGIT_BIAS                                       \
    }
#define TSR_CLI_SAMPLING_HELP                                                                      \
    "  --max-tokens N  tokens to generate at most\n"                                               \
    "  --temperature T  0 = greedy (the default)\n"                                                \
    "  --top-k K, --top-p P, --min-p P  filters (0, 1 and 0: off)\n"                               \
    "  --repetition-penalty R  > 1 discourages tokens already in the sequence (1: off;\n"          \
    "               also --repeat-penalty)\n"                                                      \
    "  --presence-penalty P, --frequency-penalty F  in [-2, 2], OpenAI's (0: off)\n"               \
    "  --seed S     the sampler's seed (default: a random one)\n"                                  \
    "  --ignore-eos  go on past the end-of-sequence token\n"                                       \
    "  --logit-bias ID:BIAS,...  add BIAS (-100 to 100) to those tokens' logits\n"
enum {
    TSR_CLI_GIVEN_TEMPERATURE = 1 << 0,
    TSR_CLI_GIVEN_TOP_K = 1 << 1,
    TSR_CLI_GIVEN_TOP_P = 1 << 2,
    TSR_CLI_GIVEN_MIN_P = 1 << 3,
    TSR_CLI_GIVEN_REPETITION = 1 << 4,
    TSR_CLI_GIVEN_PRESENCE = 1 << 5,
    TSR_CLI_GIVEN_FREQUENCY = 1 << 6,
    TSR_CLI_GIVEN_SEED = 1 << 7,
};
struct tsr_cli_sampling {
    struct tsr_sampling sp; /* tsr_sampling_default() and the flags given; sp.logit_bias is
                             * bias[] */
    unsigned given;         /* TSR_CLI_GIVEN_*: the fields a flag set */
    int max_tokens;         /* 0: not given */
    int ignore_eos;
    struct tsr_logit_bias bias[TSR_SAMPLING_MAX_LOGIT_BIAS];
};
void tsr_cli_sampling_init(struct tsr_cli_sampling *s);
int tsr_cli_sampling_opt(int c, const char *arg, struct tsr_cli_sampling *s);

/* Opens the model at path (converted to m's --quantize, as tsr_model_open_quantized) and checks
 * that m's tp x ep x pp layout divides it; prints "tessera <cmd>: <why>" and returns the code
 * when not. */
int tsr_cli_check_layout(const char *cmd, const char *path, const struct tsr_cli_model *m);
/* For a command that shards m's model over its ranks (tsr_cli_model_ranks): when there are several
 * and no MPI launcher started us, checks the layout against the model (one clear error, not one
 * per rank) and re-runs the command under mpirun on this machine. Returns -1 when this process
 * goes on (one rank, or a rank already), else the exit code. */
int tsr_cli_launch_ranks(const char *cmd, const struct tsr_cli_model *m, int argc, char **argv);
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
