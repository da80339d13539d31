/* Six ranks on two cores: the default model at tp = 3 x pp = 2. */
#include "shard_check.h"

int main(void)
{
    static const struct layout l[] = {{DEFAULT_MODEL, 3, 2, 1e-9}};
    return shard_main(l, 1);
}
