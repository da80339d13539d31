/* `tessera client`: a command-line gRPC client of a coordinator, for people. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/auth.h"
#include "common/rpc.h"
#include "common/status.h"
#include "grpc/health/v1/health.pb-c.h"
#include "tessera/v1/inference.pb-c.h"
#include "tools/cli.h"

static void client_usage(FILE *f)
{
    fprintf(f,
            "usage: tessera client [--address HOST:PORT] --prompt TEXT [--chat] [--system TEXT]\n"
            "                      | --prompt-ids 1,2,3 (token ids, for synthetic models)\n"
            "                      [--max-tokens N] [--temperature T] [--top-k K] [--top-p P]\n"
            "                      [--seed S] [--stop TEXT]... [--ignore-eos] [--show-ids]\n"
            "                      [--logprobs] [--timeout SECONDS]\n"
            "                      [--min-p P] [--repetition-penalty R] [--presence-penalty P]\n"
            "                      [--frequency-penalty F] [--logit-bias ID:BIAS,...]\n"
            "                      [--top-logprobs K] [--stop-ids 1,2] [--model NAME]\n"
            "                      [--request-id ID]\n"
            "       tessera client [--address HOST:PORT] --tokenize TEXT\n"
            "       tessera client [--address HOST:PORT] --list-models | --status | --health\n"
            "       any of them with [--tls-ca F [--tls-cert F --tls-key F]]\n"
            "                        [--api-key-file F | --api-key KEY]\n\n"
            "  --address   the coordinator (default 127.0.0.1:50051)\n"
            "  --tls-ca F  speak TLS, trusting the server certificates this CA (PEM) signed\n"
            "  --tls-cert F --tls-key F  a client certificate, for a server with mutual TLS\n"
            "  --api-key-file F  send F's first line as the API key (default $TESSERA_API_KEY);\n"
            "              --api-key KEY does too, but `ps` shows it to every user\n"
            "  --timeout S  the call's deadline in seconds (default 600)\n" TSR_CLI_PROMPT_HELP
                TSR_CLI_SAMPLING_HELP "  --stop TEXT  end before this text (up to 16 of them)\n"
            "  --stop-ids 1,2  end at these token ids\n"
            "  --logprobs   print [id logprob] per token on stderr; --top-logprobs K adds the K\n"
            "               likeliest ids with theirs ([id logprob | id:lp ...])\n"
            "  --model NAME  the served model to ask (default: the one served)\n"
            "  --request-id ID  the request's id in the server's logs (default: one it makes)\n"
            "  --tokenize TEXT  print the token ids of TEXT\n"
            "  --list-models, --status, --health  the served models, the cluster, its health\n"
            "Every field is the public API's (proto/tessera/v1/inference.proto; docs/api.md\n"
            "gives defaults and limits, which the server checks).\n"
            "Exit status: 0 ok, 1 the server answered an error (printed with its gRPC code),\n"
            "2 a usage error.\n");
}

struct client_args {
    struct tsr_cli_prompt in;
    struct tsr_cli_sampling smp;
    const char *address, *tokenize, *model, *request_id, *stop_ids;
    int top_logprobs, logprobs, list, status, health;
    double timeout;
    const char *tls_ca, *tls_cert, *tls_key, *api_key, *api_key_file;
    char *stop[16];
    int n_stop;
};

/* The request's sampling message: the fields a flag gave, no others (the server's defaults). */
static void sampling_message(const struct tsr_cli_sampling *smp, Tessera__V1__SamplingParams *p,
                             Tessera__V1__LogitBias *lb, Tessera__V1__LogitBias **lbp)
{
    const struct tsr_sampling *v = &smp->sp;
    unsigned g = smp->given;
    tessera__v1__sampling_params__init(p);
    p->has_temperature = !!(g & TSR_CLI_GIVEN_TEMPERATURE), p->temperature = v->temperature;
    p->has_top_k = !!(g & TSR_CLI_GIVEN_TOP_K), p->top_k = v->top_k;
    p->has_top_p = !!(g & TSR_CLI_GIVEN_TOP_P), p->top_p = v->top_p;
    p->has_min_p = !!(g & TSR_CLI_GIVEN_MIN_P), p->min_p = v->min_p;
    p->has_repetition_penalty = !!(g & TSR_CLI_GIVEN_REPETITION);
    p->repetition_penalty = v->repetition_penalty;
    p->has_presence_penalty = !!(g & TSR_CLI_GIVEN_PRESENCE);
    p->presence_penalty = v->presence_penalty;
    p->has_frequency_penalty = !!(g & TSR_CLI_GIVEN_FREQUENCY);
    p->frequency_penalty = v->frequency_penalty;
    p->has_seed = !!(g & TSR_CLI_GIVEN_SEED), p->seed = v->seed;
    for (int i = 0; i < v->n_logit_bias; i++) {
        lb[i] = (Tessera__V1__LogitBias)TESSERA__V1__LOGIT_BIAS__INIT;
        lb[i].has_token_id = lb[i].has_bias = 1;
        lb[i].token_id = v->logit_bias[i].id;
        lb[i].bias = v->logit_bias[i].bias;
        lbp[i] = &lb[i];
    }
    p->n_logit_bias = (size_t)v->n_logit_bias;
    p->logit_bias = lbp;
}

