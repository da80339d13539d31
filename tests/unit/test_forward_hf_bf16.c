/* A real Hugging Face bf16 sharded directory against an oracle. The default model is converted
 * at test time (tests/reference/convert_to_hf_bf16.py: numpy and gguf-py) into a scratch
 * directory: config.json, three model-0000N-of-00003.safetensors shards named by
 * model.safetensors.index.json, the tokenizer files; 270 MB, never committed. tessera's loader
 * reads it as any Hugging Face checkpoint (HF tensor names, bf16, rotate-half RoPE), and its
 * teacher-forced logits are held against forward_hf_bf16_smollm2.* (make_hf_bf16_golden.py:
 * the float64 forward over the same weights rounded to bf16, computed in the GGUF layout).
 *
 * Bounds are the exact golden's (test_forward_golden): bf16 weights take the f32 matmul path, so
 * the forward is the model's up to f32 rounding. Top-16 logits within 5e-4, full rows within
 * NMSE 1e-9, the argmax wherever the margin is at least 1e-3 (all 213 positions: the smallest
 * is 0.0018). The bf16 rounding alone moves these logits from the unrounded weights' by up to
 * 0.26 (NMSE 4e-5), so a loader reading other weights cannot pass; a Q/K row permutation left as
 * GGUF's, or a shard ignored, fails outright (docs/correctness.md).
 *
 * The converter needs a Python with numpy and gguf: $TSR_ORACLE_PYTHON if set, else the first
 * of /opt/oracle/bin/python (the oracle environment the goldens were made in) and python3
 * (scripts/deps.sh installs both packages into Debian's) that imports both; none is exit 77 with
 * the reason. */
#include <ftw.h>
#include <jansson.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "common/status.h"
#include "forward_check.h"
#include "kernels/backend.h"
#include "model/model.h"
#include "model/tokenizer.h"
#include "unit.h"

#define MODEL     TSR_SOURCE_DIR "/models/SmolLM2-135M-Instruct.Q4_1.gguf"
#define CONVERTER TSR_SOURCE_DIR "/tests/reference/convert_to_hf_bf16.py"
#define REF(f)    TSR_SOURCE_DIR "/tests/reference/" f

static struct golden gold = {"hf-bf16",
                             REF("forward_hf_bf16_smollm2.json"),
                             REF("forward_hf_bf16_smollm2_rows.bin"),
                             5e-4,
                             1e-4,
                             1e-3,
                             1e-9,
                             NULL,
                             NULL,
                             0};
static char dir[4096];
static tsr_backend_t *backend;
static tsr_model_t *model;

/* The shell prefix of a Python that imports numpy and gguf into *py, or 0 when none does. */
static int find_python(char *py, size_t cap)
{
    const char *env = getenv("TSR_ORACLE_PYTHON");
    const char *cands[] = {"/opt/oracle/bin/python", "python3"};
    size_t n = sizeof cands / sizeof cands[0];
    for (size_t i = 0; i < (env ? 1 : n); i++) {
        char cmd[8192];
        snprintf(py, cap, "%s", env ? env : cands[i]);
        snprintf(cmd, sizeof cmd, "%s -c 'import numpy, gguf' >/dev/null 2>&1", py);
        if (system(cmd) == 0) return 1;
    }
    return 0;
}

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb, (void)flag, (void)ftw;
    return remove(path);
}

static int teardown(void **state)
{
    (void)state;
    tsr_model_free(model);
    tsr_backend_free(backend);
    model = NULL;
    backend = NULL;
    free_golden(&gold);
    if (dir[0]) nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    dir[0] = 0;
    return 0;
}

