/* Chat templates rendered in C against jinja2's renders of the same templates
 * (tests/reference/chat_golden.json, from make_tokenizer_golden.py). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <jansson.h>

#include "common/status.h"
#include "model/chat.h"
#include "model/gguf.h"

#include "unit.h"

#define GOLDEN TSR_SOURCE_DIR "/tests/reference/chat_golden.json"
#define MODEL  TSR_SOURCE_DIR "/models/SmolLM2-135M-Instruct.Q4_1.gguf"

static const char *const smollm2_default =
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face";

static void test_golden(void **state)
{
    (void)state;
    json_error_t err;
    json_t *root = json_load_file(GOLDEN, 0, &err);
    if (!root) fail_msg("%s: %s", GOLDEN, err.text);
    json_t *templates = json_object_get(root, "templates");
    json_t *cases = json_object_get(root, "cases");
    size_t i, checked = 0;
    json_t *c;
    json_array_foreach(cases, i, c)
    {
        const char *name = json_string_value(json_object_get(c, "template"));
        const char *tpl = json_string_value(json_object_get(templates, name));
        struct tsr_chat chat;
        assert_int_equal(tsr_chat_detect(tpl, "llama", &chat), 0);
        enum tsr_chat_kind want = !strcmp(name, "smollm2")  ? TSR_CHAT_CHATML
                                  : !strcmp(name, "llama3") ? TSR_CHAT_LLAMA3
                                                            : TSR_CHAT_LLAMA2;
        assert_int_equal(chat.kind, want);
        if (want == TSR_CHAT_CHATML)
            assert_string_equal(chat.default_system, smollm2_default);
        else
            assert_null(chat.default_system);

        json_t *jm = json_object_get(c, "messages");
        size_t n = json_array_size(jm);
        struct tsr_chat_msg *msgs = calloc(n ? n : 1, sizeof *msgs);
        for (size_t k = 0; k < n; k++) {
            msgs[k].role = json_string_value(json_object_get(json_array_get(jm, k), "role"));
            msgs[k].content = json_string_value(json_object_get(json_array_get(jm, k), "content"));
        }
        char *out;
        int gen = json_is_true(json_object_get(c, "add_generation_prompt"));
        int rc = tsr_chat_render(&chat, msgs, n, gen, &out);
        const char *expected = json_string_value(json_object_get(c, "expected"));
        const char *cname = json_string_value(json_object_get(c, "case"));
        if (expected) {
            if (rc) fail_msg("%s/%s: %s", name, cname, tsr_last_error());
            if (strcmp(out, expected)) {
                fprintf(stderr, "%s/%s:\n got: [%s]\nwant: [%s]\n", name, cname, out, expected);
                fail();
            }
            free(out);
        } else {
            assert_int_equal(rc, TSR_EINVAL); /* jinja raised */
            assert_null(out);
        }
        free(msgs);
        tsr_chat_free(&chat);
        checked++;
    }
    assert_true(checked >= 27);
    json_decref(root);
}

/* The template in the model file itself. */
static void test_model_template(void **state)
{
    (void)state;
    tsr_gguf_t *g;
    if (tsr_test_missing(MODEL, "run scripts/fetch_model.sh")) return;
    assert_int_equal(tsr_gguf_open(MODEL, &g), 0);
    struct tsr_str s;
    assert_int_equal(tsr_gguf_get_str(g, "tokenizer.chat_template", &s), 0);
    char *tpl = strndup(s.p, s.n);
    tsr_gguf_close(g);
    struct tsr_chat chat;
    assert_int_equal(tsr_chat_detect(tpl, "llama", &chat), 0);
    assert_int_equal(chat.kind, TSR_CHAT_CHATML);
    assert_string_equal(chat.default_system, smollm2_default);
    struct tsr_chat_msg m[] = {{"user", "Hi"}};
    char *out;
    assert_int_equal(tsr_chat_render(&chat, m, 1, 1, &out), 0);
    assert_string_equal(out, "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, "
                             "trained by Hugging Face<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
                             "<|im_start|>assistant\n");
    free(out);
    tsr_chat_free(&chat);
    free(tpl);
}