static int fail_status(int code, const char *details)
{
    fprintf(stderr, "tessera client: %s: %s\n", tsr_rpc_code_name(code), details);
    return 1;
}

static int unary(tsr_rpc_channel_t *ch, const char *method, const ProtobufCMessage *req,
                 double timeout, void **resp, size_t *len)
{
    int code;
    char *details = NULL;
    int rc = tsr_rpc_unary(ch, method, req, (int64_t)(timeout * 1000), resp, len, &code, &details);
    if (rc) {
        fprintf(stderr, "tessera client: %s\n", tsr_last_error());
        free(details);
        return 1;
    }
    if (code != TSR_RPC_OK) rc = fail_status(code, details ? details : "");
    free(details);
    return rc;
}

static int do_generate(tsr_rpc_channel_t *ch, struct client_args *a)
{
    Tessera__V1__GenerateRequest r = TESSERA__V1__GENERATE_REQUEST__INIT;
    Tessera__V1__ChatMessages cm = TESSERA__V1__CHAT_MESSAGES__INIT;
    Tessera__V1__ChatMessage msg[2] = {TESSERA__V1__CHAT_MESSAGE__INIT,
                                       TESSERA__V1__CHAT_MESSAGE__INIT};
    Tessera__V1__ChatMessage *mp[2] = {&msg[0], &msg[1]};
    Tessera__V1__TokenIds ti = TESSERA__V1__TOKEN_IDS__INIT;
    if (a->in.prompt_ids) {
        /* token ids for models without a tokenizer (synthetic ones) */
        int rc = tsr_cli_ids("client", "--prompt-ids", a->in.prompt_ids, &ti.ids, &ti.n_ids);
        if (rc) return rc;
        r.input_case = TESSERA__V1__GENERATE_REQUEST__INPUT_TOKEN_IDS;
        r.token_ids = &ti;
    } else if (a->in.chat) {
        int n = 0;
        if (a->in.system) {
            msg[n].role = "system";
            msg[n++].content = (char *)a->in.system;
        }
        msg[n].role = "user";
        msg[n++].content = (char *)a->in.prompt;
        cm.n_messages = (size_t)n;
        cm.messages = mp;
        r.input_case = TESSERA__V1__GENERATE_REQUEST__INPUT_MESSAGES;
        r.messages = &cm;
    } else {
        r.input_case = TESSERA__V1__GENERATE_REQUEST__INPUT_PROMPT;
        r.prompt = (char *)a->in.prompt;
    }
    Tessera__V1__SamplingParams sp;
    Tessera__V1__LogitBias lb[TSR_SAMPLING_MAX_LOGIT_BIAS], *lbp[TSR_SAMPLING_MAX_LOGIT_BIAS];
    sampling_message(&a->smp, &sp, lb, lbp);
    int32_t *stop_ids = NULL;
    size_t n_stop_ids = 0;
    if (a->stop_ids) {
        int rc = tsr_cli_ids("client", "--stop-ids", a->stop_ids, &stop_ids, &n_stop_ids);
        if (rc) {
            free(ti.ids);
            return rc;
        }
        r.stop_token_ids = stop_ids;
        r.n_stop_token_ids = n_stop_ids;
    }
    r.model = (char *)a->model;
    r.request_id = (char *)a->request_id;
    if (a->top_logprobs) {
        r.has_top_logprobs = 1;
        r.top_logprobs = a->top_logprobs;
    }
    r.sampling = &sp;
    if (a->smp.max_tokens) {
        r.has_max_tokens = 1;
        r.max_tokens = a->smp.max_tokens;
    }
    r.n_stop = (size_t)a->n_stop;
    r.stop = a->stop;
    r.has_logprobs = r.has_ignore_eos = 1;
    r.logprobs = a->logprobs;
    r.ignore_eos = a->smp.ignore_eos;
    tsr_rpc_stream_t *s;
    int open_rc = tsr_rpc_stream_open_pb(ch, "/tessera.v1.Inference/Generate", &r.base,
                                         (int64_t)(a->timeout * 1000), &s);
    free(ti.ids); /* packed into the request */
    free(stop_ids);
    if (open_rc) {
        fprintf(stderr, "tessera client: %s\n", tsr_last_error());
        return 1;
    }
    int exit_code = 0, rc, cap = 0, n_ids = 0;
    int32_t *ids = NULL;
    const void *buf;
    size_t len;
    const char *finish = "none";
    int prompt_tokens = 0, completion_tokens = 0;
    while ((rc = tsr_rpc_stream_recv(s, &buf, &len, -1)) == 0) {
        Tessera__V1__GenerateResponse *m = tessera__v1__generate_response__unpack(NULL, len, buf);
        if (!m) {
            fprintf(stderr, "tessera client: the server sent a malformed message\n");
            exit_code = 1;
            break;
        }
        if (m->text) fputs(m->text, stdout);
        fflush(stdout);
        for (size_t i = 0; i < m->n_token_ids; i++) {
            if (n_ids == cap) {
                cap = cap ? 2 * cap : 64;
                int32_t *g = realloc(ids, (size_t)cap * sizeof *g);
                if (!g) break;
                ids = g;
            }
            ids[n_ids++] = m->token_ids[i];
            if (a->logprobs && i < m->n_logprobs) {
                fprintf(stderr, "[%d %.4f", m->token_ids[i], m->logprobs[i]);
                const Tessera__V1__TopLogprobs *t =
                    i < m->n_top_logprobs ? m->top_logprobs[i] : NULL;
                for (size_t j = 0; t && j < t->n_token_ids && j < t->n_logprobs; j++)
                    fprintf(stderr, "%s%d:%.4f", j ? " " : " | ", t->token_ids[j], t->logprobs[j]);
                fprintf(stderr, "]");
            }
        }
        if (m->has_finish_reason) {
            const ProtobufCEnumValue *v = protobuf_c_enum_descriptor_get_value(
                &tessera__v1__finish_reason__descriptor, m->finish_reason);
            finish = v ? v->name + strlen("FINISH_REASON_") : "?";
        }
        if (m->usage) {
            prompt_tokens = m->usage->prompt_tokens;
            completion_tokens = m->usage->completion_tokens;
        }
        tessera__v1__generate_response__free_unpacked(m, NULL);
    }
    printf("\n");
    if (a->in.show_ids) {
        for (int i = 0; i < n_ids; i++) printf("%s%d", i ? "," : "", ids[i]);
        printf("\n");
    }
    fflush(stdout);
    if (rc == 1) {
        const char *details;
        int code = tsr_rpc_stream_status(s, &details);
        if (code != TSR_RPC_OK)
            exit_code = fail_status(code, details);
        else
            fprintf(stderr, "tessera client: finish %s, prompt %d tokens, completion %d tokens\n",
                    finish, prompt_tokens, completion_tokens);
    } else if (rc < 0) {
        fprintf(stderr, "tessera client: %s\n", tsr_last_error());
        exit_code = 1;
    }
    free(ids);
    tsr_rpc_stream_free(s);
    return exit_code;
}

