/* OpenAI request bodies read into GenerateRequests (coordinator/openai.c): every field that maps,
 * the forms prompt and content take, and refusals naming the field for wrong types, unknown
 * fields and values tessera does not implement. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "common/status.h"
#include "coordinator/openai.h"

static int parse(enum tsr_openai_kind kind, const char *body, struct tsr_openai_request *r)
{
    return tsr_openai_parse(kind, body, strlen(body), r);
}

/* Expects a refusal with param `param` and `word` in the message. */
static void expect_bad(enum tsr_openai_kind kind, const char *body, const char *param,
                       const char *word)
{
    struct tsr_openai_request r;
    int rc = parse(kind, body, &r);
    if (rc != TSR_EINVAL) fail_msg("%s: rc %d, expected TSR_EINVAL", body, rc);
    if (strcmp(r.param, param)) fail_msg("%s: param '%s', expected '%s'", body, r.param, param);
    if (!strstr(tsr_last_error(), word))
        fail_msg("%s: '%s' lacks '%s'", body, tsr_last_error(), word);
    tsr_openai_request_free(&r);
}

static void test_chat_fields(void **state)
{
    struct tsr_openai_request r;
    assert_int_equal(
        parse(TSR_OPENAI_CHAT,
              "{\"model\": \"m\", \"messages\": [{\"role\": \"developer\", \"content\": \"Be "
              "brief.\"}, {\"role\": \"user\", \"content\": [{\"type\": \"text\", \"text\": "
              "\"a\"}, {\"type\": \"text\", \"text\": \"b\"}]}, {\"role\": \"assistant\", "
              "\"content\": null}], \"max_tokens\": 9, \"max_completion_tokens\": 7, "
              "\"temperature\": 0.5, \"top_p\": 0.9, \"top_k\": -1, \"min_p\": 0.1, "
              "\"repetition_penalty\": 1.1, \"seed\": -1, \"stop\": \"x\", \"ignore_eos\": true, "
              "\"stream\": true, \"stream_options\": {\"include_usage\": true}, \"user\": \"u\", "
              "\"n\": 1, \"logprobs\": false, \"presence_penalty\": 0, \"logit_bias\": {}}",
              &r),
        0);
    const Tessera__V1__GenerateRequest *g = &r.g;
    assert_string_equal(g->model, "m");
    assert_int_equal(g->input_case, TESSERA__V1__GENERATE_REQUEST__INPUT_MESSAGES);
    assert_int_equal(g->messages->n_messages, 3);
    assert_string_equal(g->messages->messages[0]->role, "system");
    assert_string_equal(g->messages->messages[1]->content, "a\nb");
    assert_string_equal(g->messages->messages[2]->content, "");
    assert_true(g->has_max_tokens);
    assert_int_equal(g->max_tokens, 7); /* max_completion_tokens wins */
    assert_true(g->sampling && g->sampling->has_temperature && g->sampling->has_top_p);
    assert_float_equal(g->sampling->temperature, 0.5, 1e-6);
    assert_true(g->sampling->has_top_k);
    assert_int_equal(g->sampling->top_k, 0);
    assert_true(g->sampling->has_seed);
    assert_true(g->sampling->seed == UINT64_MAX);
    assert_int_equal(g->n_stop, 1);
    assert_string_equal(g->stop[0], "x");
    assert_true(g->has_ignore_eos && g->ignore_eos);
    assert_true(r.stream && r.include_usage);
    tsr_openai_request_free(&r);
}

static void test_prompt_forms(void **state)
{
    struct tsr_openai_request r;
    assert_int_equal(parse(TSR_OPENAI_COMPLETION, "{\"prompt\": \"hi\"}", &r), 0);
    assert_int_equal(r.g.input_case, TESSERA__V1__GENERATE_REQUEST__INPUT_PROMPT);
    assert_string_equal(r.g.prompt, "hi");
    assert_false(r.g.has_max_tokens);
    assert_null(r.g.sampling);
    tsr_openai_request_free(&r);
    const char *ids[] = {"{\"prompt\": [5, 6, 7]}", "{\"prompt\": [[5, 6, 7]]}"};
    for (int i = 0; i < 2; i++) {
        assert_int_equal(parse(TSR_OPENAI_COMPLETION, ids[i], &r), 0);
        assert_int_equal(r.g.input_case, TESSERA__V1__GENERATE_REQUEST__INPUT_TOKEN_IDS);
        assert_int_equal(r.g.token_ids->n_ids, 3);
        assert_int_equal(r.g.token_ids->ids[2], 7);
        tsr_openai_request_free(&r);
    }
    assert_int_equal(parse(TSR_OPENAI_COMPLETION,
                           "{\"prompt\": [\"one\"], \"stop\": [\"a\", "
                           "\"b\"]}",
                           &r),
                     0);
    assert_string_equal(r.g.prompt, "one");
    assert_int_equal(r.g.n_stop, 2);
    tsr_openai_request_free(&r);
}

