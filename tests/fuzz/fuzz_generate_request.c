/* libFuzzer: a public GenerateRequest through everything the coordinator does with it before
 * routing: the NUL check of string fields, protobuf-c's unpack, validation, tokenization (raw
 * text, or chat messages through a template), the context check, and the response stream made
 * with its stop strings.
 *
 * Two kinds of input, picked by the first byte: arbitrary wire bytes, or a request built field by
 * field from the input (structure-aware: any input case, roles good and bad, sampling values at
 * and past their bounds, max_tokens edge values, stop strings and ids, request_id at and past its
 * bound, strings of any bytes), packed by protobuf-c.
 *
 * Properties: nothing crashes; every refusal is TSR_EINVAL with a message; a request that
 * validates tokenizes to at least one token or is refused with TSR_EINVAL, never another code
 * (the tokenizer is $TSR_TOKENIZER, a tokenizer.json; without it only validation runs). */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/rpc.h"
#include "common/status.h"
#include "coordinator/request.h"
#include "coordinator/textstream.h"
#include "coordinator/validate.h"
#include "model/tokenizer.h"
#include "tests/fuzz/fuzz_check.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

enum { N_VOCAB = 49152, N_CTX = 8192, MAX_ITEMS = 24 };

static tsr_tokenizer_t *tok;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    const char *p = getenv("TSR_TOKENIZER");
    if (p && tsr_tokenizer_from_json(p, &tok)) tok = NULL;
    return 0;
}

/* Reads the input front to back; past its end everything is 0 / empty. */
struct reader {
    const uint8_t *p, *end;
};

static unsigned take(struct reader *r)
{
    return r->p < r->end ? *r->p++ : 0;
}

/* A string of the next byte's length (0..255, or a bound's neighbour) of raw input bytes, NULs
 * included; strings live in a pool freed after the run. */
static char *take_str(struct reader *r, char **pool, size_t *n_pool)
{
    unsigned k = take(r);
    size_t len = k == 255 ? TSR_MAX_REQUEST_ID_BYTES + (take(r) & 1) : k;
    char *s = calloc(len + 1, 1);
    CHECK(s);
    for (size_t i = 0; i < len; i++)
        s[i] = r->p < r->end ? (char)*r->p++ : (char)('a' + i % 26); /* pad to the length */
    pool[(*n_pool)++] = s;
    return s;
}

static const float fvals[] = {0, 1, 0.5f, -1, 2, 1e-30f, 1e30f, NAN, INFINITY, -INFINITY};
static const int32_t ivals[] = {0, 1, -1, 4, 8191, 8192, 8193, 2147483647, -2147483647 - 1};

