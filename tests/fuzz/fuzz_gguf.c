/* libFuzzer target for the GGUF reader: open any bytes, then walk every kv and tensor through the
 * getters, touch every tensor byte and decode the start of each k-quant, Q5_0 and Q5_1 tensor, so
 * an out-of-bounds pointer shows up under ASan. */
#include <stddef.h>
#include <stdint.h>

#include "common/dtype.h"
#include "model/gguf.h"

static volatile uint64_t sink;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    tsr_gguf_t *g;
    if (tsr_gguf_open_mem(data, size, "fuzz.gguf", &g) != 0) return 0;
    uint64_t acc = tsr_gguf_version(g) + tsr_gguf_alignment(g);
    for (uint64_t i = 0; i < tsr_gguf_n_kv(g); i++) {
        const char *key = tsr_gguf_kv_key(g, i);
        int64_t v;
        double d;
        struct tsr_str s;
        enum tsr_gguf_vtype et;
        uint64_t n;
        acc += (uint64_t)tsr_gguf_find_kv(g, key) + tsr_gguf_kv_type(g, i);
        if (tsr_gguf_get_int(g, key, &v) == 0) acc += (uint64_t)v;
        if (tsr_gguf_get_float(g, key, &d) == 0) acc += (uint64_t)(d == d);
        if (tsr_gguf_get_str(g, key, &s) == 0 && s.n)
            acc += (uint8_t)s.p[0] + (uint8_t)s.p[s.n - 1];
        if (tsr_gguf_get_arr(g, key, &et, &n) != 0) continue;
        for (uint64_t k = 0; k <= n && k < 4096; k++) { /* k == n: the out-of-range path */
            if (tsr_gguf_arr_int(g, key, k, &v) == 0) acc += (uint64_t)v;
            if (tsr_gguf_arr_float(g, key, k, &d) == 0) acc += (uint64_t)(d == d);
            if (tsr_gguf_arr_str(g, key, k, &s) == 0 && s.n)
                acc += (uint8_t)s.p[0] + (uint8_t)s.p[s.n - 1];
        }
    }
    acc += (uint64_t)tsr_gguf_find_kv(g, "general.alignment");
    for (uint64_t i = 0; i < tsr_gguf_n_tensors(g); i++) {
        const struct tsr_gguf_tensor *t = tsr_gguf_tensor(g, i);
        if (tsr_gguf_find_tensor(g, t->name) != t) __builtin_trap();
        const uint8_t *p = t->data;
        for (uint64_t k = 0; k < t->nbytes; k++) acc += p[k];
        /* k-quants, Q5_0, Q5_1: decode the first blocks of the first row, whatever the bytes
         * (their decoders read through byte offsets, so any alignment will do; the older types'
         * read through typed pointers and assume the loader's alignment) */
        float row[1024];
        int64_t n = t->ne[0] < 1024 ? t->ne[0] : 1024;
        n -= n % tsr_dtype_block_elems(t->type);
        if ((tsr_dtype_is_kquant(t->type) || tsr_dtype_is_q5(t->type)) && n > 0 &&
            t->nbytes >= tsr_dtype_row_bytes(t->type, n)) {
            tsr_dequantize_row(t->type, p, row, n);
            acc += row[0] == row[0];
        }
    }
    if (tsr_gguf_tensor(g, tsr_gguf_n_tensors(g)) != NULL) __builtin_trap();
    acc += tsr_gguf_find_tensor(g, "token_embd.weight") != NULL;
    sink = acc;
    tsr_gguf_close(g);
    return 0;
}
