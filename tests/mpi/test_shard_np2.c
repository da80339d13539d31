/* Two ranks: the default model in two pipeline stages; a 4-KV-head synthetic model at tp = 2; the
 * Qwen2 model with QKV biases (its biases sliced with their rows) at tp = 2, which
 * tests/unit/test_qwen2_bias holds to the float64 reference at one rank. */
#include "shard_check.h"

int main(void)
{
    static const struct layout l[] = {{DEFAULT_MODEL, 1, 2, 1e-12},
                                      {"synthetic:tiny-gqa4", 2, 1, 1e-9},
                                      {QWEN2_BIAS_MODEL, 2, 1, 1e-9}};
    return shard_main(l, 3);
}
