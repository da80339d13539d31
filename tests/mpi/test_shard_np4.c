/* Four ranks: a 4-KV-head synthetic model at tp = 4 and at tp = 2 x pp = 2 (Q8_0 weights). */
#include "shard_check.h"

int main(void)
{
    static const struct layout l[] = {{"synthetic:tiny-gqa4", 4, 1, 1e-9},
                                      {"synthetic:tiny-gqa4:q8_0", 2, 2, 1e-9}};
    return shard_main(l, 2);
}
