/* The coordinator's request checks: UTF-8, sampling ranges, inputs, sizes, stop strings, context.
 * Each bad field is TSR_EINVAL with a message naming it. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "common/status.h"
#include "coordinator/validate.h"

static void test_utf8(void **state)
{
    assert_true(tsr_utf8_valid("", 0));
    assert_true(tsr_utf8_valid("héllo, 世界 🙂", strlen("héllo, 世界 🙂")));
    const char *bad[] = {"\xff",
                         "\xc3",
                         "\xc0\xaf" /* overlong */,
                         "\xe0\x80\xaf",
                         "\xed\xa0\x80" /* surrogate */,
                         "\xf4\x90\x80\x80" /* > U+10FFFF */,
                         "a\x80",
                         "\xe2\x82"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
        assert_false(tsr_utf8_valid(bad[i], strlen(bad[i])));
}

/* Expects TSR_EINVAL with `word` in the message. */
static void expect_bad(const Tessera__V1__GenerateRequest *r, const char *word)
{
    struct tsr_sampling sp;
    int mt;
    assert_int_equal(tsr_validate_generate(r, 1000, &sp, &mt), TSR_EINVAL);
    if (!strstr(tsr_last_error(), word)) fail_msg("'%s' lacks '%s'", tsr_last_error(), word);
}

static void test_sampling_ranges(void **state)
{
    Tessera__V1__GenerateRequest r = TESSERA__V1__GENERATE_REQUEST__INIT;
    Tessera__V1__SamplingParams p = TESSERA__V1__SAMPLING_PARAMS__INIT;
    r.input_case = TESSERA__V1__GENERATE_REQUEST__INPUT_PROMPT;
    r.prompt = "hi";
    r.sampling = &p;
    struct tsr_sampling sp;
    int mt;
    assert_int_equal(tsr_validate_generate(&r, 1000, &sp, &mt), 0);
    assert_true(sp.temperature == 0 && sp.top_p == 1 && sp.top_k == 0);
    assert_int_equal(mt, TSR_DEFAULT_MAX_TOKENS);
    /* an unset seed is drawn at random each time (equal twice: a 2^-64 chance); a set one is kept
     */
    struct tsr_sampling sp2;
    assert_int_equal(tsr_validate_generate(&r, 1000, &sp2, &mt), 0);
    assert_true(sp.seed != sp2.seed);
    p.has_seed = 1;
    p.seed = 0;
    assert_int_equal(tsr_validate_generate(&r, 1000, &sp, &mt), 0);
    assert_int_equal(sp.seed, 0);
    p.has_seed = 0;
    p.has_temperature = 1;
    p.temperature = -0.5f;
    expect_bad(&r, "temperature");
    p.temperature = NAN;
    expect_bad(&r, "temperature");
    p.temperature = 0.7f;
    p.has_top_p = 1;
    p.top_p = 0;
    expect_bad(&r, "top_p");
    p.top_p = 1.5f;
    expect_bad(&r, "top_p");
    p.top_p = 0.9f;
    p.has_top_k = 1;
    p.top_k = -1;
    expect_bad(&r, "top_k");
    p.top_k = 40;
    p.has_min_p = 1;
    p.min_p = 1;
    expect_bad(&r, "min_p");
    p.min_p = 0.05f;
    p.has_repetition_penalty = 1;
    p.repetition_penalty = 0;
    expect_bad(&r, "repetition_penalty");
    p.repetition_penalty = 1.1f;
    assert_int_equal(tsr_validate_generate(&r, 1000, &sp, &mt), 0);
    assert_true(sp.temperature == 0.7f && sp.top_p == 0.9f && sp.top_k == 40);
    r.has_max_tokens = 1;
    r.max_tokens = 0;
    expect_bad(&r, "max_tokens");
    r.max_tokens = -5;
    expect_bad(&r, "max_tokens");
}