static void test_detect(void **state)
{
    (void)state;
    struct tsr_chat c;
    /* Plain ChatML: no default system turn. */
    assert_int_equal(tsr_chat_detect("{% for message in messages %}{{'<|im_start|>' + "
                                     "message['role'] + '\\n' + message['content'] + "
                                     "'<|im_end|>' + '\\n'}}{% endfor %}",
                                     "qwen2", &c),
                     0);
    assert_int_equal(c.kind, TSR_CHAT_CHATML);
    assert_null(c.default_system);
    tsr_chat_free(&c);
    /* A system turn built from a variable is not a default. */
    assert_int_equal(
        tsr_chat_detect("{{ '<|im_start|>system\\n' + sys + '<|im_end|>' }}", NULL, &c), 0);
    assert_null(c.default_system);
    tsr_chat_free(&c);
    /* Escaped newline and quotes in the literal (Qwen2 style). */
    assert_int_equal(
        tsr_chat_detect("{{ \"<|im_start|>system\\nYou're \\\"nice\\\".<|im_end|>\\n\" }}"
                        "<|im_start|>",
                        NULL, &c),
        0);
    assert_string_equal(c.default_system, "You're \"nice\".");
    tsr_chat_free(&c);
    /* No template. */
    assert_int_equal(tsr_chat_detect(NULL, "llama", &c), 0);
    assert_int_equal(c.kind, TSR_CHAT_NONE);
    assert_int_equal(tsr_chat_detect(NULL, "qwen2", &c), 0);
    assert_int_equal(c.kind, TSR_CHAT_CHATML);
    /* Something else. */
    assert_int_equal(tsr_chat_detect("{{ messages | tojson }}", "llama", &c), TSR_EUNSUPPORTED);
    assert_int_equal(c.kind, TSR_CHAT_NONE);
    assert_non_null(strstr(tsr_last_error(), "not recognised"));
}

static void test_render_errors(void **state)
{
    (void)state;
    struct tsr_chat c = {TSR_CHAT_CHATML, NULL};
    struct tsr_chat_msg bad[] = {{"user", "a"}, {"wizard", "b"}};
    char *out;
    assert_int_equal(tsr_chat_render(&c, bad, 2, 1, &out), TSR_EINVAL);
    assert_null(out);
    struct tsr_chat_msg nocontent[] = {{"user", NULL}};
    assert_int_equal(tsr_chat_render(&c, nocontent, 1, 1, &out), TSR_EINVAL);
    /* No messages: just the generation prompt. */
    assert_int_equal(tsr_chat_render(&c, NULL, 0, 1, &out), 0);
    assert_string_equal(out, "<|im_start|>assistant\n");
    free(out);
    /* NONE concatenates. */
    struct tsr_chat none = {TSR_CHAT_NONE, NULL};
    struct tsr_chat_msg two[] = {{"user", "a"}, {"assistant", "b"}};
    assert_int_equal(tsr_chat_render(&none, two, 2, 1, &out), 0);
    assert_string_equal(out, "ab");
    free(out);
    /* Llama 3 trims like Python's str.strip(), U+3000 and U+001F included. */
    struct tsr_chat l3 = {TSR_CHAT_LLAMA3, NULL};
    struct tsr_chat_msg ws[] = {{"user", "\xe3\x80\x80\x1f x \t\n"}};
    assert_int_equal(tsr_chat_render(&l3, ws, 1, 0, &out), 0);
    assert_string_equal(out, "<|start_header_id|>user<|end_header_id|>\n\nx<|eot_id|>");
    free(out);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_golden),
        cmocka_unit_test(test_model_template),
        cmocka_unit_test(test_detect),
        cmocka_unit_test(test_render_errors),
    };
    return tsr_test_exit(cmocka_run_group_tests(tests, NULL, NULL));
}
