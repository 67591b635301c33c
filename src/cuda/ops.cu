// Small forward-pass kernels (see ops.cuh).
#include "cuda/ops.cuh"

namespace kvd::cuda {
namespace {

constexpr int kGemvWarps = 8;

__device__ float block_sum(float v, float* red) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
  __syncthreads();
  if (lane == 0) red[warp] = v;
  __syncthreads();
  float s = 0;
  for (int i = 0; i < nw; ++i) s += red[i];
  return s;
}

__global__ void embed_kernel(const __half* emb, int dim, const int32_t* tokens, float* x,
                             const DecodeParams* meta, KvDev kv) {
  const int i = blockIdx.x;
  const __half* row = emb + static_cast<size_t>(tokens[i]) * dim;
  for (int j = threadIdx.x; j < dim; j += blockDim.x)
    x[static_cast<size_t>(i) * dim + j] = __half2float(row[j]);
  if (meta && i == 0 && threadIdx.x == 0) {
    kv.tok_cls[meta->step.pos0] = static_cast<uint8_t>(meta->cls);
    kv.tok_loc[meta->step.pos0] = meta->loc;
  }
}

__global__ void rmsnorm_half_kernel(const float* x, const float* w, int dim, float eps, __half* y) {
  __shared__ float red[32];
  const float* xr = x + static_cast<size_t>(blockIdx.x) * dim;
  float ss = 0;
  for (int j = threadIdx.x; j < dim; j += blockDim.x) ss += xr[j] * xr[j];
  ss = block_sum(ss, red);
  const float inv = 1.0f / sqrtf(ss / static_cast<float>(dim) + eps);
  for (int j = threadIdx.x; j < dim; j += blockDim.x)
    y[static_cast<size_t>(blockIdx.x) * dim + j] = __float2half_rn(xr[j] * inv * w[j]);
}

// Loads x (optionally RMS-normalized) into shared memory.
__device__ void load_x(const float* x, const float* norm_w, float eps, int cols, float* xs) {
  __shared__ float red[32];
  float ss = 0;
  for (int j = threadIdx.x; j < cols; j += blockDim.x) {
    const float v = x[j];
    xs[j] = v;
    ss += v * v;
  }
  if (norm_w) {
    ss = block_sum(ss, red);
    const float inv = 1.0f / sqrtf(ss / static_cast<float>(cols) + eps);
    for (int j = threadIdx.x; j < cols; j += blockDim.x) xs[j] = xs[j] * inv * norm_w[j];
  }
  __syncthreads();
}

__device__ inline float dot8(uint4 w, const float* x) {
  const __half2* h = reinterpret_cast<const __half2*>(&w);
  float s = 0;
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    const float2 f = __half22float2(h[k]);
    s += f.x * x[2 * k] + f.y * x[2 * k + 1];
  }
  return s;
}

__device__ inline float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__device__ inline float row_dot_f16(const __half* w, int cols, const float* xs, int lane) {
  const uint4* wr = reinterpret_cast<const uint4*>(w);
  float acc = 0;
  const int n8 = cols / 8;
#pragma unroll 4
  for (int k = lane; k < n8; k += 32) acc += dot8(__ldg(wr + k), xs + 8 * k);
  return warp_sum(acc);
}

__device__ inline float silu(float g) { return g / (1.0f + expf(-g)); }

template <GemvMode M>
__global__ void __launch_bounds__(kGemvWarps * 32)
    gemv_f16_kernel(const __half* w, int rows, int cols, const float* x, const float* norm_w, float eps,
                    const float* bias, float* y) {
  extern __shared__ float xs[];
  load_x(x, norm_w, eps, cols, xs);
  const int lane = threadIdx.x & 31, r = blockIdx.x * kGemvWarps + (threadIdx.x >> 5);
  if (r >= rows) return;
  const float a = row_dot_f16(w + static_cast<size_t>(r) * cols, cols, xs, lane);
  if (M == GemvMode::SwiGlu) {
    const float u = row_dot_f16(w + static_cast<size_t>(rows + r) * cols, cols, xs, lane);
    if (lane == 0) y[r] = silu(a) * u;
  } else if (lane == 0) {
    const float v = a + (bias ? bias[r] : 0.0f);
    if (M == GemvMode::Add)
      y[r] += v;
    else
      y[r] = v;
  }
}

// Q4_1 row: blocks of 20 bytes (d, m, 16 bytes: element j low nibble of byte j, j+16 high nibble).
// Each lane takes a quarter block (4 bytes = elements 4q..4q+3 and 16+4q..16+4q+3).
__device__ inline float row_dot_q4_1(const uint8_t* w, int cols, const float* xs, int lane) {
  const int n_quarters = cols / 8;  // 4 per block of 32
  float acc = 0;
#pragma unroll 4
  for (int k = lane; k < n_quarters; k += 32) {
    const int b = k >> 2, q = k & 3;
    const uint8_t* blk = w + static_cast<size_t>(b) * 20;
    const float d = __half2float(__ushort_as_half(*reinterpret_cast<const unsigned short*>(blk)));
    const float m = __half2float(__ushort_as_half(*reinterpret_cast<const unsigned short*>(blk + 2)));
    const uint32_t qs = *reinterpret_cast<const uint32_t*>(blk + 4 + 4 * q);
    const float* xb = xs + b * 32 + 4 * q;
    float s = 0, sx = 0;
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const uint32_t byte = (qs >> (8 * e)) & 0xffu;
      s += static_cast<float>(byte & 0x0f) * xb[e] + static_cast<float>(byte >> 4) * xb[16 + e];
      sx += xb[e] + xb[16 + e];
    }
    acc += d * s + m * sx;
  }
  return warp_sum(acc);
}

