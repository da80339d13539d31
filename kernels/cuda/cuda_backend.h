/* The CUDA backend: kernels/backend.h on one GPU.
 *
 * Buffers are device memory (tsr_buf_host() is NULL). Weights are copied to the device as the
 * caller's bytes, in their file type; every op that reads a weight decodes its type on the fly, so
 * a Q4_0 matrix costs the GPU its Q4_0 size. Activations are f32 on the device.
 *
 * Precision (tests/gpu/test_cuda_ops.c measures each op against the CPU backend):
 * - element-wise ops, norms, RoPE and attention compute in f32 like the CPU backend (the RMS norm's
 *   sum of squares in double, RoPE angles' sin and cos in double);
 * - matmul with at most TSR_CUDA_GEMV_MAX_N activation rows (decode): f32 activations times the
 *   weights decoded to f32, f32 accumulation; matmul_many (Q, K, V) and matmul_swiglu (gate, up)
 *   run as one GEMV launch each, equal bit for bit to the matmuls one at a time;
 * - above that (prefill): cuBLAS with f32 accumulation and output: BF16 weights against x rounded
 *   to bf16; F16 and quantized weights, which bf16 cannot hold, decoded tile by tile into two bf16
 *   terms (hi + lo), x too, and three GEMMs (about 16-bit operands); F32 weights in plain f32.
 *
 * - attention: decode steps on CUDA cores in f32 (context split across blocks when the batch is
 *   small); steps with prompt chunks (a run of two or more consecutive positions of a sequence)
 *   on tensor cores, f16 operands with f32 accumulation and an f32 online softmax
 *   (cuda_attention_prefill.cu) for head_dim 64 and 128;
 * - sample: top-k, temperature, top-p, min-p and the draw as worker/sampling.c, on the device.
 *
 * Graphs: ops can be recorded into CUDA graphs (tsr_graph_begin); while recording, scratch cannot
 * grow and step metadata must come through tsr_batch_meta.dev. cuBLAS gets a workspace of its own
 * so that it allocates nothing while recording.
 *
 * Ops are queued on the backend's one stream and return; tsr_buf_get() and tsr_backend_sync()
 * wait. Step metadata (token ids, positions, slots, block tables) comes as host arrays: each op
 * copies what it needs through pinned staging to the device, so the caller may reuse its arrays as
 * soon as the op returns. A backend's ops must be called from one thread at a time. */
#ifndef TSR_KERNELS_CUDA_BACKEND_H
#define TSR_KERNELS_CUDA_BACKEND_H

#include "kernels/backend.h"

/* Activation rows up to which matmul runs the GEMV kernels instead of cuBLAS. */
#define TSR_CUDA_GEMV_MAX_N 8

/* A backend on CUDA device `device`. NULL on failure (no such device, out of memory; message in
 * tsr_last_error()). Free with tsr_backend_free(). */
tsr_backend_t *tsr_backend_cuda_new(int device);

/* The cudaStream_t the backend's ops run on (for tsr_comm_nccl_*), and its device; b must come
 * from tsr_backend_cuda_new(). */
void *tsr_cuda_backend_stream(tsr_backend_t *b);
int tsr_cuda_backend_device(const tsr_backend_t *b);

/* The device's ceilings, measured for benchmarks on random data on the backend's stream, each the
 * median of 10 timed runs after 3 warm-ups (CUDA events):
 * copy: a device-to-device cudaMemcpy of `bytes`; *bytes_per_s counts bytes read plus written.
 * gemm: a cuBLAS bf16 GEMM (m x k) · (k x n), f32 accumulation, bf16 output. */
int tsr_cuda_measure_copy(tsr_backend_t *b, size_t bytes, double *bytes_per_s);
int tsr_cuda_measure_gemm(tsr_backend_t *b, int m, int n, int k, double *flops_per_s);

/* Number of CUDA devices, or 0 when there is none or no usable driver (never fails). */
int tsr_cuda_device_count(void);

#endif
