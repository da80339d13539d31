/* libFuzzer target for config.json: any bytes through the parser, and every config it accepts
 * through the shard plan (tp = pp = 1) and the RoPE table, so a value the bounds let through that
 * breaks what consumes it shows up here; an MoE config's routing through the router, which must
 * accept what validation did. Dictionary: fuzz_config_json.dict. */
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include "kernels/backend.h"
#include "model/config.h"
#include "model/shard_plan.h"

static volatile double sink;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct tsr_model_config c;
    if (tsr_config_from_json_text((const char *)data, size, "fuzz/config.json", &c) != 0) return 0;
    /* Accepted: it must be what validation says and within the bounds. */
    if (tsr_config_validate(&c) != 0 || c.n_layer > TSR_MAX_LAYERS || c.n_vocab > TSR_MAX_VOCAB ||
        c.head_dim > TSR_MAX_HEAD_DIM || c.n_ctx_train < 1)
        __builtin_trap();
    float *inv = malloc((size_t)(c.head_dim / 2) * sizeof *inv);
    if (!inv) return 0;
    tsr_rope_inv_freq(&c, NULL, inv);
    double acc = tsr_config_n_params(&c) + inv[0];
    free(inv);
    if (c.n_expert > 0) { /* what validation accepts, the router must take: route two tokens */
        struct tsr_moe_routing r;
        tsr_config_moe_routing(&c, &r);
        float *logits = malloc(sizeof(float) * 2 * (size_t)c.n_expert), w[2 * TSR_MAX_EXPERTS];
        int32_t ids[2 * TSR_MAX_EXPERTS];
        if (!logits) return 0;
        for (int i = 0; i < 2 * c.n_expert; i++) logits[i] = (float)data[(size_t)i % size] - 128;
        if (tsr_moe_route(&r, logits, NULL, 2, ids, w)) __builtin_trap();
        for (int i = 0; i < 2 * c.n_expert_used; i++)
            if (ids[i] < 0 || ids[i] >= c.n_expert || !isfinite(w[i])) __builtin_trap();
        free(logits);
    }
    struct tsr_shard_plan p;
    if (tsr_shard_plan_make(&c, 1, 1, 2.0, 2.0, &p) == 0) acc += p.n_params;
    tsr_shard_plan_free(&p);
    sink = acc;
    return 0;
}
