/* What the CPU backend adds to kernels/backend.h: which instruction set it runs.
 *
 * tsr_backend_cpu_new() picks the widest kernels the CPU supports (AVX-512 with VNNI and VBMI,
 * else AVX2 with FMA and F16C, else portable C). TESSERA_CPU_ISA=scalar|avx2|avx512 in the
 * environment forces one (tests compare them); asking for one the CPU lacks falls back to the best
 * available, with a warning.
 *
 * Threads: the ops run on OpenMP teams of n_threads. OpenBLAS (f32 GEMM for float weights in
 * prefill) is set to one thread per caller, so the two never oversubscribe the cores. A backend's
 * ops must be called from one thread at a time: they share the backend's scratch memory. */
#ifndef TSR_KERNELS_CPU_BACKEND_H
#define TSR_KERNELS_CPU_BACKEND_H

#include "kernels/backend.h"

enum tsr_cpu_isa { TSR_CPU_SCALAR = 0, TSR_CPU_AVX2 = 1, TSR_CPU_AVX512 = 2 };

/* The instruction set b's kernels use; b must come from tsr_backend_cpu_new(). */
enum tsr_cpu_isa tsr_cpu_backend_isa(const tsr_backend_t *b);
/* The best instruction set this CPU supports (what an unforced backend uses). */
enum tsr_cpu_isa tsr_cpu_isa_best(void);
/* "scalar", "avx2", "avx512". */
const char *tsr_cpu_isa_name(enum tsr_cpu_isa isa);

#endif
