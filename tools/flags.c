/* The flag groups the subcommands share (tools/cli.h): each flag's name, default, bounds and
 * parsing, once. */
#include <getopt.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/status.h"
#include "tools/cli.h"

void tsr_cli_model_init(struct tsr_cli_model *m)
{
    const char *env = getenv("TESSERA_MODEL");
    *m = (struct tsr_cli_model){.model = env && env[0] ? env : TSR_DEFAULT_MODEL,
                                .tp = 1,
                                .pp = 1,
                                .quantize_type = -1,
                                .kv_type = -1};
}

enum tsr_dtype tsr_cli_kv_type(const struct tsr_cli_model *m, const char *device)
{
    if (m->kv_type >= 0) return (enum tsr_dtype)m->kv_type;
    return strcmp(device, "cpu") ? TSR_BF16 : TSR_F32;
}

int tsr_cli_model_ranks(const struct tsr_cli_model *m)
{
    return (m->ep > m->tp ? m->ep : m->tp) * m->pp;
}

int tsr_cli_model_open(const struct tsr_cli_model *m, tsr_model_t **out)
{
    return tsr_model_open_quantized(m->model, m->quantize_type, out);
}

int tsr_cli_model_opt(int c, const char *arg, struct tsr_cli_model *m)
{
    long v;
    switch (c) {
    case 'm':
        m->model = arg;
        return 1;
    case TSR_O_TP:
        if (tsr_cli_int("--tp", arg, 1, 1024, &v)) return 2;
        m->tp = (int)v;
        return 1;
    case TSR_O_PP:
        if (tsr_cli_int("--pp", arg, 1, 1024, &v)) return 2;
        m->pp = (int)v;
        return 1;
    case TSR_O_EP:
        if (tsr_cli_int("--ep", arg, 1, 1024, &v)) return 2;
        m->ep = (int)v;
        return 1;
    case TSR_O_QUANTIZE: {
        enum tsr_dtype t;
        if (tsr_weight_type_parse(arg, &t)) {
            fprintf(stderr, "--quantize: %s\n", tsr_last_error());
            return 2;
        }
        m->quantize = arg;
        m->quantize_type = (int)t;
        return 1;
    }
    case TSR_O_KV_DTYPE:
        if (!strcmp(arg, "auto"))
            m->kv_type = -1;
        else if (!strcmp(arg, "f32"))
            m->kv_type = TSR_F32;
        else if (!strcmp(arg, "bf16"))
            m->kv_type = TSR_BF16;
        else if (!strcmp(arg, "fp8"))
            m->kv_type = TSR_F8_E4M3;
        else {
            fprintf(stderr, "tessera: --kv-cache-dtype: '%s' is not one of auto, f32, bf16, fp8\n",
                    arg);
            return 2;
        }
        m->kv_dtype = arg;
        return 1;
    default:
        return 0;
    }
}

void tsr_cli_device_init(struct tsr_cli_device *d)
{
    *d = (struct tsr_cli_device){.device = "cpu"};
}

int tsr_cli_device_opt(int c, const char *arg, struct tsr_cli_device *d)
{
    long v;
    switch (c) {
    case TSR_O_DEVICE:
        d->device = arg; /* the backend checks it, with the GPUs it finds */
        return 1;
    case 'j':
        if (tsr_cli_int("--threads", arg, 1, 1024, &v)) return 2;
        d->threads = (int)v;
        return 1;
    default:
        return 0;
    }
}

void tsr_cli_engine_init(struct tsr_cli_engine *e)
{
    *e = (struct tsr_cli_engine){.max_seqs = 64, .step_tokens = 256, .step_timeout = 30};
}

int tsr_cli_engine_opt(int c, const char *arg, struct tsr_cli_engine *e)
{
    long v;
    double d;
    int rc;
    switch (c) {
    case TSR_O_KV_BLOCKS:
        if (!(rc = tsr_cli_int("--kv-blocks", arg, 1, 1 << 24, &v))) e->kv_blocks = (int)v;
        break;
    case TSR_O_KV_MEM:
        if (!(rc = tsr_cli_float("--kv-mem", arg, 1e-3, 1 << 20, &d))) e->kv_mem = d;
        break;
    case TSR_O_MEM_UTIL:
        if (!(rc = tsr_cli_float("--gpu-memory-utilization", arg, 0.01, 1, &d))) e->mem_util = d;
        break;
    case TSR_O_MAX_SEQS:
        if (!(rc = tsr_cli_int("--max-seqs", arg, 1, 4096, &v))) e->max_seqs = (int)v;
        break;
    case TSR_O_STEP_TOKENS:
        if (!(rc = tsr_cli_int("--step-tokens", arg, 1, 1 << 16, &v))) e->step_tokens = (int)v;
        break;
    case TSR_O_STEP_TIMEOUT:
        if (!(rc = tsr_cli_int("--step-timeout", arg, 0, 86400, &v))) e->step_timeout = (int)v;
        break;
    case TSR_O_MICRO_BATCHES:
        if (!(rc = tsr_cli_int("--micro-batches", arg, 1, 64, &v))) e->micro_batches = (int)v;
        break;
    case TSR_O_NO_PREFIX_CACHE:
        e->no_prefix_cache = 1;
        rc = 0;
        arg = ""; /* given, with no value */
        break;
    default:
        return 0;
    }
    if (rc) return 2;
    e->given[c - TSR_O_KV_BLOCKS] = arg;
    return 1;
}