/* A request built from the input, packed; malloc'ed bytes in *out. */
static size_t build(struct reader *r, uint8_t **out)
{
    Tessera__V1__GenerateRequest q = TESSERA__V1__GENERATE_REQUEST__INIT;
    Tessera__V1__ChatMessages cm = TESSERA__V1__CHAT_MESSAGES__INIT;
    Tessera__V1__ChatMessage msg[MAX_ITEMS], *msgp[MAX_ITEMS];
    Tessera__V1__TokenIds ti = TESSERA__V1__TOKEN_IDS__INIT;
    Tessera__V1__SamplingParams sp = TESSERA__V1__SAMPLING_PARAMS__INIT;
    int32_t ids[MAX_ITEMS], stop_ids[MAX_ITEMS];
    char *stops[MAX_ITEMS], *pool[4 * MAX_ITEMS + 8];
    size_t n_pool = 0;
    static const char *roles[] = {"system", "user", "assistant", "tool", ""};
    unsigned how = take(r);
    switch (how % 4) {
    case 0:
        q.input_case = TESSERA__V1__GENERATE_REQUEST__INPUT_PROMPT;
        q.prompt = take_str(r, pool, &n_pool);
        break;
    case 1:
        q.input_case = TESSERA__V1__GENERATE_REQUEST__INPUT_MESSAGES;
        q.messages = &cm;
        cm.n_messages = take(r) % MAX_ITEMS;
        cm.messages = msgp;
        for (size_t i = 0; i < cm.n_messages; i++) {
            tessera__v1__chat_message__init(&msg[i]);
            msg[i].role = (char *)roles[take(r) % 5];
            msg[i].content = take_str(r, pool, &n_pool);
            msgp[i] = &msg[i];
        }
        break;
    case 2:
        q.input_case = TESSERA__V1__GENERATE_REQUEST__INPUT_TOKEN_IDS;
        q.token_ids = &ti;
        ti.n_ids = take(r) % MAX_ITEMS;
        ti.ids = ids;
        for (size_t i = 0; i < ti.n_ids; i++)
            ids[i] = (int32_t)(take(r) | take(r) << 8) - (how & 16 ? 8 : 0);
        break;
    default:
        break; /* no input */
    }
    unsigned f = take(r);
    if (f & 1) {
        q.sampling = &sp;
        sp.has_temperature = take(r) & 1;
        sp.temperature = fvals[take(r) % 10];
        sp.has_top_k = take(r) & 1;
        sp.top_k = ivals[take(r) % 9];
        sp.has_top_p = take(r) & 1;
        sp.top_p = fvals[take(r) % 10];
        sp.has_min_p = take(r) & 1;
        sp.min_p = fvals[take(r) % 10];
        sp.has_repetition_penalty = take(r) & 1;
        sp.repetition_penalty = fvals[take(r) % 10];
        sp.has_seed = take(r) & 1;
        sp.seed = take(r);
    }
    if (f & 2) {
        q.has_max_tokens = 1;
        q.max_tokens = ivals[take(r) % 9];
    }
    if (f & 4) {
        q.n_stop = take(r) % MAX_ITEMS;
        q.stop = stops;
        for (size_t i = 0; i < q.n_stop; i++) stops[i] = take_str(r, pool, &n_pool);
    }
    if (f & 8) {
        q.n_stop_token_ids = take(r) % MAX_ITEMS;
        q.stop_token_ids = stop_ids;
        for (size_t i = 0; i < q.n_stop_token_ids; i++)
            stop_ids[i] = (int32_t)(take(r) | take(r) << 8);
    }
    if (f & 16) q.request_id = take_str(r, pool, &n_pool);
    if (f & 32) q.model = take_str(r, pool, &n_pool);
    q.has_ignore_eos = q.ignore_eos = (f >> 6) & 1;
    q.has_logprobs = q.logprobs = f >> 7;
    size_t len;
    *out = tsr_pb_pack_with_bytes(&q.base, 0, NULL, 0, &len);
    CHECK(*out);
    for (size_t i = 0; i < n_pool; i++) free(pool[i]);
    return len;
}

static void pipeline(const uint8_t *buf, size_t size)
{
    int nul = tsr_pb_check_strings(&tessera__v1__generate_request__descriptor, buf, size);
    Tessera__V1__GenerateRequest *r = tessera__v1__generate_request__unpack(NULL, size, buf);
    if (!r) return;
    if (nul) { /* the coordinator refuses it here */
        CHECK(nul == TSR_EINVAL || nul == TSR_EFORMAT);
        tessera__v1__generate_request__free_unpacked(r, NULL);
        return;
    }
    struct tsr_sampling sp;
    int max_tokens, rc = tsr_validate_generate(r, N_VOCAB, &sp, &max_tokens);
    CHECK(rc == 0 || (rc == TSR_EINVAL && tsr_last_error()[0]));
    if (!rc && (tok || r->input_case == TESSERA__V1__GENERATE_REQUEST__INPUT_TOKEN_IDS)) {
        struct tsr_chat chatml = {.kind = TSR_CHAT_CHATML};
        int32_t *ids = NULL;
        size_t n = 0;
        rc = tsr_request_tokens(tok, &chatml, "fuzz", r->input_case, r->prompt, r->messages,
                                r->token_ids, &ids, &n);
        CHECK(rc == 0 || rc == TSR_EINVAL);
        CHECK(rc || n > 0);
        if (!rc) {
            rc = tsr_validate_context((int)n, max_tokens, N_CTX);
            CHECK(rc == 0 || rc == TSR_EINVAL);
            CHECK(max_tokens >= 1);
            tsr_textstream_t *ts = tsr_textstream_new(tok, r->stop, r->n_stop);
            CHECK(ts);
            struct tsr_text_delta d;
            CHECK(!tsr_textstream_push(ts, ids, n, TESSERA__V1__FINISH_REASON__FINISH_REASON_LENGTH,
                                       &d));
            CHECK(d.over && tsr_utf8_valid(d.text, d.n_text));
            tsr_textstream_free(ts);
        }
        free(ids);
    }
    tessera__v1__generate_request__free_unpacked(r, NULL);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) return 0;
    if (data[0] & 1) {
        pipeline(data + 1, size - 1);
        return 0;
    }
    struct reader rd = {data + 1, data + size};
    uint8_t *buf;
    size_t len = build(&rd, &buf);
    pipeline(buf, len);
    free(buf);
    return 0;
}