static void test_inputs(void **state)
{
    Tessera__V1__GenerateRequest r = TESSERA__V1__GENERATE_REQUEST__INIT;
    expect_bad(&r, "no input");
    r.input_case = TESSERA__V1__GENERATE_REQUEST__INPUT_PROMPT;
    r.prompt = "";
    expect_bad(&r, "empty");
    r.prompt = "bad \xff byte";
    expect_bad(&r, "UTF-8");
    char *big = malloc(TSR_MAX_PROMPT_BYTES + 2);
    memset(big, 'a', TSR_MAX_PROMPT_BYTES + 1);
    big[TSR_MAX_PROMPT_BYTES + 1] = 0;
    r.prompt = big;
    expect_bad(&r, "bytes");
    free(big);

    Tessera__V1__TokenIds ids = TESSERA__V1__TOKEN_IDS__INIT;
    r.input_case = TESSERA__V1__GENERATE_REQUEST__INPUT_TOKEN_IDS;
    r.token_ids = &ids;
    expect_bad(&r, "token_ids");
    int32_t v[3] = {1, 1000, 2};
    ids.n_ids = 3;
    ids.ids = v;
    expect_bad(&r, "vocabulary");
    v[1] = -1;
    expect_bad(&r, "vocabulary");
    v[1] = 999;
    struct tsr_sampling sp;
    int mt;
    assert_int_equal(tsr_validate_generate(&r, 1000, &sp, &mt), 0);

    Tessera__V1__ChatMessages cm = TESSERA__V1__CHAT_MESSAGES__INIT;
    Tessera__V1__ChatMessage m = TESSERA__V1__CHAT_MESSAGE__INIT;
    Tessera__V1__ChatMessage *mp = &m;
    r.input_case = TESSERA__V1__GENERATE_REQUEST__INPUT_MESSAGES;
    r.messages = &cm;
    expect_bad(&r, "messages");
    cm.n_messages = 1;
    cm.messages = &mp;
    m.role = "wizard";
    m.content = "hi";
    expect_bad(&r, "role");
    m.role = "user";
    m.content = "\xc3";
    expect_bad(&r, "UTF-8");
    m.content = "hi";
    assert_int_equal(tsr_validate_generate(&r, 1000, &sp, &mt), 0);
}

static void test_stops_and_context(void **state)
{
    Tessera__V1__GenerateRequest r = TESSERA__V1__GENERATE_REQUEST__INIT;
    r.input_case = TESSERA__V1__GENERATE_REQUEST__INPUT_PROMPT;
    r.prompt = "hi";
    char *stops[TSR_MAX_STOP_STRINGS + 1];
    for (int i = 0; i <= TSR_MAX_STOP_STRINGS; i++) stops[i] = "x";
    r.stop = stops;
    r.n_stop = TSR_MAX_STOP_STRINGS + 1;
    expect_bad(&r, "stop has 17 strings; at most 16");
    r.n_stop = 1;
    stops[0] = "";
    expect_bad(&r, "empty");
    char longs[TSR_MAX_STOP_BYTES + 2];
    memset(longs, 'y', sizeof longs - 1);
    longs[sizeof longs - 1] = 0;
    stops[0] = longs;
    expect_bad(&r, "bytes");
    stops[0] = "\xff";
    expect_bad(&r, "UTF-8");
    stops[0] = "\n\n";
    int32_t sid[1] = {5000};
    r.stop_token_ids = sid;
    r.n_stop_token_ids = 1;
    expect_bad(&r, "stop_token_ids");
    sid[0] = 2;
    struct tsr_sampling sp;
    int mt;
    assert_int_equal(tsr_validate_generate(&r, 1000, &sp, &mt), 0);

    assert_int_equal(tsr_validate_context(100, 28, 128), 0);
    assert_int_equal(tsr_validate_context(100, 29, 128), TSR_EINVAL);
    assert_non_null(strstr(tsr_last_error(), "context of 128"));
    assert_int_equal(tsr_validate_context(5, 2147483647, 8192), TSR_EINVAL);
}

static void test_request_id(void **state)
{
    (void)state;
    Tessera__V1__GenerateRequest r = TESSERA__V1__GENERATE_REQUEST__INIT;
    r.input_case = TESSERA__V1__GENERATE_REQUEST__INPUT_PROMPT;
    r.prompt = "hi";
    char id[TSR_MAX_REQUEST_ID_BYTES + 2];
    memset(id, 'i', TSR_MAX_REQUEST_ID_BYTES);
    id[TSR_MAX_REQUEST_ID_BYTES] = 0;
    r.request_id = id;
    struct tsr_sampling sp;
    int mt;
    assert_int_equal(tsr_validate_generate(&r, 1000, &sp, &mt), 0);
    id[TSR_MAX_REQUEST_ID_BYTES] = 'i';
    id[TSR_MAX_REQUEST_ID_BYTES + 1] = 0;
    expect_bad(&r, "request_id is 257 bytes; at most 256");
    r.request_id = "ab\xc3";
    expect_bad(&r, "request_id is not valid UTF-8");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_utf8),       cmocka_unit_test(test_sampling_ranges),
        cmocka_unit_test(test_inputs),     cmocka_unit_test(test_stops_and_context),
        cmocka_unit_test(test_request_id),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
