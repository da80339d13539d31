#include "common/dtype.h"

#include <math.h>

int tsr_dtype_valid(int t)
{
    return t == TSR_F32 || t == TSR_F16 || t == TSR_BF16 || t == TSR_Q8_0 || t == TSR_Q4_0 ||
           t == TSR_Q4_1;
}

const char *tsr_dtype_name(int t)
{
    switch (t) {
    case TSR_F32:
        return "F32";
    case TSR_F16:
        return "F16";
    case TSR_BF16:
        return "BF16";
    case TSR_Q8_0:
        return "Q8_0";
    case TSR_Q4_0:
        return "Q4_0";
    case TSR_Q4_1:
        return "Q4_1";
    default:
        return "unknown";
    }
}

int tsr_dtype_block_elems(enum tsr_dtype t)
{
    return (t == TSR_Q8_0 || t == TSR_Q4_0 || t == TSR_Q4_1) ? TSR_QK : 1;
}

size_t tsr_dtype_block_bytes(enum tsr_dtype t)
{
    switch (t) {
    case TSR_F32:
        return 4;
    case TSR_F16:
    case TSR_BF16:
        return 2;
    case TSR_Q8_0:
        return sizeof(struct tsr_block_q8_0);
    case TSR_Q4_0:
        return sizeof(struct tsr_block_q4_0);
    case TSR_Q4_1:
        return sizeof(struct tsr_block_q4_1);
    }
    return 0;
}

size_t tsr_dtype_row_bytes(enum tsr_dtype t, int64_t n)
{
    int be = tsr_dtype_block_elems(t);
    if (n < 0 || n % be) return 0;
    return (size_t)(n / be) * tsr_dtype_block_bytes(t);
}

void tsr_dequantize_row(enum tsr_dtype t, const void *src, float *dst, int64_t n)
{
    switch (t) {
    case TSR_F32:
        memcpy(dst, src, (size_t)n * 4);
        break;
    case TSR_F16: {
        const uint16_t *s = src;
        for (int64_t i = 0; i < n; i++) dst[i] = tsr_f16_to_f32(s[i]);
        break;
    }
    case TSR_BF16: {
        const uint16_t *s = src;
        for (int64_t i = 0; i < n; i++) dst[i] = tsr_bf16_to_f32(s[i]);
        break;
    }
    case TSR_Q8_0: {
        const struct tsr_block_q8_0 *b = src;
        for (int64_t i = 0; i < n / TSR_QK; i++) {
            float d = tsr_f16_to_f32(b[i].d);
            for (int j = 0; j < TSR_QK; j++) dst[i * TSR_QK + j] = d * (float)b[i].qs[j];
        }
        break;
    }
    case TSR_Q4_0: {
        const struct tsr_block_q4_0 *b = src;
        for (int64_t i = 0; i < n / TSR_QK; i++) {
            float d = tsr_f16_to_f32(b[i].d);
            for (int j = 0; j < TSR_QK / 2; j++) {
                dst[i * TSR_QK + j] = d * (float)((b[i].qs[j] & 0x0f) - 8);
                dst[i * TSR_QK + j + 16] = d * (float)((b[i].qs[j] >> 4) - 8);
            }
        }
        break;
    }
    case TSR_Q4_1: {
        const struct tsr_block_q4_1 *b = src;
        for (int64_t i = 0; i < n / TSR_QK; i++) {
            float d = tsr_f16_to_f32(b[i].d), m = tsr_f16_to_f32(b[i].m);
            for (int j = 0; j < TSR_QK / 2; j++) {
                dst[i * TSR_QK + j] = d * (float)(b[i].qs[j] & 0x0f) + m;
                dst[i * TSR_QK + j + 16] = d * (float)(b[i].qs[j] >> 4) + m;
            }
        }
        break;
    }
    }
}

void tsr_quantize_row(enum tsr_dtype t, const float *src, void *dst, int64_t n)
{
    switch (t) {
    case TSR_F32:
        memcpy(dst, src, (size_t)n * 4);
        break;
    case TSR_F16: {
        uint16_t *d = dst;
        for (int64_t i = 0; i < n; i++) d[i] = tsr_f32_to_f16(src[i]);
        break;
    }
    case TSR_BF16: {
        uint16_t *d = dst;
        for (int64_t i = 0; i < n; i++) d[i] = tsr_f32_to_bf16(src[i]);
        break;
    }
    case TSR_Q8_0: {
        struct tsr_block_q8_0 *b = dst;
        for (int64_t i = 0; i < n / TSR_QK; i++) {
            const float *x = src + i * TSR_QK;
            float amax = 0;
            for (int j = 0; j < TSR_QK; j++) amax = fmaxf(amax, fabsf(x[j]));
            float d = amax / 127.0f, id = d ? 1.0f / d : 0.0f;
            b[i].d = tsr_f32_to_f16(d);
            for (int j = 0; j < TSR_QK; j++) b[i].qs[j] = (int8_t)roundf(x[j] * id);
        }
        break;
    }
    case TSR_Q4_0: {
        struct tsr_block_q4_0 *b = dst;
        for (int64_t i = 0; i < n / TSR_QK; i++) {
            const float *x = src + i * TSR_QK;
            float amax = 0, max = 0;
            for (int j = 0; j < TSR_QK; j++)
                if (fabsf(x[j]) > amax) amax = fabsf(x[j]), max = x[j];
            float d = max / -8.0f, id = d ? 1.0f / d : 0.0f;
            b[i].d = tsr_f32_to_f16(d);
            for (int j = 0; j < TSR_QK / 2; j++) {
                int lo = (int)(x[j] * id + 8.5f), hi = (int)(x[j + 16] * id + 8.5f);
                lo = lo > 15 ? 15 : lo;
                hi = hi > 15 ? 15 : hi;
                b[i].qs[j] = (uint8_t)(lo | (hi << 4));
            }
        }
        break;
    }
    case TSR_Q4_1: {
        struct tsr_block_q4_1 *b = dst;
        for (int64_t i = 0; i < n / TSR_QK; i++) {
            const float *x = src + i * TSR_QK;
            float min = x[0], max = x[0];
            for (int j = 1; j < TSR_QK; j++) min = fminf(min, x[j]), max = fmaxf(max, x[j]);
            float d = (max - min) / 15.0f, id = d ? 1.0f / d : 0.0f;
            b[i].d = tsr_f32_to_f16(d);
            b[i].m = tsr_f32_to_f16(min);
            for (int j = 0; j < TSR_QK / 2; j++) {
                int lo = (int)((x[j] - min) * id + 0.5f), hi = (int)((x[j + 16] - min) * id + 0.5f);
                lo = lo > 15 ? 15 : lo;
                hi = hi > 15 ? 15 : hi;
                b[i].qs[j] = (uint8_t)(lo | (hi << 4));
            }
        }
        break;
    }
    }
}