static int setup(void **state)
{
    (void)state;
    char py[4096], cmd[16384];
    if (tsr_test_missing(MODEL, "run scripts/fetch_model.sh") ||
        tsr_test_missing(gold.json, "run tests/reference/make_hf_bf16_golden.py"))
        return 0;
    if (!find_python(py, sizeof py)) {
        fprintf(stderr,
                "skipped: no Python imports numpy and gguf (%s; scripts/deps.sh installs them)\n",
                getenv("TSR_ORACLE_PYTHON") ? "TSR_ORACLE_PYTHON"
                                            : "tried /opt/oracle/bin/python and python3");
        tsr_test_n_skipped++;
        return 0;
    }
    if (load_golden(&gold)) return -1;
    const char *tmp = getenv("TMPDIR");
    snprintf(dir, sizeof dir, "%s/tsr-hf-bf16-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (!mkdtemp(dir)) {
        perror(dir);
        dir[0] = 0;
        return -1;
    }
    /* teardown removes it, after a failed setup too (cmocka runs the group teardown then) */
    snprintf(cmd, sizeof cmd, "%s '%s' '%s' '%s'", py, CONVERTER, MODEL, dir);
    printf("converting: %s\n", cmd);
    if (system(cmd) != 0) {
        fprintf(stderr, "ERROR: the converter failed\n");
        return -1;
    }
    if (!(backend = tsr_backend_cpu_new(2))) return -1;
    if (tsr_model_open(dir, &model)) {
        fprintf(stderr, "ERROR: %s: %s\n", dir, tsr_last_error());
        return -1;
    }
    return 0;
}

/* What was loaded is the sharded bf16 checkpoint, read the Hugging Face way. */
static void test_layout(void **state)
{
    (void)state;
    if (!model) return; /* skipped: setup said why */
    char path[8192];
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", dir);
    json_error_t err;
    json_t *index = json_load_file(path, 0, &err), *wm = json_object_get(index, "weight_map");
    assert_non_null(wm);
    const char *name, *shards[8];
    json_t *v;
    int n_shards = 0;
    json_object_foreach(wm, name, v)
    {
        int seen = 0;
        for (int i = 0; i < n_shards; i++) seen |= !strcmp(shards[i], json_string_value(v));
        if (!seen && n_shards < 8) shards[n_shards++] = json_string_value(v);
    }
    printf("%zu tensors in %d shards\n", json_object_size(wm), n_shards);
    assert_int_equal(json_object_size(wm), 1 + 30 * 9 + 1); /* embeddings, layers, norm */
    assert_true(n_shards >= 2);

    const struct tsr_model_config *c = tsr_model_config(model);
    assert_int_equal(c->n_layer, 30);
    assert_int_equal(c->dim, 576);
    assert_int_equal(c->n_head, 9);
    assert_int_equal(c->n_kv_head, 3);
    assert_int_equal(c->n_vocab, 49152);
    assert_true(c->rope_neox);       /* HF's rotate-half layout */
    assert_true(c->tied_embeddings); /* no lm_head.weight */
    const char *names[] = {"token_embd.weight", "blk.0.attn_q.weight", "blk.29.ffn_down.weight",
                           "output_norm.weight"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        struct tsr_tensor_view t;
        assert_int_equal(tsr_model_tensor(model, names[i], &t), 0);
        assert_int_equal(t.type, TSR_BF16);
    }
    json_decref(index);
}

/* The directory's tokenizer.json gives the golden's token ids for its prompts' text. */
static void test_tokenizer(void **state)
{
    (void)state;
    if (!model) return;
    const tsr_tokenizer_t *tok = tsr_model_tokenizer(model);
    assert_non_null(tok);
    json_t *prompts = json_object_get(gold.root, "prompts");
    for (size_t p = 0; p < json_array_size(prompts); p++) {
        json_t *pr = json_array_get(prompts, p);
        const char *text = json_string_value(json_object_get(pr, "text"));
        int n;
        int32_t *want = ids_of(json_object_get(pr, "tokens"), &n), *got;
        size_t n_got;
        assert_int_equal(tsr_tokenizer_encode(tok, text, strlen(text), 0, 1, &got, &n_got), 0);
        assert_int_equal(n_got, (size_t)n);
        assert_memory_equal(got, want, sizeof *want * (size_t)n);
        free(got);
        free(want);
    }
}

static void test_teacher_forced(void **state)
{
    (void)state;
    if (model) teacher_forced(model, backend, &gold, 200, 2);
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_layout),
        cmocka_unit_test(test_tokenizer),
        cmocka_unit_test(test_teacher_forced),
    };
    return tsr_test_exit(cmocka_run_group_tests(tests, setup, teardown));
}
