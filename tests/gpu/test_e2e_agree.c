/* End to end on GPUs: the whole model on the CUDA backend against the CPU backend, and tensor
 * parallel runs over NCCL against one GPU. Runs the built `tessera` (the runner lives in
 * tsr_worker, which GPU tests do not link) like a person would:
 *
 * 1. default model (SmolLM2-135M Q4_1) and synthetic:llama3-8b (bf16): teacher-forced argmax on
 *    cuda agrees with the CPU's at >= 99% of positions (`tessera bench --agree`), both sides with
 *    the same KV cache type: the default model with f32, bf16 (the GPU's default) and fp8
 *    (both sides quantize K and V alike and widen them alike), 8b with bf16;
 * 2. with >= 3 GPUs: default model, greedy 64 tokens at TP=3 equal TP=1 (`tessera generate`);
 * 3. with >= 2 (4) GPUs: llama3-8b teacher-forced argmax at TP=2 (TP=4) agrees with TP=1 at >= 99%;
 * 4. decode through CUDA graphs equals decode op by op (graphs_vs_eager);
 * 5. long contexts: synthetic:tiny-128k (Llama 3.1's attention and RoPE scaling), bf16 KV cache,
 *    teacher-forced argmax on cuda agrees with the CPU's at >= 99% of 8,192 and of 32,768
 *    positions (half of them one prompt step, the rest one decode step each: the prefill and the
 *    decode kernels at every length up to there);
 * 6. mixture of experts (the routing on the host, the experts' matmuls on the GPU):
 *    synthetic:mixtral-tiny and qwen2-moe-tiny (its gated shared expert), f32 KV cache, agree
 *    with the CPU at >= 99% of 128 positions.
 *
 * Exits 77 (skipped) without a CUDA device (1 under TESSERA_REQUIRE_GPU=1: gpu_test.h), and 77
 * when every part asked for needs more GPUs than there are (a part skipped beside parts that ran
 * is a SKIP line, not a failure). Arguments, each optional: "default", "8b" (part 1),
 * "tp3" (part 2), "tp8b" (part 3), "graphs" (part 4), "long" (part 5), "moe" (part 6) pick
 * parts (all by default). TESSERA_BIN
 * overrides where `tessera` is (default: ../tessera beside this program's folder); the source tree
 * (for models/) is found from this file's path, or TESSERA_SOURCE_DIR. */
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "kernels/cuda/cuda_backend.h"
#include "tests/gpu/gpu_test.h"

#define DEFAULT_MODEL "models/SmolLM2-135M-Instruct.Q4_1.gguf"

static char g_bin[PATH_MAX], g_root[PATH_MAX], g_tmp[PATH_MAX];
static int g_failed;

static int run(const char *cmd)
{
    fprintf(stderr, "+ %s\n", cmd);
    fflush(stderr);
    int st = system(cmd);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128;
}

static void check(int ok, const char *what)
{
    fprintf(stderr, "%s: %s\n", ok ? "PASS" : "FAIL", what);
    if (!ok) g_failed = 1;
}

/* The last line of a command's stdout (the ids line of `generate --show-ids`). */
static int last_line(const char *cmd, char *out, size_t cap)
{
    fprintf(stderr, "+ %s\n", cmd);
    FILE *p = popen(cmd, "r");
    if (!p) return -1;
    char line[65536];
    out[0] = 0;
    while (fgets(line, sizeof line, p))
        if (line[0] != '\n') snprintf(out, cap, "%s", line);
    int st = pclose(p);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128;
}

