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
 *   weights decoded to f32, f32 accumulation;
 * - above that (prefill): cuBLAS with bf16 operands and f32 accumulation and output; the weight is
 *   decoded to bf16 tile by tile (F32 weights instead run cuBLAS in plain f32).
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

/* Number of CUDA devices, or 0 when there is none or no usable driver (never fails). */
int tsr_cuda_device_count(void);

#endif
