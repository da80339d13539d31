/* libFuzzer target for the GGUF metadata-to-config path: any bytes through the GGUF reader, then
 * tsr_config_from_gguf(), then the shard plan (tp = pp = 1) of what it accepts. Seeds are
 * metadata-only GGUF files of small llama, qwen2 and MoE shapes (tests/fuzz/make_seeds.py);
 * dictionary: fuzz_gguf_config.dict (the keys, value type codes and lengths). */
#include <stddef.h>
#include <stdint.h>

#include "model/config.h"
#include "model/gguf.h"
#include "model/shard_plan.h"

static volatile double sink;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    tsr_gguf_t *g;
    if (tsr_gguf_open_mem(data, size, "fuzz.gguf", &g) != 0) return 0;
    struct tsr_model_config c;
    if (tsr_config_from_gguf(g, &c) == 0) {
        if (tsr_config_validate(&c) != 0 || c.n_layer > TSR_MAX_LAYERS ||
            c.n_vocab > TSR_MAX_VOCAB || c.n_ctx_train < 1)
            __builtin_trap();
        struct tsr_shard_plan p;
        double acc = tsr_config_n_params(&c);
        if (tsr_shard_plan_make(&c, 1, 1, 2.0, 2.0, &p) == 0) acc += p.n_params;
        tsr_shard_plan_free(&p);
        sink = acc;
    }
    tsr_gguf_close(g);
    return 0;
}