static int find_paths(void)
{
    const char *env = getenv("TESSERA_BIN");
    char exe[PATH_MAX], src[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (env) {
        snprintf(g_bin, sizeof g_bin, "%s", env);
    } else {
        if (n <= 0) return -1;
        exe[n] = 0;
        snprintf(g_bin, sizeof g_bin, "%s/../tessera", dirname(exe));
    }
    snprintf(src, sizeof src, "%s", __FILE__); /* <root>/tests/gpu/test_e2e_agree.c */
    snprintf(g_root, sizeof g_root, "%s", dirname(dirname(dirname(src))));
    if (getenv("TESSERA_SOURCE_DIR")) /* a build carried to another machine */
        snprintf(g_root, sizeof g_root, "%s", getenv("TESSERA_SOURCE_DIR"));
    snprintf(g_tmp, sizeof g_tmp, "/tmp/tsr_e2e_XXXXXX");
    if (!mkdtemp(g_tmp)) return -1;
    return access(g_bin, X_OK);
}

/* kv: the KV cache type of both runs (--kv-cache-dtype, given, applies to --ref-device too). */
static void agree_cpu(const char *model, int positions, const char *kv)
{
    char cmd[4 * PATH_MAX], what[256];
    snprintf(cmd, sizeof cmd,
             "cd '%s' && '%s' bench --agree --model '%s' --device cuda --ref-device cpu "
             "--kv-cache-dtype %s --prompt-tokens %d --min-agree 0.99",
             g_root, g_bin, model, kv, positions);
    snprintf(what, sizeof what,
             "%s, %s KV cache: cuda teacher-forced argmax agrees with cpu >= 99%%", model, kv);
    check(run(cmd) == 0, what);
}

/* Decode steps through CUDA graphs against the same steps run op by op (TESSERA_GRAPHS=0): the
 * default model's greedy 64 tokens are identical (batch 1 runs the same kernels either way), and
 * llama3-8b's teacher-forced argmax agrees at >= 99% (a graph's attention plans its context
 * splits for a bound, not the step's length: the same sums in another order). */
static void graphs_vs_eager(void)
{
    char cmd[4 * PATH_MAX], off[65536], on[65536], ref[PATH_MAX + 16];
    const char *fmt = "cd '%s' && TESSERA_GRAPHS=%d '%s' generate --model " DEFAULT_MODEL
                      " --device cuda --prompt 'The capital of France is' --max-tokens 64 "
                      "--ignore-eos --show-ids";
    snprintf(cmd, sizeof cmd, fmt, g_root, 0, g_bin);
    int rc0 = last_line(cmd, off, sizeof off);
    snprintf(cmd, sizeof cmd, fmt, g_root, 1, g_bin);
    int rc1 = last_line(cmd, on, sizeof on);
    fprintf(stderr, "op by op: %sgraphs:   %s", off, on);
    check(rc0 == 0 && rc1 == 0 && off[0] && !strcmp(off, on),
          "default model: greedy 64 tokens with CUDA graphs equal op by op");
    snprintf(ref, sizeof ref, "%s/eager.ids", g_tmp);
    snprintf(cmd, sizeof cmd,
             "cd '%s' && TESSERA_GRAPHS=0 '%s' bench --agree --model synthetic:llama3-8b "
             "--device cuda --prompt-tokens 128 --save-ids '%s'",
             g_root, g_bin, ref);
    if (run(cmd)) {
        check(0, "llama3-8b: op-by-op reference run");
        return;
    }
    snprintf(cmd, sizeof cmd,
             "cd '%s' && '%s' bench --agree --model synthetic:llama3-8b --device cuda "
             "--prompt-tokens 128 --ref-ids '%s' --min-agree 0.99",
             g_root, g_bin, ref);
    check(run(cmd) == 0, "llama3-8b: teacher-forced argmax with CUDA graphs vs op by op >= 99%");
    unlink(ref);
}

static void greedy_tp3(void)
{
    char cmd[4 * PATH_MAX], one[65536], three[65536];
    const char *fmt = "cd '%s' && '%s' generate --model " DEFAULT_MODEL
                      " --device cuda --tp %d --prompt 'The capital of France is' "
                      "--max-tokens 64 --ignore-eos --show-ids";
    snprintf(cmd, sizeof cmd, fmt, g_root, g_bin, 1);
    int rc1 = last_line(cmd, one, sizeof one);
    snprintf(cmd, sizeof cmd, fmt, g_root, g_bin, 3);
    int rc3 = last_line(cmd, three, sizeof three);
    fprintf(stderr, "tp1: %stp3: %s", one, three);
    check(rc1 == 0 && rc3 == 0 && one[0] && !strcmp(one, three),
          "default model: greedy 64 tokens at TP=3 equal TP=1 on GPUs");
}

static void agree_tp(int n_gpus)
{
    char cmd[4 * PATH_MAX], ref[PATH_MAX + 16], what[128];
    const char *model = "synthetic:llama3-8b";
    snprintf(ref, sizeof ref, "%s/tp1.ids", g_tmp);
    snprintf(cmd, sizeof cmd,
             "cd '%s' && '%s' bench --agree --model %s --device cuda --prompt-tokens 128 "
             "--save-ids '%s'",
             g_root, g_bin, model, ref);
    if (run(cmd)) {
        check(0, "llama3-8b: TP=1 reference run");
        return;
    }
    for (int tp = 2; tp <= 4 && tp <= n_gpus; tp *= 2) {
        snprintf(cmd, sizeof cmd,
                 "cd '%s' && '%s' bench --agree --model %s --device cuda --tp %d "
                 "--prompt-tokens 128 --ref-ids '%s' --min-agree 0.99",
                 g_root, g_bin, model, tp, ref);
        snprintf(what, sizeof what, "llama3-8b: teacher-forced argmax TP=%d vs TP=1 >= 99%%", tp);
        check(run(cmd) == 0, what);
    }
    unlink(ref);
}

static int wanted(int argc, char **argv, const char *part)
{
    if (argc < 2) return 1;
    for (int i = 1; i < argc; i++)
        if (!strcmp(argv[i], part)) return 1;
    return 0;
}

int main(int argc, char **argv)
{
    int n_gpus = gpu_count_or_exit("test_e2e_agree"), ran = 0, skipped = 0;
    if (find_paths()) {
        fprintf(stderr, "test_e2e_agree: cannot find tessera at %s (set TESSERA_BIN)\n", g_bin);
        return 1;
    }
    char model[2 * PATH_MAX];
    snprintf(model, sizeof model, "%s/" DEFAULT_MODEL, g_root);
    if ((wanted(argc, argv, "default") || wanted(argc, argv, "tp3")) && access(model, R_OK)) {
        fprintf(stderr, "test_e2e_agree: %s is missing: run scripts/fetch_model.sh\n", model);
        return 1;
    }
    if (wanted(argc, argv, "default"))
        agree_cpu(DEFAULT_MODEL, 128, "f32"), agree_cpu(DEFAULT_MODEL, 128, "bf16"),
            agree_cpu(DEFAULT_MODEL, 128, "fp8"), ran++;
    if (wanted(argc, argv, "8b")) agree_cpu("synthetic:llama3-8b", 128, "bf16"), ran++;
    if (wanted(argc, argv, "graphs")) graphs_vs_eager(), ran++;
    if (wanted(argc, argv, "long"))
        agree_cpu("synthetic:tiny-128k", 8192, "bf16"),
            agree_cpu("synthetic:tiny-128k", 32768, "bf16"), ran++;
    if (wanted(argc, argv, "moe"))
        agree_cpu("synthetic:mixtral-tiny", 128, "f32"),
            agree_cpu("synthetic:qwen2-moe-tiny", 128, "f32"), ran++;
    if (wanted(argc, argv, "tp3")) {
        if (n_gpus >= 3) {
            greedy_tp3();
            ran++;
        } else {
            fprintf(stderr, "SKIP: TP=3 greedy needs 3 GPUs, %d here\n", n_gpus);
            skipped++;
        }
    }
    if (wanted(argc, argv, "tp8b")) {
        if (n_gpus >= 2) {
            agree_tp(n_gpus);
            ran++;
        } else {
            fprintf(stderr, "SKIP: TP agreement needs 2 GPUs, %d here\n", n_gpus);
            skipped++;
        }
    }
    rmdir(g_tmp);
    if (g_failed) {
        fprintf(stderr, "test_e2e_agree: FAILED\n");
        return 1;
    }
    if (!ran) {
        fprintf(stderr, "test_e2e_agree: nothing ran (%d parts need more GPUs): skipped\n",
                skipped);
        return 77;
    }
    fprintf(stderr, "test_e2e_agree: ok (%d parts ran, %d skipped)\n", ran, skipped);
    return 0;
}