static int do_tokenize(tsr_rpc_channel_t *ch, struct client_args *a)
{
    Tessera__V1__TokenizeRequest r = TESSERA__V1__TOKENIZE_REQUEST__INIT;
    r.input_case = TESSERA__V1__TOKENIZE_REQUEST__INPUT_PROMPT;
    r.prompt = (char *)a->tokenize;
    void *resp;
    size_t len;
    int rc = unary(ch, "/tessera.v1.Inference/Tokenize", &r.base, a->timeout, &resp, &len);
    if (rc) return rc;
    Tessera__V1__TokenizeResponse *m = tessera__v1__tokenize_response__unpack(NULL, len, resp);
    free(resp);
    if (!m) return fail_status(TSR_RPC_INTERNAL, "malformed TokenizeResponse");
    for (size_t i = 0; i < m->n_token_ids; i++)
        printf("%d\t%s\n", m->token_ids[i], i < m->n_pieces ? m->pieces[i] : "");
    tessera__v1__tokenize_response__free_unpacked(m, NULL);
    return 0;
}

static int do_list(tsr_rpc_channel_t *ch, struct client_args *a)
{
    Tessera__V1__ListModelsRequest r = TESSERA__V1__LIST_MODELS_REQUEST__INIT;
    void *resp;
    size_t len;
    int rc = unary(ch, "/tessera.v1.Inference/ListModels", &r.base, a->timeout, &resp, &len);
    if (rc) return rc;
    Tessera__V1__ListModelsResponse *m = tessera__v1__list_models_response__unpack(NULL, len, resp);
    free(resp);
    if (!m) return fail_status(TSR_RPC_INTERNAL, "malformed ListModelsResponse");
    for (size_t i = 0; i < m->n_models; i++)
        printf("%s\tcontext %d\tvocab %d\tready replicas %d\n", m->models[i]->id,
               m->models[i]->context_length, m->models[i]->vocab_size,
               m->models[i]->ready_replicas);
    tessera__v1__list_models_response__free_unpacked(m, NULL);
    return 0;
}

