/* coordinator/textstream: the token ids a leader streams turned into client text. The cases that
 * once crashed the coordinator (a first chunk that adds no text), U+0000 in the text, stop strings
 * across tokens, a bad id. SmolLM2's tokenizer: id 2 is <|im_end|> (end of generation), 190 the
 * byte 0x00, 30679 the bytes E6 9D (two thirds of a CJK character). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "common/status.h"
#include "coordinator/textstream.h"

#define RUNNING TESSERA__V1__FINISH_REASON__FINISH_REASON_UNSPECIFIED
#define STOP    TESSERA__V1__FINISH_REASON__FINISH_REASON_STOP
#define LENGTH  TESSERA__V1__FINISH_REASON__FINISH_REASON_LENGTH

static tsr_tokenizer_t *tok;

static int setup(void **state)
{
    (void)state;
    return tsr_tokenizer_from_json(TSR_SOURCE_DIR "/tests/reference/smollm2_tokenizer.json", &tok);
}

static int teardown(void **state)
{
    (void)state;
    tsr_tokenizer_free(tok);
    return 0;
}

static void expect(const struct tsr_text_delta *d, size_t n_ids, const char *text, size_t n_text,
                   int over, Tessera__V1__FinishReason finish)
{
    assert_int_equal(d->n_ids, n_ids);
    assert_int_equal(d->n_text, n_text);
    assert_memory_equal(d->text, text, n_text);
    assert_int_equal(d->over, over);
    if (over) assert_int_equal(d->finish, finish);
}

static void test_empty_answer(void **state)
{
    (void)state;
    tsr_textstream_t *s = tsr_textstream_new(tok, NULL, 0);
    struct tsr_text_delta d;
    assert_int_equal(tsr_textstream_push(s, (int32_t[]){2}, 1, STOP, &d), 0);
    expect(&d, 1, "", 0, 1, STOP);
    /* the stream is over: more is ignored */
    assert_int_equal(tsr_textstream_push(s, (int32_t[]){2}, 1, STOP, &d), 0);
    expect(&d, 0, "", 0, 0, RUNNING);
    tsr_textstream_free(s);
}

static void test_partial_character_first(void **state)
{
    (void)state;
    tsr_textstream_t *s = tsr_textstream_new(tok, NULL, 0);
    struct tsr_text_delta d;
    assert_int_equal(tsr_textstream_push(s, (int32_t[]){30679}, 1, RUNNING, &d), 0);
    expect(&d, 1, "", 0, 0, RUNNING);
    /* ended mid-character: the bytes become one U+FFFD, as a one-shot decode makes them */
    assert_int_equal(tsr_textstream_push(s, NULL, 0, LENGTH, &d), 0);
    expect(&d, 0, "\xEF\xBF\xBD", 3, 1, LENGTH);
    tsr_textstream_free(s);
}

static void test_eog_first_ignored(void **state)
{
    (void)state;
    int32_t *ids;
    size_t n;
    assert_int_equal(tsr_tokenizer_encode(tok, "Hi", 2, 0, 0, &ids, &n), 0);
    tsr_textstream_t *s = tsr_textstream_new(tok, NULL, 0);
    struct tsr_text_delta d;
    assert_int_equal(tsr_textstream_push(s, (int32_t[]){2}, 1, RUNNING, &d), 0);
    expect(&d, 1, "", 0, 0, RUNNING);
    assert_int_equal(tsr_textstream_push(s, ids, n, LENGTH, &d), 0);
    expect(&d, n, "Hi", 2, 1, LENGTH);
    tsr_textstream_free(s);
    free(ids);
}

static void test_nul_in_text(void **state)
{
    (void)state;
    tsr_textstream_t *s = tsr_textstream_new(tok, NULL, 0);
    struct tsr_text_delta d;
    assert_int_equal(tsr_textstream_push(s, (int32_t[]){190, 190}, 2, LENGTH, &d), 0);
    expect(&d, 2, "\0\0", 2, 1, LENGTH);
    tsr_textstream_free(s);
}

/* "lo w" straddles the tokens of "Hello world": the text ends before it, and the ids end with
 * the token that completed it; nothing of it was sent before it was known. */
static void test_stop_across_tokens(void **state)
{
    (void)state;
    const char *text = "Hello world and more";
    int32_t *ids;
    size_t n;
    assert_int_equal(tsr_tokenizer_encode(tok, text, strlen(text), 0, 0, &ids, &n), 0);
    assert_true(n >= 4);
    char *stop[] = {"lo w", "zzz"};
    tsr_textstream_t *s = tsr_textstream_new(tok, stop, 2);
    char got[64] = "";
    size_t relayed = 0, k = 0;
    struct tsr_text_delta d = {0};
    for (; k < n && !d.over; k++) {
        assert_int_equal(tsr_textstream_push(s, ids + k, 1, k + 1 == n ? LENGTH : RUNNING, &d), 0);
        assert_true(strlen(got) + d.n_text < sizeof got);
        strncat(got, d.text, d.n_text);
        relayed += d.n_ids;
    }
    assert_true(d.over);
    assert_int_equal(d.finish, STOP);
    assert_string_equal(got, "Hel");
    /* "Hello" " world": the stop completes with the second token */
    assert_int_equal(relayed, 2);
    tsr_textstream_free(s);
    free(ids);
}

static void test_bad_id(void **state)
{
    (void)state;
    tsr_textstream_t *s = tsr_textstream_new(tok, NULL, 0);
    struct tsr_text_delta d;
    assert_int_equal(tsr_textstream_push(s, (int32_t[]){49152}, 1, RUNNING, &d), TSR_EINVAL);
    tsr_textstream_free(s);
}

static void test_no_tokenizer(void **state)
{
    (void)state;
    tsr_textstream_t *s = tsr_textstream_new(NULL, NULL, 0);
    struct tsr_text_delta d;
    assert_int_equal(tsr_textstream_push(s, (int32_t[]){5, 6, 7}, 3, LENGTH, &d), 0);
    expect(&d, 3, "", 0, 1, LENGTH);
    tsr_textstream_free(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_empty_answer),       cmocka_unit_test(test_partial_character_first),
        cmocka_unit_test(test_eog_first_ignored),  cmocka_unit_test(test_nul_in_text),
        cmocka_unit_test(test_stop_across_tokens), cmocka_unit_test(test_bad_id),
        cmocka_unit_test(test_no_tokenizer),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