void tsr_cli_engine_argv(const struct tsr_cli_engine *e, char **argv, int *k)
{
    static const struct option names[] = {TSR_CLI_ENGINE_OPTIONS};
    for (size_t i = 0; i < sizeof names / sizeof *names; i++) {
        const char *v = e->given[names[i].val - TSR_O_KV_BLOCKS];
        if (!v) continue;
        static char flags[sizeof names / sizeof *names][32];
        snprintf(flags[i], sizeof flags[i], "--%s", names[i].name);
        argv[(*k)++] = flags[i];
        if (names[i].has_arg == required_argument) argv[(*k)++] = (char *)v;
    }
}

void tsr_cli_serving_init(struct tsr_cli_serving *s)
{
    *s = (struct tsr_cli_serving){.drain_s = 30};
}

int tsr_cli_serving_opt(int c, const char *arg, struct tsr_cli_serving *s)
{
    long v;
    switch (c) {
    case TSR_O_MODEL_LEN:
        if (tsr_cli_int("--max-model-len", arg, 1, 1 << 30, &v)) return 2;
        s->max_len = (int)v;
        s->max_len_given = arg;
        return 1;
    case TSR_O_DRAIN:
        if (tsr_cli_int("--drain-timeout", arg, 0, 3600, &v)) return 2;
        s->drain_s = (int)v;
        return 1;
    default:
        return 0;
    }
}

int tsr_cli_prompt_opt(int c, const char *arg, struct tsr_cli_prompt *p)
{
    switch (c) {
    case 'p':
        p->prompt = arg;
        return 1;
    case TSR_O_PROMPT_IDS:
        p->prompt_ids = arg;
        return 1;
    case 'c':
        p->chat = 1;
        return 1;
    case TSR_O_SYSTEM:
        p->system = arg;
        return 1;
    case TSR_O_SHOW_IDS:
        p->show_ids = 1;
        return 1;
    default:
        return 0;
    }
}

void tsr_cli_sampling_init(struct tsr_cli_sampling *s)
{
    memset(s, 0, sizeof *s);
    s->sp = tsr_sampling_default();
    s->sp.logit_bias = s->bias;
}

/* A finite number (its limits are tsr_sampling_validate's): 0, or 2 after printing why not. */
static int number(const char *flag, const char *arg, float *out)
{
    double d;
    if (tsr_cli_float(flag, arg, -3.4e38, 3.4e38, &d)) return 2;
    *out = (float)d;
    return 0;
}

/* "ID:BIAS,ID:BIAS" into s->bias. */
static int logit_bias(const char *arg, struct tsr_cli_sampling *s)
{
    const char *p = arg;
    s->sp.n_logit_bias = 0;
    while (*p) {
        char *end;
        long id = strtol(p, &end, 10);
        char *colon = end;
        double bias = *colon == ':' ? strtod(colon + 1, &end) : 0;
        if (end == p || *colon != ':' || end == colon + 1 || (*end && *end != ',') ||
            id < INT32_MIN || id > INT32_MAX || s->sp.n_logit_bias == TSR_SAMPLING_MAX_LOGIT_BIAS) {
            fprintf(stderr, "tessera: --logit-bias: want ID:BIAS,... (at most %d), not '%s'\n",
                    TSR_SAMPLING_MAX_LOGIT_BIAS, arg);
            return 2;
        }
        s->bias[s->sp.n_logit_bias++] = (struct tsr_logit_bias){(int32_t)id, (float)bias};
        p = *end ? end + 1 : end;
    }
    return 0;
}

int tsr_cli_sampling_opt(int c, const char *arg, struct tsr_cli_sampling *s)
{
    long v;
    int rc = 0;
    unsigned given = 0;
    struct tsr_sampling *sp = &s->sp;
    switch (c) {
    case 'n':
        if (!(rc = tsr_cli_int("--max-tokens", arg, 1, 1 << 30, &v))) s->max_tokens = (int)v;
        break;
    case 't':
        rc = number("--temperature", arg, &sp->temperature);
        given = TSR_CLI_GIVEN_TEMPERATURE;
        break;
    case TSR_O_TOP_K:
        if (!(rc = tsr_cli_int("--top-k", arg, -(1L << 30), 1L << 30, &v))) sp->top_k = (int)v;
        given = TSR_CLI_GIVEN_TOP_K;
        break;
    case 'P':
        rc = number("--top-p", arg, &sp->top_p);
        given = TSR_CLI_GIVEN_TOP_P;
        break;
    case TSR_O_MIN_P:
        rc = number("--min-p", arg, &sp->min_p);
        given = TSR_CLI_GIVEN_MIN_P;
        break;
    case TSR_O_REPETITION:
        rc = number("--repetition-penalty", arg, &sp->repetition_penalty);
        given = TSR_CLI_GIVEN_REPETITION;
        break;
    case TSR_O_PRESENCE:
        rc = number("--presence-penalty", arg, &sp->presence_penalty);
        given = TSR_CLI_GIVEN_PRESENCE;
        break;
    case TSR_O_FREQUENCY:
        rc = number("--frequency-penalty", arg, &sp->frequency_penalty);
        given = TSR_CLI_GIVEN_FREQUENCY;
        break;
    case 's':
        rc = tsr_cli_u64("--seed", arg, &sp->seed);
        given = TSR_CLI_GIVEN_SEED;
        break;
    case TSR_O_IGNORE_EOS:
        s->ignore_eos = 1;
        break;
    case TSR_O_LOGIT_BIAS:
        rc = logit_bias(arg, s);
        break;
    default:
        return 0;
    }
    if (rc) return 2;
    s->given |= given;
    return 1;
}
