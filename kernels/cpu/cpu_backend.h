/* What the CPU backend adds to kernels/backend.h: which instruction set it runs, and how it
 * multiplies by quantized weights.
 *
 * tsr_backend_cpu_new() picks the widest kernels the CPU supports (AVX-512 with VNNI and VBMI,
 * else AVX2 with FMA and F16C, else portable C). TESSERA_CPU_ISA=scalar|avx2|avx512 in the
 * environment forces one (tests compare them); asking for one the CPU lacks falls back to the best
 * available, with a warning.
 *
 * Matmul with quantized weights (Q8_0, Q4_0, Q4_1), read from TESSERA_CPU_ACT when the backend is
 * made:
 *   f32 (the default, or unset): the exact product. Activations stay f32 and meet the weights'
 *       dequantized values (dequantized block by block in registers), so a forward pass is the
 *       model's own up to f32 rounding.
 *   q8: llama.cpp's way. Each activation row is first rounded to 8-bit blocks and the dot
 *       products are int8. Faster (decode reads the same weights, but integer products are
 *       cheaper), but the rounding moves logits by up to a few units: greedy tokens can differ
 *       from the exact model's where its top two are close.
 * Float weights (F32, F16, BF16), Q5_0, Q5_1 and the k-quants (Q4_K, Q5_K, Q6_K: their blocks are
 * decoded to f32 a tile at a time, no int8 kernel yet) always take the f32 path. Both paths are
 * batch invariant: an output row is bitwise the same whatever other rows share the call and however
 * many threads run it.
 *
 * Threads: the ops run on OpenMP teams of n_threads. A backend's ops must be called from one
 * thread at a time: they share the backend's scratch memory. */
#ifndef TSR_KERNELS_CPU_BACKEND_H
#define TSR_KERNELS_CPU_BACKEND_H

#include "kernels/backend.h"

enum tsr_cpu_isa { TSR_CPU_SCALAR = 0, TSR_CPU_AVX2 = 1, TSR_CPU_AVX512 = 2 };

/* The instruction set b's kernels use; b must come from tsr_backend_cpu_new(). */
enum tsr_cpu_isa tsr_cpu_backend_isa(const tsr_backend_t *b);
/* 1 if b multiplies quantized weights by q8 activations (TESSERA_CPU_ACT=q8), 0 if exact. */
int tsr_cpu_backend_act_q8(const tsr_backend_t *b);
/* The best instruction set this CPU supports (what an unforced backend uses). */
enum tsr_cpu_isa tsr_cpu_isa_best(void);
/* "scalar", "avx2", "avx512". */
const char *tsr_cpu_isa_name(enum tsr_cpu_isa isa);

#endif
