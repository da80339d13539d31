/* Model config from GGUF metadata and config.json; RoPE frequencies with scaling. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "common/status.h"
#include "model/config.h"
#include "model/gguf.h"
#include "unit.h"

static char tmpdir[] = "/tmp/tsr_config_XXXXXX";

static const char *write_json(const char *name, const char *text)
{
    static char path[512];
    snprintf(path, sizeof path, "%s/%s", tmpdir, name);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
    return path;
}

static void test_default_model_gguf(void **state)
{
    const char *path = TSR_SOURCE_DIR "/models/SmolLM2-135M-Instruct.Q4_1.gguf";
    if (tsr_test_missing(path, "run scripts/fetch_model.sh")) return;
    tsr_gguf_t *g;
    assert_int_equal(tsr_gguf_open(path, &g), 0);
    struct tsr_model_config c;
    assert_int_equal(tsr_config_from_gguf(g, &c), 0);
    assert_string_equal(c.arch, "llama");
    assert_int_equal(c.n_layer, 30);
    assert_int_equal(c.dim, 576);
    assert_int_equal(c.ffn_dim, 1536);
    assert_int_equal(c.n_head, 9);
    assert_int_equal(c.n_kv_head, 3);
    assert_int_equal(c.head_dim, 64);
    assert_int_equal(c.n_vocab, 49152);
    assert_int_equal(c.n_ctx_train, 8192);
    assert_true(fabsf(c.rope_theta - 100000.0f) < 1e-3f);
    assert_true(fabsf(c.norm_eps - 1e-5f) < 1e-9f);
    assert_int_equal(c.rope_neox, 0);
    assert_int_equal(c.tied_embeddings, 1);
    assert_int_equal(c.qkv_bias, 0);
    /* ~135M parameters */
    double np = tsr_config_n_params(&c);
    assert_true(np > 130e6 && np < 140e6);
    tsr_gguf_close(g);
}

static void test_llama3_json_and_rope(void **state)
{
    const char *p =
        write_json("llama3.json", "{\"model_type\":\"llama\",\"num_hidden_layers\":32,"
                                  "\"hidden_size\":4096,\"intermediate_size\":14336,"
                                  "\"num_attention_heads\":32,\"num_key_value_heads\":8,"
                                  "\"vocab_size\":128256,\"max_position_embeddings\":131072,"
                                  "\"rms_norm_eps\":1e-05,\"rope_theta\":500000.0,"
                                  "\"tie_word_embeddings\":false,\"rope_scaling\":{\"factor\":8.0,"
                                  "\"low_freq_factor\":1.0,\"high_freq_factor\":4.0,"
                                  "\"original_max_position_embeddings\":8192,"
                                  "\"rope_type\":\"llama3\"}}");
    struct tsr_model_config c;
    assert_int_equal(tsr_config_from_json(p, &c), 0);
    assert_int_equal(c.head_dim, 128);
    assert_int_equal(c.n_kv_head, 8);
    assert_int_equal(c.rope_scaling, TSR_ROPE_LLAMA3);
    assert_int_equal(c.rope_neox, 1);
    assert_int_equal(c.tied_embeddings, 0);
    float inv[64];
    tsr_rope_inv_freq(&c, NULL, inv);
    FILE *f = fopen(TSR_SOURCE_DIR "/tests/reference/rope_llama3_golden.txt", "r");
    assert_non_null(f);
    for (int i = 0; i < 64; i++) {
        double want;
        assert_int_equal(fscanf(f, "%lf", &want), 1);
        assert_true(fabs(inv[i] - want) <= 1e-6 * want);
    }
    fclose(f);
}

static void test_qwen2_bias_and_defaults(void **state)
{
    const char *p = write_json("qwen2.json", "{\"model_type\":\"qwen2\",\"num_hidden_layers\":2,"
                                             "\"hidden_size\":64,\"intermediate_size\":128,"
                                             "\"num_attention_heads\":4,\"vocab_size\":100}");
    struct tsr_model_config c;
    assert_int_equal(tsr_config_from_json(p, &c), 0);
    assert_int_equal(c.qkv_bias, 1);
    assert_int_equal(c.n_kv_head, 4); /* defaults to the head count */
    assert_int_equal(c.head_dim, 16);
    assert_int_equal(c.rope_scaling, TSR_ROPE_NONE);
}

static void test_bad_configs(void **state)
{
    struct tsr_model_config c;
    /* DeepSeek-V3's config with YaRN's beta_fast 0: every RoPE frequency would be NaN (log(ctx /
     * 0)) */
    FILE *f = fopen(TSR_SOURCE_DIR "/tests/reference/configs/deepseek-v3.json", "rb");
    assert_non_null(f);
    static char js[16384];
    size_t n = fread(js, 1, sizeof js - 1, f);
    fclose(f);
    js[n] = '\0';
    char *bf = strstr(js, "\"beta_fast\": 32");
    assert_non_null(bf);
    memcpy(bf + strlen("\"beta_fast\": "), " 0", 2);
    int yrc = tsr_config_from_json(write_json("yarn0.json", js), &c);
    if (yrc != TSR_EFORMAT || !strstr(tsr_last_error(), "beta_fast (0)"))
        fail_msg("%d: %s", yrc, tsr_last_error());
    const char *p = write_json("missing.json", "{\"model_type\":\"llama\",\"hidden_size\":64}");
    assert_int_equal(tsr_config_from_json(p, &c), TSR_EFORMAT);
    assert_non_null(strstr(tsr_last_error(), "num_hidden_layers"));
    p = write_json("gqa.json", "{\"num_hidden_layers\":2,\"hidden_size\":64,"
                               "\"intermediate_size\":128,\"num_attention_heads\":4,"
                               "\"num_key_value_heads\":3,\"vocab_size\":100}");
    assert_int_equal(tsr_config_from_json(p, &c), TSR_EFORMAT);
    assert_non_null(strstr(tsr_last_error(), "KV heads"));
    p = write_json("arch.json", "{\"model_type\":\"gpt_neox\"}");
    assert_int_equal(tsr_config_from_json(p, &c), TSR_EUNSUPPORTED);
    assert_non_null(strstr(tsr_last_error(), "gpt_neox"));
    p = write_json("broken.json", "{\"num_hidden_layers\": 2,");
    assert_int_equal(tsr_config_from_json(p, &c), TSR_EFORMAT);
    p = write_json("neg.json", "{\"num_hidden_layers\":-2,\"hidden_size\":64}");
    assert_int_equal(tsr_config_from_json(p, &c), TSR_EFORMAT);
    assert_int_equal(tsr_config_from_json("/nonexistent/config.json", &c), TSR_ENOTFOUND);
}

static int setup(void **state)
{
    return mkdtemp(tmpdir) ? 0 : -1;
}

static int teardown(void **state)
{
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmpdir);
    return system(cmd) == 0 ? 0 : -1;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_default_model_gguf),
        cmocka_unit_test(test_llama3_json_and_rope),
        cmocka_unit_test(test_qwen2_bias_and_defaults),
        cmocka_unit_test(test_bad_configs),
    };
    return tsr_test_exit(cmocka_run_group_tests(tests, setup, teardown));
}
