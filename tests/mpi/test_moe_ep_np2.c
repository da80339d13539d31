/* Two ranks, mixture of experts (kernels/moe_ep.h): mixtral-tiny's 8 experts over ep = 2 with
 * attention replicated (tp = 1), and in two pipeline stages (ep = 1: every expert of a stage's
 * layers on its rank) and at ep = tp = 2 (one attention group, no shared expert); qwen2-moe-tiny
 * (a gated shared expert) at ep = 2 with tp = 1 and with tp = 2 (the shared expert tp-sliced); the
 * golden DeepSeek (sigmoid group routing, a dense first layer, a shared expert) and the qwen2_moe
 * GGUF (stacked expert tensors) at ep = 2. At tp = 1 the all-to-all gives one rank's logits
 * bitwise (bound 0); tp = 2 sums attention and the shared expert in another order. */
#include "shard_check.h"

int main(void)
{
    static const struct layout_ep l[] = {
        {"synthetic:mixtral-tiny", 1, 2, 1, 0},   {"synthetic:mixtral-tiny", 1, 1, 2, 0},
        {"synthetic:qwen2-moe-tiny", 1, 2, 1, 0}, {"synthetic:qwen2-moe-tiny", 2, 2, 1, 1e-9},
        {MOE_REF("deepseek"), 1, 2, 1, 0},        {MOE_REF("qwen2_moe.gguf"), 1, 2, 1, 0},
        {"synthetic:mixtral-tiny", 2, 2, 1, 1e-9}};
    return shard_main_ep(NULL, 0, l, 7);
}
