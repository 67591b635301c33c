// Small kernels of the forward pass on the GPU: embedding, RMSNorm, GEMV (decode) with fused RMSNorm,
// bias, residual add or SwiGLU, SwiGLU and bias for the GEMM (prompt) path.
#pragma once
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/kv_device.cuh"

namespace kvd::cuda {

// Decode step parameters beside StepParams: the token and its KV table entries, written by the host
// into pinned memory and copied in by the captured graph.
struct DecodeParams {
  StepParams step;
  int32_t token;
  int32_t cls;
  uint32_t loc;
};

// x[i] = emb[tokens[i]] (fp16 table, dim columns) for n tokens. When meta is non-null (decode), also
// writes the token's KV table entries from it.
void launch_embed(const __half* emb, int dim, const int32_t* tokens, int n, float* x,
                  const DecodeParams* meta, KvDev kv, cudaStream_t s);
// y_h = x / rms(x) * w, n rows of dim, to fp16 (GEMM input).
void launch_rmsnorm_half(const float* x, const float* w, int n, int dim, float eps, __half* y,
                         cudaStream_t s);

enum class GemvMode { Store, Add, SwiGlu };
// One token: y[r] = W[r] . xn (+ bias[r]) where xn = rmsnorm(x) * norm_w when norm_w is non-null, else x.
// Add: y[r] += W[r] . xn. SwiGlu: rows is the output count, W holds 2*rows rows (gate then up) and
// y[r] = silu(W[r] . xn) * (W[rows + r] . xn). cols % 8 == 0.
void launch_gemv(GemvMode mode, const __half* w, int rows, int cols, const float* x, const float* norm_w,
                 float eps, const float* bias, float* y, cudaStream_t s);
// Q4_1 weights kept quantized (ggml blocks of 32: fp16 d, fp16 m, 16 bytes of nibbles), same modes.
void launch_gemv_q4_1(GemvMode mode, const uint8_t* w, int rows, int cols, const float* x,
                      const float* norm_w, float eps, const float* bias, float* y, cudaStream_t s);

// gu: n rows of [gate (ffn) | up (ffn)] fp32 -> h: n rows of ffn fp16.
void launch_swiglu_half(const float* gu, int n, int ffn, __half* h, cudaStream_t s);
// y[i][j] += b[j], n rows of cols.
void launch_add_bias(float* y, const float* b, int n, int cols, cudaStream_t s);

}  // namespace kvd::cuda