static void test_refusals(void **state)
{
    const enum tsr_openai_kind C = TSR_OPENAI_COMPLETION, H = TSR_OPENAI_CHAT;
    expect_bad(C, "{\"prompt\": \"hi\"", "", "not valid JSON");
    expect_bad(C, "[]", "", "JSON object");
    expect_bad(C, "{\"prompt\": \"\xff\"}", "", "not valid JSON");
    expect_bad(C, "{\"prompt\": \"a\\u0000b\"}", "", "not valid JSON");
    expect_bad(C, "{\"prompt\": \"a\", \"prompt\": \"b\"}", "", "not valid JSON");
    expect_bad(C, "{}", "prompt", "required");
    expect_bad(H, "{\"prompt\": \"hi\"}", "prompt", "unknown field");
    expect_bad(C, "{\"messages\": []}", "messages", "unknown field");
    expect_bad(C, "{\"prompt\": \"hi\", \"frobnicate\": 1}", "frobnicate", "frobnicate");
    expect_bad(C, "{\"prompt\": \"hi\", \"n\": 9}", "n", "'n'");
    expect_bad(C, "{\"prompt\": \"hi\", \"n\": 0}", "n", "'n'");
    expect_bad(C, "{\"prompt\": \"hi\", \"best_of\": 3}", "best_of", "best_of");
    expect_bad(H, "{\"messages\": [], \"logprobs\": 3}", "logprobs", "true or false");
    expect_bad(C, "{\"prompt\": \"hi\", \"logprobs\": 21}", "logprobs", "logprobs");
    expect_bad(H, "{\"messages\": [], \"logprobs\": true, \"top_logprobs\": 21}", "top_logprobs",
               "top_logprobs");
    expect_bad(H, "{\"messages\": [], \"top_logprobs\": 5}", "top_logprobs", "top_logprobs");
    expect_bad(C, "{\"prompt\": \"hi\", \"echo\": true}", "echo", "echo");
    expect_bad(C, "{\"prompt\": \"hi\", \"frequency_penalty\": 2.5}", "frequency_penalty",
               "[-2, 2]");
    expect_bad(C, "{\"prompt\": \"hi\", \"presence_penalty\": \"x\"}", "presence_penalty",
               "number");
    expect_bad(C, "{\"prompt\": \"hi\", \"logit_bias\": {\"x\": 1}}", "logit_bias",
               "not a token id");
    expect_bad(C, "{\"prompt\": \"hi\", \"logit_bias\": {\"5\": 101}}", "logit_bias",
               "[-100, 100]");
    expect_bad(C, "{\"prompt\": \"hi\", \"logit_bias\": [1]}", "logit_bias", "object");
    expect_bad(H, "{\"messages\": [], \"tools\": [{}]}", "tools", "tools");
    expect_bad(H, "{\"messages\": [], \"response_format\": {\"type\": \"json_object\"}}",
               "response_format", "structured");
    expect_bad(C, "{\"prompt\": 5}", "prompt", "'prompt'");
    expect_bad(C, "{\"prompt\": []}", "prompt", "empty");
    expect_bad(C, "{\"prompt\": [\"a\", \"b\"]}", "prompt", "batch");
    expect_bad(C, "{\"prompt\": [1, -2]}", "prompt", "prompt[1]");
    expect_bad(C, "{\"prompt\": [1, 4294967296]}", "prompt", "prompt[1]");
    expect_bad(C, "{\"prompt\": [1, \"a\"]}", "prompt", "prompt[1]");
    expect_bad(C, "{\"prompt\": \"hi\", \"temperature\": \"hot\"}", "temperature", "number");
    expect_bad(C, "{\"prompt\": \"hi\", \"temperature\": 1e300}", "temperature", "range");
    expect_bad(C, "{\"prompt\": \"hi\", \"max_tokens\": 1.5}", "max_tokens", "integer");
    expect_bad(C, "{\"prompt\": \"hi\", \"max_tokens\": 4294967296}", "max_tokens", "max_tokens");
    expect_bad(C, "{\"prompt\": \"hi\", \"top_k\": -2}", "top_k", "top_k");
    expect_bad(C, "{\"prompt\": \"hi\", \"seed\": \"1\"}", "seed", "integer");
    expect_bad(C, "{\"prompt\": \"hi\", \"stop\": 5}", "stop", "stop");
    expect_bad(C, "{\"prompt\": \"hi\", \"stop\": [\"a\", 5]}", "stop", "stop[1]");
    expect_bad(C, "{\"prompt\": \"hi\", \"stream\": 1}", "stream", "true or false");
    expect_bad(C, "{\"prompt\": \"hi\", \"stream_options\": {\"x\": 1}}", "stream_options",
               "stream_options.x");
    expect_bad(C, "{\"prompt\": \"hi\", \"user\": 5}", "user", "string");
    expect_bad(C, "{\"prompt\": \"hi\", \"model\": 5}", "model", "string");
    expect_bad(H, "{\"messages\": {}}", "messages", "list");
    expect_bad(H, "{\"messages\": [5]}", "messages[0]", "object");
    expect_bad(H, "{\"messages\": [{\"content\": \"x\"}]}", "messages[0]", "role");
    expect_bad(H, "{\"messages\": [{\"role\": \"user\", \"content\": 5}]}", "messages[0].content",
               "string");
    expect_bad(H,
               "{\"messages\": [{\"role\": \"user\", \"content\": [{\"type\": \"image_url\"}]}]}",
               "messages[0].content", "text");
    expect_bad(H, "{\"messages\": [{\"role\": \"user\", \"content\": \"x\", \"tool_calls\": []}]}",
               "messages[0]", "tool_calls");
    expect_bad(H, "{\"messages\": [{\"role\": \"user\", \"content\": \"x\", \"name\": \"bob\"}]}",
               "messages[0]", "name");
}

