#include "coordinator/openai.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/rpc.h"
#include "common/status.h"
#include "coordinator/validate.h"
#include "model/sampling.h"

static int bad(struct tsr_openai_request *r, const char *param, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int bad(struct tsr_openai_request *r, const char *param, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    size_t n = (size_t)snprintf(r->param, sizeof r->param, "%s", param ? param : "");
    /* cut (a JSON key, valid UTF-8): not in the middle of a character, or it is no JSON string */
    for (n = n < sizeof r->param ? n : sizeof r->param - 1; !tsr_utf8_valid(r->param, n); n--)
        r->param[n - 1] = 0;
    return tsr_errorf(TSR_EINVAL, "%s", msg);
}

/* Field readers: 0 with the value, or TSR_EINVAL naming the field. JSON null reads as unset
 * (*has = 0). */
static int get_number(struct tsr_openai_request *r, const char *key, const json_t *v, double *out,
                      int *has)
{
    *has = 0;
    if (json_is_null(v)) return 0;
    if (!json_is_number(v)) return bad(r, key, "'%s' must be a number", key);
    *out = json_number_value(v);
    *has = 1;
    return 0;
}

static int get_int(struct tsr_openai_request *r, const char *key, const json_t *v, long long lo,
                   long long hi, long long *out, int *has)
{
    *has = 0;
    if (json_is_null(v)) return 0;
    if (!json_is_integer(v)) return bad(r, key, "'%s' must be an integer", key);
    *out = json_integer_value(v);
    if (*out < lo || *out > hi)
        return bad(r, key, "'%s' must be in [%lld, %lld]; got %lld", key, lo, hi, *out);
    *has = 1;
    return 0;
}

static int get_bool(struct tsr_openai_request *r, const char *key, const json_t *v, int *out)
{
    if (json_is_null(v)) return 0;
    if (!json_is_boolean(v)) return bad(r, key, "'%s' must be true or false", key);
    *out = json_is_true(v);
    return 0;
}

static int unsupported(struct tsr_openai_request *r, const char *key, const char *what)
{
    return bad(r, key, "'%s' is not supported here: %s", key, what);
}

static int read_stop(struct tsr_openai_request *r, const json_t *v)
{
    if (json_is_null(v)) return 0;
    if (json_is_string(v)) {
        if (!(r->stop = malloc(sizeof *r->stop))) return tsr_errorf(TSR_ENOMEM, "out of memory");
        r->stop[0] = (char *)json_string_value(v);
        r->g.n_stop = 1;
    } else if (json_is_array(v)) {
        size_t n = json_array_size(v);
        if (!(r->stop = malloc((n ? n : 1) * sizeof *r->stop)))
            return tsr_errorf(TSR_ENOMEM, "out of memory");
        for (size_t i = 0; i < n; i++) {
            const json_t *s = json_array_get(v, i);
            if (!json_is_string(s)) return bad(r, "stop", "stop[%zu] must be a string", i);
            r->stop[i] = (char *)json_string_value(s);
        }
        r->g.n_stop = n;
    } else {
        return bad(r, "stop", "'stop' must be a string or a list of strings");
    }
    r->g.stop = r->stop;
    return 0;
}

static int read_ids(struct tsr_openai_request *r, const json_t *a)
{
    size_t n = json_array_size(a);
    if (!(r->ids = malloc((n ? n : 1) * sizeof *r->ids)))
        return tsr_errorf(TSR_ENOMEM, "out of memory");
    for (size_t i = 0; i < n; i++) {
        const json_t *t = json_array_get(a, i);
        if (!json_is_integer(t))
            return bad(r, "prompt", "prompt[%zu] must be a token id (an integer)", i);
        json_int_t id = json_integer_value(t);
        if (id < 0 || id > INT32_MAX)
            return bad(r, "prompt", "prompt[%zu] = %lld is not a token id", i, (long long)id);
        r->ids[i] = (int32_t)id;
    }
    tessera__v1__token_ids__init(&r->tokens);
    r->tokens.n_ids = n;
    r->tokens.ids = r->ids;
    r->g.input_case = TESSERA__V1__GENERATE_REQUEST__INPUT_TOKEN_IDS;
    r->g.token_ids = &r->tokens;
    return 0;
}

/* A string, token ids, or a list of exactly one of those (the SDK's batch form). */
static int read_prompt(struct tsr_openai_request *r, const json_t *v)
{
    if (json_is_string(v)) {
        r->g.input_case = TESSERA__V1__GENERATE_REQUEST__INPUT_PROMPT;
        r->g.prompt = (char *)json_string_value(v);
        return 0;
    }
    if (!json_is_array(v))
        return bad(r, "prompt",
                   "'prompt' must be a string, a list of token ids, or a list of one "
                   "of those");
    size_t n = json_array_size(v);
    if (n == 0) return bad(r, "prompt", "'prompt' is empty");
    const json_t *first = json_array_get(v, 0);
    if (json_is_integer(first)) return read_ids(r, v);
    if (n > 1)
        return unsupported(r, "prompt", "one prompt per request (a list of several is a batch)");
    if (json_is_string(first) || json_is_array(first)) return read_prompt(r, first);
    return bad(r, "prompt",
               "'prompt' must be a string, a list of token ids, or a list of one "
               "of those");
}

/* content: a string, null, or a list of {"type": "text", "text": ...} parts (joined by "\n"). */
static int read_content(struct tsr_openai_request *r, size_t i, const json_t *c, char **out)
{
    char param[48];
    snprintf(param, sizeof param, "messages[%zu].content", i);
    if (json_is_null(c) || !c) {
        *out = "";
        return 0;
    }
    if (json_is_string(c)) {
        *out = (char *)json_string_value(c);
        return 0;
    }
    if (!json_is_array(c))
        return bad(r, param, "%s must be a string or a list of text parts", param);
    size_t total = 1;
    for (size_t k = 0; k < json_array_size(c); k++) {
        const json_t *p = json_array_get(c, k);
        const char *type = json_string_value(json_object_get(p, "type"));
        const json_t *text = json_object_get(p, "text");
        if (!json_is_object(p) || !type || strcmp(type, "text") || !json_is_string(text))
            return unsupported(r, param, "only parts of type \"text\" with a string \"text\"");
        total += json_string_length(text) + 1;
    }
    char *s = malloc(total);
    if (!s) return tsr_errorf(TSR_ENOMEM, "out of memory");
    r->parts[r->n_parts++] = s;
    size_t at = 0;
    for (size_t k = 0; k < json_array_size(c); k++) {
        const json_t *text = json_object_get(json_array_get(c, k), "text");
        if (k) s[at++] = '\n';
        memcpy(s + at, json_string_value(text), json_string_length(text));
        at += json_string_length(text);
    }
    s[at] = 0;
    *out = s;
    return 0;
}

static int read_messages(struct tsr_openai_request *r, const json_t *v)
{
    if (!json_is_array(v)) return bad(r, "messages", "'messages' must be a list of messages");
    size_t n = json_array_size(v);
    r->msgs = calloc(n ? n : 1, sizeof *r->msgs);
    r->msgp = calloc(n ? n : 1, sizeof *r->msgp);
    r->parts = calloc(n ? n : 1, sizeof *r->parts);
    if (!r->msgs || !r->msgp || !r->parts) return tsr_errorf(TSR_ENOMEM, "out of memory");
    for (size_t i = 0; i < n; i++) {
        const json_t *m = json_array_get(v, i);
        char param[48];
        snprintf(param, sizeof param, "messages[%zu]", i);
        if (!json_is_object(m)) return bad(r, param, "%s must be an object", param);
        const char *key;
        const json_t *f;
        json_object_foreach((json_t *)m, key, f)
        {
            if (strcmp(key, "role") && strcmp(key, "content") && strcmp(key, "name"))
                return bad(r, param, "%s.%s is not supported here", param, key);
            if (!strcmp(key, "name") && !json_is_null(f))
                return unsupported(r, param,
                                   "a message's name (the chat template has no place "
                                   "for it)");
        }
        const json_t *role = json_object_get(m, "role");
        if (!json_is_string(role)) return bad(r, param, "%s.role must be a string", param);
        tessera__v1__chat_message__init(&r->msgs[i]);
        const char *rs = json_string_value(role);
        r->msgs[i].role = (char *)(!strcmp(rs, "developer") ? "system" : rs);
        int rc = read_content(r, i, json_object_get(m, "content"), &r->msgs[i].content);
        if (rc) return rc;
        r->msgp[i] = &r->msgs[i];
    }
    tessera__v1__chat_messages__init(&r->chat);
    r->chat.n_messages = n;
    r->chat.messages = r->msgp;
    r->g.input_case = TESSERA__V1__GENERATE_REQUEST__INPUT_MESSAGES;
    r->g.messages = &r->chat;
    return 0;
}

/* {"token id": bias, ...}; the range and the count are the session's validation's. */
static int read_logit_bias(struct tsr_openai_request *r, const json_t *v)
{
    if (json_is_null(v)) return 0;
    if (!json_is_object(v))
        return bad(r, "logit_bias", "'logit_bias' must be an object of token id: bias");
    size_t n = json_object_size(v), i = 0;
    if (n > TSR_SAMPLING_MAX_LOGIT_BIAS)
        return bad(r, "logit_bias", "'logit_bias' has %zu entries; at most %d", n,
                   TSR_SAMPLING_MAX_LOGIT_BIAS);
    r->bias = calloc(n ? n : 1, sizeof *r->bias);
    r->biasp = calloc(n ? n : 1, sizeof *r->biasp);
    if (!r->bias || !r->biasp) return tsr_errorf(TSR_ENOMEM, "out of memory");
    const char *k;
    const json_t *b;
    json_object_foreach((json_t *)v, k, b)
    {
        char *end;
        errno = 0;
        long id = strtol(k, &end, 10);
        if (!k[0] || *end || errno || id < 0 || id > INT32_MAX)
            return bad(r, "logit_bias", "logit_bias: '%s' is not a token id", k);
        if (!json_is_number(b)) return bad(r, "logit_bias", "logit_bias['%s'] must be a number", k);
        double d = json_number_value(b);
        if (!(d >= -100 && d <= 100))
            return bad(r, "logit_bias", "logit_bias['%s'] must be in [-100, 100]; got %g", k, d);
        tessera__v1__logit_bias__init(&r->bias[i]);
        r->bias[i].has_token_id = r->bias[i].has_bias = 1;
        r->bias[i].token_id = (int32_t)id;
        r->bias[i].bias = (float)d;
        r->biasp[i] = &r->bias[i];
        i++;
    }
    r->sampling.n_logit_bias = n;
    r->sampling.logit_bias = r->biasp;
    r->g.sampling = &r->sampling;
    return 0;
}

/* A field that changes nothing at its default value, and is refused at any other. */
static int read_noop(struct tsr_openai_request *r, const char *key, const json_t *v)
{
    if (json_is_null(v)) return 0;
    if (!strcmp(key, "best_of")) {
        if (json_is_integer(v) && json_integer_value(v) == 1) return 0;
        return unsupported(r, key, "best_of (it must be 1; n gives several choices)");
    }
    if (!strcmp(key, "echo")) {
        if (json_is_false(v)) return 0;
        return unsupported(r, key, "echo (the prompt is not returned)");
    }
    if (!strcmp(key, "suffix")) {
        if (json_is_string(v) && !json_string_length(v)) return 0;
        return unsupported(r, key, "a suffix (insertion)");
    }
    if (!strcmp(key, "response_format")) {
        const char *t = json_string_value(json_object_get(v, "type"));
        if (json_is_object(v) && t && !strcmp(t, "text") && json_object_size(v) == 1) return 0;
        return unsupported(r, key, "structured output (only {\"type\": \"text\"})");
    }
    if (!strcmp(key, "tools") || !strcmp(key, "functions")) {
        if (json_is_array(v) && json_array_size(v) == 0) return 0;
        return unsupported(r, key, "tools and function calling");
    }
    if (!strcmp(key, "tool_choice") || !strcmp(key, "function_call")) {
        const char *s = json_string_value(v);
        if (s && (!strcmp(s, "none") || !strcmp(s, "auto"))) return 0;
        return unsupported(r, key, "tools and function calling");
    }
    return 1; /* not one of these */
}

/* Fields that never change the answer. */
static int ignorable(const char *key)
{
    static const char *const keys[] = {"user",
                                       "metadata",
                                       "store",
                                       "service_tier",
                                       "parallel_tool_calls",
                                       "prompt_cache_key",
                                       "safety_identifier"};
    for (size_t i = 0; i < sizeof keys / sizeof *keys; i++)
        if (!strcmp(key, keys[i])) return 1;
    return 0;
}

static int read_field(struct tsr_openai_request *r, enum tsr_openai_kind kind, const char *key,
                      const json_t *v, long long *max_tokens, int *has_max, int *has_input)
{
    double d;
    long long ll;
    int has, rc;
    if (!strcmp(key, "model")) {
        if (json_is_null(v)) return 0;
        if (!json_is_string(v)) return bad(r, key, "'model' must be a string");
        r->g.model = (char *)json_string_value(v);
        return 0;
    }
    if (kind == TSR_OPENAI_COMPLETION && !strcmp(key, "prompt")) {
        *has_input = 1;
        return read_prompt(r, v);
    }
    if (kind == TSR_OPENAI_CHAT && !strcmp(key, "messages")) {
        *has_input = 1;
        return read_messages(r, v);
    }
    if (!strcmp(key, "max_tokens") || !strcmp(key, "max_completion_tokens")) {
        if ((rc = get_int(r, key, v, INT32_MIN, INT32_MAX, &ll, &has))) return rc;
        /* max_completion_tokens (the newer name) wins over max_tokens */
        if (has && (!*has_max || !strcmp(key, "max_completion_tokens"))) {
            *max_tokens = ll;
            *has_max = 1;
        }
        return 0;
    }
    Tessera__V1__SamplingParams *sp = &r->sampling;
    if (!strcmp(key, "temperature") || !strcmp(key, "top_p") || !strcmp(key, "min_p") ||
        !strcmp(key, "repetition_penalty")) {
        if ((rc = get_number(r, key, v, &d, &has)) || !has) return rc;
        /* the session's validation checks the range; here only what a float cannot hold */
        if (fabs(d) > 3.4e38) return bad(r, key, "'%s' = %g is out of range", key, d);
        if (!strcmp(key, "temperature"))
            sp->has_temperature = 1, sp->temperature = (float)d;
        else if (!strcmp(key, "top_p"))
            sp->has_top_p = 1, sp->top_p = (float)d;
        else if (!strcmp(key, "min_p"))
            sp->has_min_p = 1, sp->min_p = (float)d;
        else
            sp->has_repetition_penalty = 1, sp->repetition_penalty = (float)d;
        r->g.sampling = sp;
        return 0;
    }
    if (!strcmp(key, "top_k")) {
        if ((rc = get_int(r, key, v, -1, INT32_MAX, &ll, &has)) || !has) return rc;
        sp->has_top_k = 1;
        sp->top_k = ll < 0 ? 0 : (int32_t)ll; /* vLLM's -1: off */
        r->g.sampling = sp;
        return 0;
    }
    if (!strcmp(key, "seed")) {
        if ((rc = get_int(r, key, v, LLONG_MIN, LLONG_MAX, &ll, &has)) || !has) return rc;
        sp->has_seed = 1;
        sp->seed = (uint64_t)ll;
        r->g.sampling = sp;
        return 0;
    }
    if (!strcmp(key, "presence_penalty") || !strcmp(key, "frequency_penalty")) {
        if ((rc = get_number(r, key, v, &d, &has)) || !has) return rc;
        if (!(d >= -2 && d <= 2)) return bad(r, key, "'%s' must be in [-2, 2]; got %g", key, d);
        if (!strcmp(key, "presence_penalty"))
            sp->has_presence_penalty = 1, sp->presence_penalty = (float)d;
        else
            sp->has_frequency_penalty = 1, sp->frequency_penalty = (float)d;
        r->g.sampling = sp;
        return 0;
    }
    if (!strcmp(key, "logit_bias")) return read_logit_bias(r, v);
    if (!strcmp(key, "n")) {
        if ((rc = get_int(r, key, v, 1, TSR_OPENAI_MAX_N, &ll, &has)) || !has) return rc;
        r->n = (int)ll;
        return 0;
    }
    if (!strcmp(key, "logprobs") && kind == TSR_OPENAI_CHAT) {
        int b = 0;
        if ((rc = get_bool(r, key, v, &b))) return rc;
        r->logprobs = b;
        return 0;
    }
    if (!strcmp(key, "logprobs")) { /* completions: how many alternatives, 0 = only the token's */
        if ((rc = get_int(r, key, v, 0, TSR_SAMPLING_MAX_TOP_LOGPROBS, &ll, &has)) || !has)
            return rc;
        r->logprobs = 1;
        r->top_logprobs = (int)ll;
        return 0;
    }
    if (!strcmp(key, "top_logprobs") && kind == TSR_OPENAI_CHAT) {
        if ((rc = get_int(r, key, v, 0, TSR_SAMPLING_MAX_TOP_LOGPROBS, &ll, &has)) || !has)
            return rc;
        r->top_logprobs = (int)ll;
        r->has_top_logprobs = 1;
        return 0;
    }
    if (!strcmp(key, "stop")) return read_stop(r, v);
    if (!strcmp(key, "ignore_eos")) {
        int b = 0;
        if ((rc = get_bool(r, key, v, &b))) return rc;
        r->g.has_ignore_eos = 1;
        r->g.ignore_eos = b;
        return 0;
    }
    if (!strcmp(key, "stream")) return get_bool(r, key, v, &r->stream);
    if (!strcmp(key, "stream_options")) {
        if (json_is_null(v)) return 0;
        if (!json_is_object(v)) return bad(r, key, "'stream_options' must be an object");
        const char *k;
        const json_t *f;
        json_object_foreach((json_t *)v, k, f)
        {
            if (strcmp(k, "include_usage"))
                return bad(r, "stream_options", "stream_options.%s is not supported here", k);
            if ((rc = get_bool(r, "stream_options", f, &r->include_usage))) return rc;
        }
        return 0;
    }
    if (!strcmp(key, "user")) {
        if (!json_is_null(v) && !json_is_string(v)) return bad(r, key, "'user' must be a string");
        return 0;
    }
    if (ignorable(key)) return 0;
    if ((rc = read_noop(r, key, v)) <= 0) return rc;
    return bad(r, key, "unknown field '%s'", key);
}

int tsr_openai_parse(enum tsr_openai_kind kind, const char *body, size_t len,
                     struct tsr_openai_request *r)
{
    memset(r, 0, sizeof *r);
    tessera__v1__generate_request__init(&r->g);
    tessera__v1__sampling_params__init(&r->sampling);
    json_error_t err;
    /* jansson refuses invalid UTF-8 and, without JSON_ALLOW_NUL, "\u0000" in strings (which a
     * C string, and so the request, cannot carry) */
    r->root = json_loadb(body, len, JSON_REJECT_DUPLICATES, &err);
    if (!r->root)
        return bad(r, NULL, "the body is not valid JSON: %s (at byte %d)", err.text, err.position);
    if (!json_is_object(r->root)) return bad(r, NULL, "the body must be a JSON object");
    long long max_tokens = 0;
    int has_max = 0, has_input = 0, rc;
    const char *key;
    json_t *v;
    json_object_foreach(r->root, key, v)
    {
        if ((rc = read_field(r, kind, key, v, &max_tokens, &has_max, &has_input))) return rc;
    }
    if (!has_input)
        return kind == TSR_OPENAI_CHAT ? bad(r, "messages", "'messages' is required")
                                       : bad(r, "prompt", "'prompt' is required");
    if (has_max) {
        r->g.has_max_tokens = 1;
        r->g.max_tokens = (int32_t)max_tokens;
    }
    if (r->has_top_logprobs && r->top_logprobs > 0 && !r->logprobs)
        return bad(r, "top_logprobs", "'top_logprobs' needs 'logprobs': true");
    if (r->logprobs) {
        r->g.has_logprobs = r->g.logprobs = 1;
        r->g.has_top_logprobs = 1;
        r->g.top_logprobs = r->top_logprobs;
    }
    if (!r->n) r->n = 1;
    return 0;
}

void tsr_openai_request_free(struct tsr_openai_request *r)
{
    for (size_t i = 0; i < r->n_parts; i++) free(r->parts[i]);
    free(r->parts);
    free(r->msgs);
    free(r->msgp);
    free(r->ids);
    free(r->stop);
    free(r->bias);
    free(r->biasp);
    json_decref(r->root);
    memset(r, 0, sizeof *r);
}

int tsr_openai_http_status(int rpc_code)
{
    switch (rpc_code) {
    case TSR_RPC_OK:
        return 200;
    case TSR_RPC_INVALID_ARGUMENT:
    case TSR_RPC_UNIMPLEMENTED: /* e.g. chat for a model whose template tessera cannot render */
    case TSR_RPC_FAILED_PRECONDITION:
        return 400;
    case TSR_RPC_NOT_FOUND:
        return 404;
    case TSR_RPC_RESOURCE_EXHAUSTED:
        return 429;
    case TSR_RPC_CANCELLED:
        return 499; /* nginx's "client closed request": nobody reads it */
    case TSR_RPC_UNAVAILABLE:
        return 503;
    case TSR_RPC_DEADLINE_EXCEEDED:
        return 504;
    default:
        return 500;
    }
}

char *tsr_openai_error_json(int status, const char *message, const char *param)
{
    const char *type = status == 429   ? "rate_limit_error"
                       : status >= 500 ? "server_error"
                                       : "invalid_request_error";
    const char *code = status == 400                                       ? "invalid_request"
                       : status == 401                                     ? "invalid_api_key"
                       : status == 404 && param && !strcmp(param, "model") ? "model_not_found"
                       : status == 404                                     ? "not_found"
                       : status == 405                                     ? "method_not_allowed"
                       : status == 413                                     ? "request_too_large"
                       : status == 429                                     ? "rate_limit_exceeded"
                       : status == 503                                     ? "service_unavailable"
                                                                           : "internal_error";
    json_t *e = json_object();
    json_t *m = json_string(message ? message : "");
    json_object_set_new(e, "message", m ? m : json_string("(the message is not UTF-8)"));
    json_object_set_new(e, "type", json_string(type));
    json_object_set_new(e, "param", param && param[0] ? json_string(param) : json_null());
    json_object_set_new(e, "code", json_string(code));
    json_t *j = json_pack("{s:o}", "error", e);
    char *s = j ? json_dumps(j, JSON_COMPACT) : NULL;
    json_decref(j);
    return s;
}

const char *tsr_openai_finish(Tessera__V1__FinishReason f)
{
    return f == TESSERA__V1__FINISH_REASON__FINISH_REASON_LENGTH ? "length" : "stop";
}

/* ---- n choices ---- */

struct nrun {
    tsr_sessions_t *ss;
    const struct tsr_session_io *io;
    pthread_mutex_t mu;
    int failed; /* a choice failed: the others stop (under mu) */
    struct one {
        struct nrun *nr;
        int index;
        Tessera__V1__GenerateRequest g;
        Tessera__V1__SamplingParams sp;
        char request_id[320];
        struct tsr_session_io io;
        struct tsr_session_status st;
        pthread_t thread;
        int has_thread;
    } one[TSR_OPENAI_MAX_N];
};

static int one_chunk(void *arg, const struct tsr_session_chunk *c)
{
    struct one *o = arg;
    struct nrun *nr = o->nr;
    struct tsr_session_chunk mine = *c;
    mine.index = o->index;
    pthread_mutex_lock(&nr->mu);
    int rc = nr->failed ? TSR_ECANCELLED : nr->io->chunk(nr->io->arg, &mine);
    pthread_mutex_unlock(&nr->mu);
    return rc;
}

static int one_cancelled(void *arg)
{
    struct one *o = arg;
    struct nrun *nr = o->nr;
    pthread_mutex_lock(&nr->mu);
    int gone = nr->failed || (nr->io->cancelled && nr->io->cancelled(nr->io->arg));
    pthread_mutex_unlock(&nr->mu);
    return gone;
}

static int64_t one_time_left(void *arg)
{
    struct one *o = arg;
    pthread_mutex_lock(&o->nr->mu);
    int64_t left = o->nr->io->time_left_ms(o->nr->io->arg);
    pthread_mutex_unlock(&o->nr->mu);
    return left;
}

static void *one_main(void *arg)
{
    struct one *o = arg;
    if (tsr_session_run(o->nr->ss, &o->g, &o->io, &o->st) != TSR_RPC_OK) {
        pthread_mutex_lock(&o->nr->mu);
        o->nr->failed = 1;
        pthread_mutex_unlock(&o->nr->mu);
    }
    return NULL;
}

int tsr_openai_run(tsr_sessions_t *ss, const struct tsr_openai_request *r,
                   const struct tsr_session_io *io, struct tsr_session_status *st)
{
    int n = r->n >= 1 && r->n <= TSR_OPENAI_MAX_N ? r->n : 1;
    if (n == 1) {
        struct tsr_session_io one = *io; /* chunks carry index 0 already */
        return tsr_session_run(ss, &r->g, &one, st);
    }
    struct nrun *nr = calloc(1, sizeof *nr);
    if (!nr) {
        st->code = TSR_RPC_RESOURCE_EXHAUSTED;
        snprintf(st->msg, sizeof st->msg, "out of memory");
        return st->code;
    }
    nr->ss = ss;
    nr->io = io;
    pthread_mutex_init(&nr->mu, NULL);
    for (int i = 0; i < n; i++) {
        struct one *o = &nr->one[i];
        o->nr = nr;
        o->index = i;
        o->g = r->g;
        if (r->g.sampling)
            o->sp = *r->g.sampling;
        else
            tessera__v1__sampling_params__init(&o->sp);
        if (o->sp.has_seed) o->sp.seed += (uint64_t)i; /* unseeded: each draws its own */
        o->g.sampling = &o->sp;
        if (r->g.request_id && r->g.request_id[0]) {
            snprintf(o->request_id, sizeof o->request_id, i ? "%s-%d" : "%s", r->g.request_id, i);
            o->g.request_id = o->request_id;
        }
        o->io = (struct tsr_session_io){.chunk = one_chunk,
                                        .cancelled = one_cancelled,
                                        .arg = o,
                                        .time_left_ms = io->time_left_ms ? one_time_left : NULL};
        if (i > 0) o->has_thread = !pthread_create(&o->thread, NULL, one_main, o);
        if (i > 0 && !o->has_thread) {
            o->st.code = TSR_RPC_RESOURCE_EXHAUSTED;
            snprintf(o->st.msg, sizeof o->st.msg, "cannot start a thread for choice %d", i);
            pthread_mutex_lock(&nr->mu);
            nr->failed = 1;
            pthread_mutex_unlock(&nr->mu);
        }
    }
    one_main(&nr->one[0]);
    for (int i = 1; i < n; i++)
        if (nr->one[i].has_thread) pthread_join(nr->one[i].thread, NULL);
    /* the first failure that was not a choice cancelled because another failed */
    st->code = TSR_RPC_OK;
    snprintf(st->msg, sizeof st->msg, "ok");
    for (int pass = 0; pass < 2 && st->code == TSR_RPC_OK; pass++)
        for (int i = 0; i < n; i++)
            if (nr->one[i].st.code != TSR_RPC_OK &&
                (pass || nr->one[i].st.code != TSR_RPC_CANCELLED)) {
                *st = nr->one[i].st;
                break;
            }
    pthread_mutex_destroy(&nr->mu);
    free(nr);
    return st->code;
}

/* ---- answers ---- */

void tsr_openai_answer_init(struct tsr_openai_answer *a, enum tsr_openai_kind kind,
                            const struct tsr_openai_request *r, const tsr_tokenizer_t *tok)
{
    memset(a, 0, sizeof *a);
    a->kind = kind;
    a->r = r;
    a->tok = tok;
}

void tsr_openai_answer_free(struct tsr_openai_answer *a)
{
    for (int i = 0; i < TSR_OPENAI_MAX_N; i++) {
        free(a->c[i].text);
        json_decref(a->c[i].lp);
    }
    memset(a, 0, sizeof *a);
}

/* A token's text: its own decode (partial UTF-8 becomes U+FFFD), as vLLM reports it. */
static json_t *token_text(const struct tsr_openai_answer *a, int32_t id, json_t **bytes)
{
    char *s = NULL, buf[32];
    size_t n = 0;
    if (!a->tok || tsr_tokenizer_decode(a->tok, &id, 1, 0, &s, &n)) {
        free(s);
        snprintf(buf, sizeof buf, "token_id:%d", (int)id);
        s = strdup(buf);
        n = s ? strlen(s) : 0;
    }
    if (bytes) {
        *bytes = json_array();
        for (size_t i = 0; i < n; i++)
            json_array_append_new(*bytes, json_integer((unsigned char)s[i]));
    }
    json_t *t = json_stringn(s ? s : "", n);
    free(s);
    return t ? t : json_string("");
}

/* OpenAI's float for a logprob: -inf (a token no sampler could pick) as a large negative. */
static json_t *lp_json(float lp)
{
    return json_real(isfinite(lp) ? lp : -9999.0);
}

/* The logprobs object of a chunk's tokens; text_offset the choice's text length before them. */
static json_t *chunk_logprobs(const struct tsr_openai_answer *a, const struct tsr_session_chunk *c,
                              size_t text_offset)
{
    if (!a->r->logprobs || !c->logprobs) return NULL;
    int chat = a->kind == TSR_OPENAI_CHAT;
    json_t *content = json_array(), *tokens = json_array(), *tlps = json_array(),
           *tops = json_array(), *offs = json_array();
    size_t off = text_offset;
    for (size_t i = 0; i < c->n_ids; i++) {
        json_t *bytes = NULL;
        json_t *tok = token_text(a, c->ids[i], chat ? &bytes : NULL);
        const Tessera__V1__TopLogprobs *t = c->top_logprobs ? c->top_logprobs[i] : NULL;
        if (chat) {
            json_t *alts = json_array();
            for (size_t k = 0; t && k < t->n_token_ids; k++) {
                json_t *b = NULL, *at = token_text(a, t->token_ids[k], &b);
                json_array_append_new(alts, json_pack("{s:o, s:o, s:o}", "token", at, "logprob",
                                                      lp_json(t->logprobs[k]), "bytes", b));
            }
            json_array_append_new(content, json_pack("{s:o, s:o, s:o, s:o}", "token", tok,
                                                     "logprob", lp_json(c->logprobs[i]), "bytes",
                                                     bytes, "top_logprobs", alts));
        } else {
            size_t len = json_string_length(tok);
            json_array_append_new(offs, json_integer((json_int_t)off));
            off += len;
            json_array_append_new(tokens, tok);
            json_array_append_new(tlps, lp_json(c->logprobs[i]));
            if (a->r->top_logprobs > 0) {
                json_t *alts = json_object();
                for (size_t k = 0; t && k < t->n_token_ids; k++) {
                    json_t *at = token_text(a, t->token_ids[k], NULL);
                    /* a dict keyed by text: two ids of one text keep the likelier (the first) */
                    if (!json_object_get(alts, json_string_value(at)))
                        json_object_set_new(alts, json_string_value(at), lp_json(t->logprobs[k]));
                    json_decref(at);
                }
                json_array_append_new(tops, alts);
            } else {
                json_array_append_new(tops, json_null());
            }
        }
    }
    json_t *lp;
    if (chat) {
        lp = json_pack("{s:o, s:n}", "content", content, "refusal");
        json_decref(tokens);
        json_decref(tlps);
        json_decref(tops);
        json_decref(offs);
    } else {
        lp = json_pack("{s:o, s:o, s:o, s:o}", "tokens", tokens, "token_logprobs", tlps,
                       "top_logprobs", tops, "text_offset", offs);
        json_decref(content);
    }
    return lp;
}

/* Appends src's arrays to dst's (same keys). */
static void merge_logprobs(json_t *dst, json_t *src)
{
    const char *k;
    json_t *v;
    json_object_foreach(src, k, v)
    {
        json_t *d = json_object_get(dst, k);
        if (json_is_array(d) && json_is_array(v)) json_array_extend(d, v);
    }
}

static void note_over(struct tsr_openai_answer *a, struct tsr_openai_choice *ch,
                      const struct tsr_session_chunk *c)
{
    if (!c->over) return;
    ch->over = 1;
    ch->finish = c->finish;
    ch->completion_tokens = c->completion_tokens;
    a->prompt_tokens = c->prompt_tokens;
    a->cached_tokens = c->cached_tokens;
}

int tsr_openai_answer_add(struct tsr_openai_answer *a, const struct tsr_session_chunk *c)
{
    if (c->index < 0 || c->index >= TSR_OPENAI_MAX_N) return TSR_EINVAL;
    struct tsr_openai_choice *ch = &a->c[c->index];
    json_t *lp = chunk_logprobs(a, c, ch->n_text);
    if (lp) {
        if (ch->lp)
            merge_logprobs(ch->lp, lp), json_decref(lp);
        else
            ch->lp = lp;
    }
    if (ch->n_text + c->n_text + 1 > ch->cap_text) {
        size_t want = ch->cap_text ? 2 * ch->cap_text : 256;
        while (want < ch->n_text + c->n_text + 1) want *= 2;
        char *p = realloc(ch->text, want);
        if (!p) return TSR_ENOMEM;
        ch->text = p;
        ch->cap_text = want;
    }
    if (c->n_text) memcpy(ch->text + ch->n_text, c->text, c->n_text);
    ch->n_text += c->n_text;
    ch->text[ch->n_text] = 0;
    note_over(a, ch, c);
    return 0;
}

static json_t *text_of(const char *s, size_t n)
{
    json_t *t = json_stringn(s ? s : "", n);
    return t ? t : json_string("");
}

/* choice's logprobs: a new reference, or JSON null when not asked */
static json_t *lp_or_null(const struct tsr_openai_answer *a, json_t *lp)
{
    if (lp) return json_incref(lp);
    if (!a->r->logprobs) return json_null();
    /* asked, no tokens: the empty object */
    return a->kind == TSR_OPENAI_CHAT ? json_pack("{s:[], s:n}", "content", "refusal")
                                      : json_pack("{s:[], s:[], s:[], s:[]}", "tokens",
                                                  "token_logprobs", "top_logprobs", "text_offset");
}

json_t *tsr_openai_answer_choices(const struct tsr_openai_answer *a)
{
    json_t *arr = json_array();
    int n = a->r->n >= 1 ? a->r->n : 1;
    for (int i = 0; i < n && arr; i++) {
        const struct tsr_openai_choice *ch = &a->c[i];
        const char *finish = tsr_openai_finish(ch->finish);
        json_t *choice =
            a->kind == TSR_OPENAI_CHAT
                ? json_pack("{s:i, s:{s:s, s:o}, s:o, s:s}", "index", i, "message", "role",
                            "assistant", "content", text_of(ch->text, ch->n_text), "logprobs",
                            lp_or_null(a, ch->lp), "finish_reason", finish)
                : json_pack("{s:i, s:o, s:o, s:s}", "index", i, "text",
                            text_of(ch->text, ch->n_text), "logprobs", lp_or_null(a, ch->lp),
                            "finish_reason", finish);
        if (!choice || json_array_append_new(arr, choice)) {
            json_decref(arr);
            return NULL;
        }
    }
    return arr;
}

json_t *tsr_openai_answer_usage(const struct tsr_openai_answer *a)
{
    int completion = 0;
    for (int i = 0; i < TSR_OPENAI_MAX_N; i++) completion += a->c[i].completion_tokens;
    return json_pack("{s:i, s:i, s:i, s:{s:i}}", "prompt_tokens", a->prompt_tokens,
                     "completion_tokens", completion, "total_tokens", a->prompt_tokens + completion,
                     "prompt_tokens_details", "cached_tokens", a->cached_tokens);
}

json_t *tsr_openai_stream_choice(struct tsr_openai_answer *a, const struct tsr_session_chunk *c)
{
    if (c->index < 0 || c->index >= TSR_OPENAI_MAX_N) return NULL;
    struct tsr_openai_choice *ch = &a->c[c->index];
    json_t *lp = chunk_logprobs(a, c, ch->n_text);
    note_over(a, ch, c);
    ch->n_text += c->n_text; /* the offset of the next chunk's tokens; the text is not kept */
    if (!c->n_text && !c->over && !lp && ch->started) return NULL;
    const char *finish = c->over ? tsr_openai_finish(c->finish) : NULL;
    json_t *choice;
    if (a->kind == TSR_OPENAI_CHAT) {
        json_t *delta = json_object();
        if (!ch->started) json_object_set_new(delta, "role", json_string("assistant"));
        json_object_set_new(delta, "content", text_of(c->text, c->n_text));
        choice = json_pack("{s:i, s:o, s:o, s:s?}", "index", c->index, "delta", delta, "logprobs",
                           lp ? lp : json_null(), "finish_reason", finish);
    } else {
        choice = json_pack("{s:i, s:o, s:o, s:s?}", "index", c->index, "text",
                           text_of(c->text, c->n_text), "logprobs", lp ? lp : json_null(),
                           "finish_reason", finish);
    }
    ch->started = 1;
    return choice;
}
