/* Three ranks: the default model (9 heads, 3 KV heads) at tp = 3; a synthetic model in three
 * pipeline stages; the Qwen2 model with QKV biases at tp = 3 (see test_shard_np2). */
#include "shard_check.h"

int main(void)
{
    static const struct layout l[] = {{DEFAULT_MODEL, 3, 1, 1e-9},
                                      {"synthetic:tiny-gqa4", 1, 3, 1e-12},
                                      {QWEN2_BIAS_MODEL, 3, 1, 1e-9}};
    return shard_main(l, 3);
}
