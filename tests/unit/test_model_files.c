/* Model files: error messages compose without aliasing (tsr_error_prefix), and what a bad file
 * gets is one clear error. The malformed-model suite (tests/cli/test_malformed_models.sh) runs
 * the same classes through the CLI; these check the library's exact texts. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <sys/stat.h>
#include <unistd.h>

#include "common/status.h"
#include "model/chat.h"
#include "model/config.h"
#include "model/files.h"

/* The message of a nested error reads outermost context first, each piece once, whatever the
 * lengths: formatting a buffer into itself printed "P: P: s" here. */
static void test_error_prefix_nested(void **state)
{
    (void)state;
    int rc = tsr_errorf(TSR_EFORMAT, "config: %d heads do not divide into %d KV heads", 9, 2);
    assert_int_equal(tsr_error_prefix(rc, "%s", "/models/x.gguf"), TSR_EFORMAT);
    assert_int_equal(tsr_error_prefix(rc, "plan"), TSR_EFORMAT);
    assert_string_equal(tsr_last_error(),
                        "plan: /models/x.gguf: config: 9 heads do not divide into 2 KV heads");
    /* The context may itself quote the last message. */
    tsr_errorf(TSR_EIO, "inner");
    tsr_error_prefix(TSR_EIO, "[%s]", tsr_last_error());
    assert_string_equal(tsr_last_error(), "[inner]: inner");
    /* Too long for the buffer: cut at the end, the start intact. */
    char big[2000];
    memset(big, 'p', sizeof big - 1);
    big[sizeof big - 1] = 0;
    tsr_errorf(TSR_EIO, "why");
    tsr_error_prefix(TSR_EIO, "%s", big);
    assert_int_equal(strlen(tsr_last_error()), 1023);
    assert_int_equal(tsr_last_error()[0], 'p');
}

static int config_rc(const char *json, struct tsr_model_config *c)
{
    return tsr_config_from_json_text(json, strlen(json), "c.json", c);
}

#define CONFIG(extra)                                                                              \
    "{\"num_hidden_layers\":2,\"hidden_size\":64,\"intermediate_size\":128,"                       \
    "\"num_attention_heads\":4,\"vocab_size\":100" extra "}"

/* Bounds: INVALID_ARGUMENT naming the field, its value and the bound, before anything is
 * allocated from it; zero and unknown semantics are errors too. Whole messages, by text. */
static void test_config_bounds_and_semantics(void **state)
{
    (void)state;
    struct tsr_model_config c;
    assert_int_equal(config_rc(CONFIG(""), &c), 0);
    assert_int_equal(config_rc(CONFIG(",\"num_hidden_layers\":1000000"), &c), TSR_EINVAL);
    assert_string_equal(tsr_last_error(), "c.json: num_hidden_layers = 1000000 is over the limit "
                                          "of 1024 (Llama 3.1 405B has 126)");
    assert_int_equal(config_rc(CONFIG(",\"vocab_size\":2000000"), &c), TSR_EINVAL);
    assert_string_equal(tsr_last_error(),
                        "c.json: vocab_size = 2000000 is over the limit of 1048576 (Gemma 3 has "
                        "262144)");
    assert_int_equal(config_rc(CONFIG(",\"max_position_embeddings\":0"), &c), TSR_EFORMAT);
    assert_string_equal(tsr_last_error(), "c.json: max_position_embeddings = 0 must be at least 1");
    assert_int_equal(
        config_rc(CONFIG(",\"rope_scaling\":{\"rope_type\":\"yarn\",\"factor\":4}"), &c),
        TSR_EUNSUPPORTED);
    assert_string_equal(tsr_last_error(), "c.json: rope_scaling type 'yarn' is not supported "
                                          "(default, linear, llama3)");
    assert_int_equal(config_rc(CONFIG(",\"rope_scaling\":{\"factor\":4}"), &c), TSR_EFORMAT);
    assert_string_equal(tsr_last_error(), "c.json: \"rope_scaling\" has no rope_type");
    assert_int_equal(config_rc(CONFIG(",\"rms_norm_eps\":\"small\""), &c), TSR_EFORMAT);
    assert_string_equal(tsr_last_error(), "c.json: \"rms_norm_eps\" must be a number");
    assert_int_equal(config_rc(CONFIG(",\"num_local_experts\":8"), &c), TSR_EUNSUPPORTED);
    assert_string_equal(tsr_last_error(),
                        "c.json: num_local_experts = 8: mixture-of-experts models are not "
                        "supported yet");
    /* A nested message: validation's text behind the file's name, once. */
    assert_int_equal(config_rc(CONFIG(",\"num_key_value_heads\":3"), &c), TSR_EFORMAT);
    assert_string_equal(tsr_last_error(), "c.json: config: 4 heads do not divide into 3 KV heads");
}

/* A FIFO is refused at once (a plain open() would wait for a writer forever). */
static void test_fifo_refused(void **state)
{
    (void)state;
    char dir[] = "/tmp/tsr_files_XXXXXX", path[64];
    assert_non_null(mkdtemp(dir));
    snprintf(path, sizeof path, "%s/config.json", dir);
    assert_int_equal(mkfifo(path, 0600), 0);
    struct tsr_model_config c;
    assert_int_equal(tsr_config_from_json(path, &c), TSR_EIO);
    char want[160];
    snprintf(want, sizeof want, "%s: the config.json is not a readable regular file: it is a FIFO",
             path);
    assert_string_equal(tsr_last_error(), want);
    assert_int_equal(tsr_config_load(dir, &c), TSR_EIO);
    assert_string_equal(tsr_last_error(), want);
    unlink(path);
    rmdir(dir);
}

/* Chat templates by name, and the family of those tessera does not render. */
static void test_chat_named(void **state)
{
    (void)state;
    struct tsr_chat model, c;
    assert_int_equal(tsr_chat_detect("{{ '<|im_start|>system\\nBe brief.<|im_end|>' }}<|im_start|>",
                                     "llama", &model),
                     0);
    assert_int_equal(tsr_chat_named("chatml", &model, &c), 0);
    assert_int_equal(c.kind, TSR_CHAT_CHATML);
    assert_string_equal(c.default_system, "Be brief.");
    tsr_chat_free(&c);
    assert_int_equal(tsr_chat_named("llama3", &model, &c), 0);
    assert_int_equal(c.kind, TSR_CHAT_LLAMA3);
    assert_null(c.default_system);
    assert_int_equal(tsr_chat_named("zephyr", NULL, &c), TSR_EINVAL);
    assert_string_equal(tsr_last_error(),
                        "unknown chat template 'zephyr' (chatml, llama3, llama2, none)");
    tsr_chat_free(&model);
    assert_string_equal(tsr_chat_family("{{ '<start_of_turn>' + role }}"), "Gemma");
    assert_string_equal(tsr_chat_family("{{ messages | tojson }}"), "unknown");
    struct tsr_chat unrec = {TSR_CHAT_UNRECOGNISED, NULL};
    struct tsr_chat_msg m = {"user", "hi"};
    char *out;
    assert_int_equal(tsr_chat_render(&unrec, &m, 1, 1, &out), TSR_EUNSUPPORTED);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_error_prefix_nested),
        cmocka_unit_test(test_config_bounds_and_semantics),
        cmocka_unit_test(test_fifo_refused),
        cmocka_unit_test(test_chat_named),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