static int do_status(tsr_rpc_channel_t *ch, struct client_args *a)
{
    Tessera__V1__ClusterStatusRequest r = TESSERA__V1__CLUSTER_STATUS_REQUEST__INIT;
    void *resp;
    size_t len;
    int rc = unary(ch, "/tessera.v1.Inference/ClusterStatus", &r.base, a->timeout, &resp, &len);
    if (rc) return rc;
    Tessera__V1__ClusterStatusResponse *m =
        tessera__v1__cluster_status_response__unpack(NULL, len, resp);
    free(resp);
    if (!m) return fail_status(TSR_RPC_INTERNAL, "malformed ClusterStatusResponse");
    printf("model %s, %lld requests in flight\n", m->model, (long long)m->in_flight);
    printf("%-16s %-22s %6s %8s %11s %7s %7s %10s %10s %7s\n", "group", "leader", "gen", "load",
           "free/blocks", "running", "waiting", "prompt", "decode", "preempt");
    for (size_t i = 0; i < m->n_groups; i++) {
        const Tessera__V1__GroupStatus *g = m->groups[i];
        const Tessera__V1__WorkerStats *s = g->stats;
        char blocks[32] = "?";
        if (s) snprintf(blocks, sizeof blocks, "%d/%d", s->n_free_blocks, s->n_blocks);
        printf("%-16s %-22s %6lld %8lld %11s %7d %7d %10llu %10llu %7llu\n", g->group, g->address,
               (long long)g->generation, (long long)g->outstanding_tokens, blocks,
               s ? s->n_running : -1, s ? s->n_waiting : -1,
               s ? (unsigned long long)s->prompt_tokens : 0,
               s ? (unsigned long long)s->decode_tokens : 0,
               s ? (unsigned long long)s->preemptions : 0);
    }
    tessera__v1__cluster_status_response__free_unpacked(m, NULL);
    return 0;
}