/* n, logprobs, top_logprobs, penalties and logit_bias reach the GenerateRequest. */
static void test_sampling_fields(void **state)
{
    (void)state;
    struct tsr_openai_request r;
    assert_int_equal(
        tsr_openai_parse(TSR_OPENAI_CHAT,
                         "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"n\": 3, "
                         "\"logprobs\": true, \"top_logprobs\": 5, \"presence_penalty\": 0.5, "
                         "\"frequency_penalty\": -1.5, \"logit_bias\": {\"5\": -100, \"17\": 2.5}, "
                         "\"seed\": 7}",
                         strlen("{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], "
                                "\"n\": 3, \"logprobs\": true, \"top_logprobs\": 5, "
                                "\"presence_penalty\": 0.5, \"frequency_penalty\": -1.5, "
                                "\"logit_bias\": {\"5\": -100, \"17\": 2.5}, \"seed\": 7}"),
                         &r),
        0);
    assert_int_equal(r.n, 3);
    assert_true(r.g.has_logprobs && r.g.logprobs);
    assert_true(r.g.has_top_logprobs);
    assert_int_equal(r.g.top_logprobs, 5);
    const Tessera__V1__SamplingParams *sp = r.g.sampling;
    assert_true(sp && sp->has_presence_penalty && sp->has_frequency_penalty);
    assert_float_equal(sp->presence_penalty, 0.5, 1e-6);
    assert_float_equal(sp->frequency_penalty, -1.5, 1e-6);
    assert_int_equal(sp->n_logit_bias, 2);
    int saw5 = 0, saw17 = 0;
    for (size_t i = 0; i < sp->n_logit_bias; i++) {
        if (sp->logit_bias[i]->token_id == 5)
            saw5 = sp->logit_bias[i]->bias == -100.0f;
        else if (sp->logit_bias[i]->token_id == 17)
            saw17 = sp->logit_bias[i]->bias == 2.5f;
    }
    assert_true(saw5 && saw17);
    tsr_openai_request_free(&r);
    /* completions: logprobs is the number of alternatives */
    const char *c = "{\"prompt\": \"hi\", \"logprobs\": 4}";
    assert_int_equal(tsr_openai_parse(TSR_OPENAI_COMPLETION, c, strlen(c), &r), 0);
    assert_int_equal(r.n, 1);
    assert_true(r.g.logprobs && r.g.top_logprobs == 4);
    tsr_openai_request_free(&r);
    /* logprobs false: none asked, even with top_logprobs 0 */
    c = "{\"messages\": [], \"logprobs\": false, \"top_logprobs\": 0}";
    assert_int_equal(tsr_openai_parse(TSR_OPENAI_CHAT, c, strlen(c), &r), 0);
    assert_false(r.g.has_logprobs && r.g.logprobs);
    tsr_openai_request_free(&r);
}

/* Two choices' chunks into OpenAI's choices, logprobs objects and usage (no tokenizer: tokens
 * read "token_id:<id>"). */
