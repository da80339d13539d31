/* libFuzzer: an OpenAI HTTP request body through what the coordinator does with it before
 * routing: JSON parsing into a GenerateRequest (coordinator/openai.c), the session's validation,
 * tokenization of a prompt, and the error object a refusal is answered with.
 *
 * The first byte picks the endpoint (chat or completions); the rest is the body: malformed JSON,
 * wrong types, invalid UTF-8, NULs, huge numbers, deep nesting.
 *
 * Properties: nothing crashes or leaks; a refusal is TSR_EINVAL with a message, and its error
 * object is valid JSON naming the same field; an accepted request has an input, and all of its
 * strings are valid UTF-8 without NULs (the session's C strings cannot carry them); validation
 * then refuses only with TSR_EINVAL (the tokenizer is $TSR_TOKENIZER, a tokenizer.json; without
 * it tokenization is left out). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "common/status.h"
#include "coordinator/openai.h"
#include "coordinator/request.h"
#include "coordinator/validate.h"
#include "model/tokenizer.h"
#include "tests/fuzz/fuzz_check.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

enum { N_VOCAB = 49152, N_CTX = 8192 };

static tsr_tokenizer_t *tok;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    const char *p = getenv("TSR_TOKENIZER");
    if (p && tsr_tokenizer_from_json(p, &tok)) tok = NULL;
    return 0;
}

static void check_string(const char *s)
{
    if (!s) return;
    CHECK(tsr_utf8_valid(s, strlen(s)));
}

static void check_accepted(const struct tsr_openai_request *r, enum tsr_openai_kind kind)
{
    const Tessera__V1__GenerateRequest *g = &r->g;
    check_string(g->model);
    for (size_t i = 0; i < g->n_stop; i++) check_string(g->stop[i]);
    switch (g->input_case) {
    case TESSERA__V1__GENERATE_REQUEST__INPUT_PROMPT:
        CHECK(kind == TSR_OPENAI_COMPLETION);
        check_string(g->prompt);
        break;
    case TESSERA__V1__GENERATE_REQUEST__INPUT_TOKEN_IDS:
        CHECK(kind == TSR_OPENAI_COMPLETION && g->token_ids);
        for (size_t i = 0; i < g->token_ids->n_ids; i++) CHECK(g->token_ids->ids[i] >= 0);
        break;
    case TESSERA__V1__GENERATE_REQUEST__INPUT_MESSAGES:
        CHECK(kind == TSR_OPENAI_CHAT && g->messages);
        for (size_t i = 0; i < g->messages->n_messages; i++) {
            check_string(g->messages->messages[i]->role);
            check_string(g->messages->messages[i]->content);
        }
        break;
    default:
        CHECK(!"an accepted request without input");
    }
    struct tsr_sampling sp;
    int max_tokens;
    int rc = tsr_validate_generate(g, N_VOCAB, &sp, &max_tokens);
    CHECK(rc == 0 || rc == TSR_EINVAL);
    if (rc || !tok || g->input_case != TESSERA__V1__GENERATE_REQUEST__INPUT_PROMPT) return;
    int32_t *ids = NULL;
    size_t n = 0;
    rc = tsr_request_tokens(tok, NULL, "fuzz", g->input_case, g->prompt, NULL, NULL, &ids, &n);
    CHECK(rc == 0 || rc == TSR_EINVAL);
    CHECK(rc || n > 0);
    if (!rc) {
        rc = tsr_validate_context((int)n, max_tokens, N_CTX);
        CHECK(rc == 0 || rc == TSR_EINVAL);
    }
    free(ids);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) return 0;
    enum tsr_openai_kind kind = data[0] & 1 ? TSR_OPENAI_CHAT : TSR_OPENAI_COMPLETION;
    struct tsr_openai_request r;
    int rc = tsr_openai_parse(kind, (const char *)data + 1, size - 1, &r);
    if (rc) {
        CHECK(rc == TSR_EINVAL && tsr_last_error()[0]);
        char *e = tsr_openai_error_json(400, tsr_last_error(), r.param);
        CHECK(e);
        json_t *j = json_loads(e, 0, NULL);
        CHECK(j);
        const char *param =
            json_string_value(json_object_get(json_object_get(j, "error"), "param"));
        CHECK(r.param[0] ? param && !strcmp(param, r.param) : !param);
        json_decref(j);
        free(e);
    } else {
        check_accepted(&r, kind);
    }
    tsr_openai_request_free(&r);
    return 0;
}
