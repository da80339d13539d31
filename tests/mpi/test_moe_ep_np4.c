/* Four ranks, mixture of experts (kernels/moe_ep.h): mixtral-tiny's 8 experts over ep = 4
 * (attention replicated, 2 experts a rank); qwen2-moe-tiny at ep = 4 with tp = 2 (two attention
 * groups of two ranks running the same batch, the shared expert tp-sliced in each) and at
 * ep = tp = 4; ep = 2 x pp = 2 on both models, and ep = tp = 2 x pp = 2 on qwen2-moe-tiny. tp = 1
 * layouts match one rank bitwise (bound 0). */
#include "shard_check.h"

int main(void)
{
    static const struct layout_ep l[] = {{"synthetic:mixtral-tiny", 1, 4, 1, 0},
                                         {"synthetic:qwen2-moe-tiny", 2, 4, 1, 1e-9},
                                         {"synthetic:qwen2-moe-tiny", 4, 4, 1, 1e-9},
                                         {"synthetic:mixtral-tiny", 1, 2, 2, 0},
                                         {"synthetic:qwen2-moe-tiny", 1, 2, 2, 0},
                                         {"synthetic:qwen2-moe-tiny", 2, 2, 2, 1e-9},
                                         {MOE_REF("mixtral"), 1, 4, 1, 0},
                                         {MOE_REF("qwen3_moe"), 2, 4, 1, 1e-9},
                                         {MOE_REF("deepseek"), 1, 2, 2, 0}};
    return shard_main_ep(NULL, 0, l, 9);
}