static void test_answer_json(void **state)
{
    (void)state;
    struct tsr_openai_request r;
    const char *b = "{\"prompt\": \"hi\", \"n\": 2, \"logprobs\": 2}";
    assert_int_equal(tsr_openai_parse(TSR_OPENAI_COMPLETION, b, strlen(b), &r), 0);
    struct tsr_openai_answer a;
    tsr_openai_answer_init(&a, TSR_OPENAI_COMPLETION, &r, NULL);
    int32_t ids[2] = {7, 9}, alt_ids[2][2] = {{7, 3}, {9, 4}};
    float lps[2] = {-0.25f, -0.5f}, alt_lps[2][2] = {{-0.25f, -2}, {-0.5f, -1}};
    Tessera__V1__TopLogprobs tops[2], *topp[2];
    for (int i = 0; i < 2; i++) {
        tessera__v1__top_logprobs__init(&tops[i]);
        tops[i].n_token_ids = tops[i].n_logprobs = 2;
        tops[i].token_ids = alt_ids[i];
        tops[i].logprobs = alt_lps[i];
        topp[i] = &tops[i];
    }
    struct tsr_session_chunk c = {.ids = ids,
                                  .n_ids = 2,
                                  .logprobs = lps,
                                  .top_logprobs = topp,
                                  .text = "ab",
                                  .n_text = 2,
                                  .over = 1,
                                  .finish = TESSERA__V1__FINISH_REASON__FINISH_REASON_LENGTH,
                                  .prompt_tokens = 5,
                                  .completion_tokens = 2,
                                  .cached_tokens = 0,
                                  .index = 1};
    assert_int_equal(tsr_openai_answer_add(&a, &c), 0);
    c.index = 0;
    c.n_ids = 1;
    c.n_text = 1;
    c.completion_tokens = 1;
    c.finish = TESSERA__V1__FINISH_REASON__FINISH_REASON_STOP;
    assert_int_equal(tsr_openai_answer_add(&a, &c), 0);
    json_t *ch = tsr_openai_answer_choices(&a), *u = tsr_openai_answer_usage(&a);
    char *s = json_dumps(ch, JSON_COMPACT | JSON_SORT_KEYS), *us = json_dumps(u, JSON_COMPACT);
    assert_string_equal(
        s, "[{\"finish_reason\":\"stop\",\"index\":0,\"logprobs\":{\"text_offset\":[0],"
           "\"token_logprobs\":[-0.25],\"tokens\":[\"token_id:7\"],\"top_logprobs\":[{"
           "\"token_id:3\":-2.0,\"token_id:7\":-0.25}]},\"text\":\"a\"},{\"finish_reason\":"
           "\"length\",\"index\":1,\"logprobs\":{\"text_offset\":[0,10],\"token_logprobs\":["
           "-0.25,-0.5],\"tokens\":[\"token_id:7\",\"token_id:9\"],\"top_logprobs\":[{"
           "\"token_id:3\":-2.0,\"token_id:7\":-0.25},{\"token_id:4\":-1.0,\"token_id:9\":"
           "-0.5}]},\"text\":\"ab\"}]");
    c.cached_tokens = 4; /* the last choice over says what the worker found */
    c.index = 1;
    c.completion_tokens = 2;
    c.n_ids = 0;
    c.n_text = 0;
    assert_int_equal(tsr_openai_answer_add(&a, &c), 0);
    json_decref(u);
    u = tsr_openai_answer_usage(&a);
    free(us);
    us = json_dumps(u, JSON_COMPACT);
    assert_string_equal(us, "{\"prompt_tokens\":5,\"completion_tokens\":3,\"total_tokens\":8,"
                            "\"prompt_tokens_details\":{\"cached_tokens\":4}}");
    free(s);
    free(us);
    json_decref(ch);
    json_decref(u);
    tsr_openai_answer_free(&a);
    tsr_openai_request_free(&r);
}

static void test_error_object(void **state)
{
    char *e = tsr_openai_error_json(400, "bad 'n'", "n");
    assert_non_null(e);
    assert_string_equal(e, "{\"error\":{\"message\":\"bad 'n'\",\"type\":\"invalid_request_error\","
                           "\"param\":\"n\",\"code\":\"invalid_request\"}}");
    free(e);
    e = tsr_openai_error_json(503, "draining", NULL);
    assert_non_null(strstr(e, "\"param\":null"));
    assert_non_null(strstr(e, "server_error"));
    free(e);
    assert_int_equal(tsr_openai_http_status(3), 400);  /* INVALID_ARGUMENT */
    assert_int_equal(tsr_openai_http_status(5), 404);  /* NOT_FOUND */
    assert_int_equal(tsr_openai_http_status(8), 429);  /* RESOURCE_EXHAUSTED */
    assert_int_equal(tsr_openai_http_status(14), 503); /* UNAVAILABLE */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_chat_fields), cmocka_unit_test(test_prompt_forms),
        cmocka_unit_test(test_refusals),    cmocka_unit_test(test_sampling_fields),
        cmocka_unit_test(test_answer_json), cmocka_unit_test(test_error_object),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
