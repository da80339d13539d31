/* libFuzzer target for the safetensors reader: open any bytes, then walk every tensor, look it up
 * by name and touch all of its bytes, so an out-of-bounds pointer shows up under ASan. F8_E4M3
 * and I8 tensors (bare codes) must be one byte an element, typed as the blocks they load as. */
#include <stddef.h>
#include <stdint.h>

#include "model/safetensors.h"

static volatile uint64_t sink;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    tsr_st_t *st;
    if (tsr_st_open_mem(data, size, "fuzz.safetensors", &st) != 0) return 0;
    uint64_t acc = 0;
    for (uint64_t i = 0; i < tsr_st_n_tensors(st); i++) {
        const struct tsr_st_tensor *t = tsr_st_tensor(st, i);
        if (tsr_st_find_tensor(st, t->name) != t) __builtin_trap();
        if (t->n_dims > 4) __builtin_trap();
        uint64_t count = 1; /* the reader bounds it by INT64_MAX; unused ne are 1 */
        for (int d = 0; d < 4; d++) count *= (uint64_t)t->ne[d];
        if ((t->codes == TSR_ST_E4M3) != (t->type == TSR_F8_E4M3)) __builtin_trap();
        if ((t->codes == TSR_ST_INT8) != (t->type == TSR_Q8_0)) __builtin_trap();
        if (t->codes && t->nbytes != count) __builtin_trap();
        acc += t->type + (uint64_t)t->ne[0] * (uint64_t)t->ne[3];
        const uint8_t *p = t->data;
        for (uint64_t k = 0; k < t->nbytes; k++) acc += p[k];
    }
    if (tsr_st_tensor(st, tsr_st_n_tensors(st)) != NULL) __builtin_trap();
    sink = acc;
    tsr_st_close(st);
    return 0;
}