template <GemvMode M>
__global__ void __launch_bounds__(kGemvWarps * 32)
    gemv_q4_1_kernel(const uint8_t* w, int rows, int cols, const float* x, const float* norm_w, float eps,
                     const float* bias, float* y) {
  extern __shared__ float xs[];
  load_x(x, norm_w, eps, cols, xs);
  const int lane = threadIdx.x & 31, r = blockIdx.x * kGemvWarps + (threadIdx.x >> 5);
  if (r >= rows) return;
  const size_t row_bytes = static_cast<size_t>(cols / 32) * 20;
  const float a = row_dot_q4_1(w + r * row_bytes, cols, xs, lane);
  if (M == GemvMode::SwiGlu) {
    const float u = row_dot_q4_1(w + (rows + r) * row_bytes, cols, xs, lane);
    if (lane == 0) y[r] = silu(a) * u;
  } else if (lane == 0) {
    const float v = a + (bias ? bias[r] : 0.0f);
    if (M == GemvMode::Add)
      y[r] += v;
    else
      y[r] = v;
  }
}

__global__ void swiglu_half_kernel(const float* gu, int ffn, __half* h) {
  const float* row = gu + static_cast<size_t>(blockIdx.x) * 2 * ffn;
  for (int j = threadIdx.x; j < ffn; j += blockDim.x)
    h[static_cast<size_t>(blockIdx.x) * ffn + j] = __float2half_rn(silu(row[j]) * row[ffn + j]);
}

__global__ void add_bias_kernel(float* y, const float* b, int cols) {
  for (int j = threadIdx.x; j < cols; j += blockDim.x) y[static_cast<size_t>(blockIdx.x) * cols + j] += b[j];
}

template <typename K>
void set_smem(K kernel, size_t bytes) {
  if (bytes > 48 * 1024)
    cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes));
}

}  // namespace

void launch_embed(const __half* emb, int dim, const int32_t* tokens, int n, float* x,
                  const DecodeParams* meta, KvDev kv, cudaStream_t s) {
  embed_kernel<<<n, 256, 0, s>>>(emb, dim, tokens, x, meta, kv);
}

void launch_rmsnorm_half(const float* x, const float* w, int n, int dim, float eps, __half* y,
                         cudaStream_t s) {
  rmsnorm_half_kernel<<<n, 256, 0, s>>>(x, w, dim, eps, y);
}

void launch_gemv(GemvMode mode, const __half* w, int rows, int cols, const float* x, const float* norm_w,
                 float eps, const float* bias, float* y, cudaStream_t s) {
  const int blocks = (rows + kGemvWarps - 1) / kGemvWarps;
  const size_t smem = static_cast<size_t>(cols) * sizeof(float);
  switch (mode) {
    case GemvMode::Store:
      set_smem(gemv_f16_kernel<GemvMode::Store>, smem);
      gemv_f16_kernel<GemvMode::Store>
          <<<blocks, kGemvWarps * 32, smem, s>>>(w, rows, cols, x, norm_w, eps, bias, y);
      break;
    case GemvMode::Add:
      set_smem(gemv_f16_kernel<GemvMode::Add>, smem);
      gemv_f16_kernel<GemvMode::Add>
          <<<blocks, kGemvWarps * 32, smem, s>>>(w, rows, cols, x, norm_w, eps, bias, y);
      break;
    case GemvMode::SwiGlu:
      set_smem(gemv_f16_kernel<GemvMode::SwiGlu>, smem);
      gemv_f16_kernel<GemvMode::SwiGlu>
          <<<blocks, kGemvWarps * 32, smem, s>>>(w, rows, cols, x, norm_w, eps, bias, y);
      break;
  }
}

void launch_gemv_q4_1(GemvMode mode, const uint8_t* w, int rows, int cols, const float* x,
                      const float* norm_w, float eps, const float* bias, float* y, cudaStream_t s) {
  const int blocks = (rows + kGemvWarps - 1) / kGemvWarps;
  const size_t smem = static_cast<size_t>(cols) * sizeof(float);
  switch (mode) {
    case GemvMode::Store:
      set_smem(gemv_q4_1_kernel<GemvMode::Store>, smem);
      gemv_q4_1_kernel<GemvMode::Store>
          <<<blocks, kGemvWarps * 32, smem, s>>>(w, rows, cols, x, norm_w, eps, bias, y);
      break;
    case GemvMode::Add:
      set_smem(gemv_q4_1_kernel<GemvMode::Add>, smem);
      gemv_q4_1_kernel<GemvMode::Add>
          <<<blocks, kGemvWarps * 32, smem, s>>>(w, rows, cols, x, norm_w, eps, bias, y);
      break;
    case GemvMode::SwiGlu:
      set_smem(gemv_q4_1_kernel<GemvMode::SwiGlu>, smem);
      gemv_q4_1_kernel<GemvMode::SwiGlu>
          <<<blocks, kGemvWarps * 32, smem, s>>>(w, rows, cols, x, norm_w, eps, bias, y);
      break;
  }
}

void launch_swiglu_half(const float* gu, int n, int ffn, __half* h, cudaStream_t s) {
  swiglu_half_kernel<<<n, 256, 0, s>>>(gu, ffn, h);
}

void launch_add_bias(float* y, const float* b, int n, int cols, cudaStream_t s) {
  add_bias_kernel<<<n, 256, 0, s>>>(y, b, cols);
}

}  // namespace kvd::cuda