static int do_health(tsr_rpc_channel_t *ch, struct client_args *a)
{
    Grpc__Health__V1__HealthCheckRequest r = GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
    r.service = "";
    void *resp;
    size_t len;
    int rc = unary(ch, "/grpc.health.v1.Health/Check", &r.base, a->timeout, &resp, &len);
    if (rc) return rc;
    Grpc__Health__V1__HealthCheckResponse *m =
        grpc__health__v1__health_check_response__unpack(NULL, len, resp);
    free(resp);
    if (!m) return fail_status(TSR_RPC_INTERNAL, "malformed HealthCheckResponse");
    const ProtobufCEnumValue *v = protobuf_c_enum_descriptor_get_value(
        &grpc__health__v1__health_check_response__serving_status__descriptor, m->status);
    printf("%s\n", v ? v->name : "?");
    int serving = m->status == GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING;
    grpc__health__v1__health_check_response__free_unpacked(m, NULL);
    return serving ? 0 : 1;
}

int tsr_cmd_client(int argc, char **argv)
{
    enum {
        O_STOP = 256,
        O_LOGP,
        O_TOK,
        O_LIST,
        O_STATUS,
        O_HEALTH,
        O_TIMEOUT,
        O_CA,
        O_CERT,
        O_KEY,
        O_APIKEY,
        O_APIKEYF,
        O_TOPLP,
        O_STOPIDS,
        O_MODEL,
        O_REQID
    };
    static const struct option opts[] = {TSR_CLI_PROMPT_OPTIONS,
                                         TSR_CLI_SAMPLING_OPTIONS,
                                         {"address", required_argument, 0, 'a'},
                                         {"stop", required_argument, 0, O_STOP},
                                         {"logprobs", no_argument, 0, O_LOGP},
                                         {"top-logprobs", required_argument, 0, O_TOPLP},
                                         {"stop-ids", required_argument, 0, O_STOPIDS},
                                         {"model", required_argument, 0, O_MODEL},
                                         {"request-id", required_argument, 0, O_REQID},
                                         {"tokenize", required_argument, 0, O_TOK},
                                         {"list-models", no_argument, 0, O_LIST},
                                         {"status", no_argument, 0, O_STATUS},
                                         {"health", no_argument, 0, O_HEALTH},
                                         {"timeout", required_argument, 0, O_TIMEOUT},
                                         {"tls-ca", required_argument, 0, O_CA},
                                         {"tls-cert", required_argument, 0, O_CERT},
                                         {"tls-key", required_argument, 0, O_KEY},
                                         {"api-key", required_argument, 0, O_APIKEY},
                                         {"api-key-file", required_argument, 0, O_APIKEYF},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    struct client_args a;
    memset(&a, 0, sizeof a);
    tsr_cli_sampling_init(&a.smp);
    a.address = getenv("TESSERA_ADDRESS") ? getenv("TESSERA_ADDRESS") : "127.0.0.1:50051";
    a.timeout = 600;
    long l;
    int c, rc;
    optind = 1;
    while ((c = getopt_long(argc, argv, "a:p:cn:t:P:s:h", opts, NULL)) != -1) {
        if ((rc = tsr_cli_prompt_opt(c, optarg, &a.in)) ||
            (rc = tsr_cli_sampling_opt(c, optarg, &a.smp))) {
            if (rc == 2) return 2;
            continue;
        }
        rc = 0;
        switch (c) {
        case 'a':
            a.address = optarg;
            break;
        case O_TOPLP:
            if (!(rc = tsr_cli_int("--top-logprobs", optarg, 0, 1 << 20, &l)))
                a.top_logprobs = l, a.logprobs = 1;
            break;
        case O_STOPIDS:
            a.stop_ids = optarg;
            break;
        case O_MODEL:
            a.model = optarg;
            break;
        case O_REQID:
            a.request_id = optarg;
            break;
        case O_STOP:
            if (a.n_stop == 16) {
                fprintf(stderr, "tessera client: at most 16 --stop strings\n");
                return 2;
            }
            a.stop[a.n_stop++] = optarg;
            break;
        case O_LOGP:
            a.logprobs = 1;
            break;
        case O_TOK:
            a.tokenize = optarg;
            break;
        case O_LIST:
            a.list = 1;
            break;
        case O_STATUS:
            a.status = 1;
            break;
        case O_HEALTH:
            a.health = 1;
            break;
        case O_CA:
            a.tls_ca = optarg;
            break;
        case O_CERT:
            a.tls_cert = optarg;
            break;
        case O_KEY:
            a.tls_key = optarg;
            break;
        case O_APIKEY:
            a.api_key = optarg;
            break;
        case O_APIKEYF:
            a.api_key_file = optarg;
            break;
        case O_TIMEOUT:
            rc = tsr_cli_float("--timeout", optarg, 0.001, 1e6, &a.timeout);
            break;
        case 'h':
            client_usage(stdout);
            return 0;
        default:
            client_usage(stderr);
            return 2;
        }
        if (rc) return rc;
    }
    if (optind < argc) {
        fprintf(stderr, "tessera client: unexpected argument '%s'\n", argv[optind]);
        return 2;
    }
    if (!!a.in.prompt + !!a.in.prompt_ids + !!a.tokenize + a.list + a.status + a.health != 1) {
        fprintf(stderr, "tessera client: give one of --prompt, --prompt-ids, --tokenize, "
                        "--list-models, --status and --health\n");
        client_usage(stderr);
        return 2;
    }
    char *key = NULL;
    struct tsr_tls_files id = {0};
    char *ca = NULL;
    if (tsr_auth_key_load(a.api_key_file, a.api_key, &key) ||
        ((a.tls_cert || a.tls_key) && !a.tls_ca &&
         tsr_errorf(TSR_EINVAL, "--tls-cert and --tls-key need --tls-ca")) ||
        tsr_tls_files_load(a.tls_cert, a.tls_key, NULL, &id) ||
        (a.tls_ca && tsr_tls_read_certs("--tls-ca", a.tls_ca, &ca))) {
        fprintf(stderr, "tessera client: %s\n", tsr_last_error());
        free(key);
        tsr_tls_files_free(&id);
        return 2;
    }
    const struct tsr_rpc_channel_opts co = {
        .ca_pem = ca, .cert_pem = id.cert_pem, .key_pem = id.key_pem, .api_key = key};
    tsr_rpc_channel_t *ch = tsr_rpc_channel_new_opts(a.address, &co);
    free(key);
    free(ca);
    tsr_tls_files_free(&id);
    if (!ch) {
        fprintf(stderr, "tessera client: %s\n", tsr_last_error());
        return 2;
    }
    if (a.in.prompt || a.in.prompt_ids)
        rc = do_generate(ch, &a);
    else if (a.tokenize)
        rc = do_tokenize(ch, &a);
    else if (a.list)
        rc = do_list(ch, &a);
    else if (a.status)
        rc = do_status(ch, &a);
    else
        rc = do_health(ch, &a);
    tsr_rpc_channel_free(ch);
    return rc;
}
