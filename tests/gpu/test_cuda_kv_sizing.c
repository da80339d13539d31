/* The KV cache sized from the GPU's memory (tsr_runner_opts.n_blocks 0, mem_util; `tessera worker
 * --gpu-memory-utilization`): with a fraction F, what stays free once the runner is built is
 * (1 - F) of the GPU, to within two blocks and the allocator's granularity, with an f32 cache,
 * with a bf16 one (`--kv-cache-dtype`, bf16 by default on a GPU), which gets twice the blocks
 * (within 1%) and the same bytes, and with an fp8 one, whose blocks are counted in its real rows
 * (tsr_kv_row_bytes: codes, scales, padding) and so outnumber f32's by that ratio (within 1%);
 * freeing the runner gives the memory back; a fraction the weights already exceed is a clear
 * TSR_ENOMEM; the engine reports the blocks it got. A synthetic model (synthetic:tiny): no model
 * file needed. Exits 77 (skipped) without a CUDA device (1 under TESSERA_REQUIRE_GPU=1). */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "kernels/cuda/cuda_backend.h"
#include "model/model.h"
#include "tests/gpu/gpu_test.h"
#include "worker/engine.h"
#include "worker/forward.h"

static int failed;

static void check(int ok, const char *what)
{
    printf("%s: %s\n", ok ? "PASS" : "FAIL", what);
    if (!ok) failed = 1;
}

int main(void)
{
    gpu_count_or_exit("test_cuda_kv_sizing");
    tsr_model_t *m = NULL;
    tsr_backend_t *b = tsr_backend_cuda_new(0);
    if (!b || tsr_model_open("synthetic:tiny", &m)) {
        fprintf(stderr, "FAILED: setup: %s\n", tsr_last_error());
        return 1;
    }
    const struct tsr_model_config *c = tsr_model_config(m);
    size_t free0 = 0, total = 0, free1 = 0, free2 = 0;
    check(tsr_backend_memory(b, &free0, &total) == 0 && free0 > 0 && free0 <= total,
          "cudaMemGetInfo through tsr_backend_memory");
    printf("GPU: %.2f GB free of %.2f GB\n", free0 / 1e9, total / 1e9);

    const double F = 0.5;
    struct tsr_runner_opts o = {.n_blocks = 0, .block_size = 16, .max_tokens = 256, .mem_util = F};
    tsr_runner_t *r = NULL;
    int rc = 0, blocks[3] = {0, 0, 0};
    const enum tsr_dtype types[3] = {TSR_F32, TSR_BF16, TSR_F8_E4M3};
    for (int k = 0; k < 3; k++) {
        struct tsr_runner_opts ot = o;
        ot.kv_type = types[k];
        char what[128];
        r = NULL;
        rc = tsr_runner_new(m, b, &ot, NULL, &r);
        snprintf(what, sizeof what, "a runner sized from GPU memory builds (%s cache)",
                 tsr_dtype_name(types[k]));
        check(rc == 0, what);
        if (rc) fprintf(stderr, "  %s\n", tsr_last_error());
        if (rc) continue;
        int n = blocks[k] = tsr_runner_n_blocks(r);
        double per = 2.0 * c->n_layer * 16 * tsr_kv_row_bytes(types[k], c->n_kv_head, c->head_dim);
        tsr_backend_memory(b, &free1, &total);
        double want = (1 - F) * (double)total, slack = 2 * per + 256.0 * (1 << 20);
        printf("%s: %d blocks (%.2f GB); free after: %.3f GB, (1 - F) of the GPU: %.3f GB\n",
               tsr_dtype_name(types[k]), n, n * per / 1e9, free1 / 1e9, want / 1e9);
        check(n > 0, "the KV cache got blocks");
        check(tsr_runner_kv_bytes(r) == (size_t)((n + 1) * per),
              "the runner's KV bytes are its blocks (and the padding block) in its type");
        check((double)free1 >= want - slack && (double)free1 <= want + slack,
              "what stays free is (1 - F) of the GPU, within two blocks and 256 MiB");
        tsr_runner_free(r);
        tsr_backend_memory(b, &free2, &total);
        check((double)free2 >= (double)free1 + 0.9 * n * per, "freeing the runner gives it back");
    }
    if (blocks[0] > 0 && blocks[1] > 0)
        check(fabs(blocks[1] - 2.0 * blocks[0]) <= 0.01 * 2.0 * blocks[0],
              "a bf16 cache gets twice the blocks of an f32 one in the same memory (within 1%)");
    double r8 = (double)tsr_kv_row_bytes(TSR_F32, c->n_kv_head, c->head_dim) /
                (double)tsr_kv_row_bytes(TSR_F8_E4M3, c->n_kv_head, c->head_dim);
    if (blocks[0] > 0 && blocks[2] > 0)
        check(fabs(blocks[2] - r8 * blocks[0]) <= 0.01 * r8 * blocks[0],
              "an fp8 cache gets f32's blocks times f32's row bytes over fp8's (within 1%)");

    struct tsr_runner_opts tiny = o;
    tiny.mem_util = 0.001; /* 0.1%: more must stay free than is free once the CUDA context is in */
    r = NULL;
    rc = tsr_runner_new(m, b, &tiny, NULL, &r);
    check(rc == TSR_ENOMEM && strstr(tsr_last_error(), "GPU memory utilization") != NULL,
          "too small a fraction is TSR_ENOMEM naming the fraction");
    printf("  (%s)\n", tsr_last_error());
    tsr_runner_free(r);

    struct tsr_engine_opts eo = {
        .block_size = 16, .max_step_tokens = 256, .max_seqs = 8, .mem_util = 0.3};
    tsr_engine_t *e = NULL;
    rc = tsr_engine_new(m, b, &eo, &e);
    struct tsr_engine_stats st = {0};
    if (!rc) tsr_engine_get_stats(e, &st);
    check(rc == 0 && tsr_engine_n_blocks(e) > 0 && st.n_blocks == tsr_engine_n_blocks(e),
          "an engine with n_blocks 0 reports the blocks device memory gave");
    if (!rc) printf("engine at 0.3: %d blocks\n", tsr_engine_n_blocks(e));
    tsr_engine_free(e);
    tsr_model_free(m);
    tsr_backend_free(b);
    printf("test_cuda_kv_sizing: %s\n", failed ? "FAILED" : "passed");
    return failed;
}
