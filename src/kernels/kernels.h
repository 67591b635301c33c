// Kernel entry points used by the forward pass. Each op has a plain reference (kernels/ref, simple
// loops, written to be read) and a fast CPU version (kernels/cpu, SIMD + threads); tests hold the
// fast one to the reference.
//
// Weight matrices are ggml-layout: `rows` rows of `cols` elements, each row a run of quant blocks
// (row_bytes = cols / block_elems * block_bytes). y = W x means y[r] = dot(row r, x).
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

#include "gguf/gguf.h"

namespace kvd {

class ThreadPool;

// A view of a 2-D weight tensor in the mapped file.
struct WeightView {
  gguf::TensorType type = gguf::TensorType::F32;
  const uint8_t* data = nullptr;
  int64_t rows = 0;
  int64_t cols = 0;
  size_t row_bytes = 0;
};

namespace ref {
// Dequantizes n elements (a multiple of the type's block size) starting at a block boundary.
void dequantize_row(gguf::TensorType type, const uint8_t* src, float* dst, int64_t n);
// Y[t, r] = sum_c W[r, c] * X[t, c] for t < n_tokens. X is n_tokens x W.cols, Y is n_tokens x W.rows.
// Dequantizes each row to fp32 and accumulates in fp32, in index order.
void matmul(const WeightView& w, const float* x, float* y, int64_t n_tokens);
}  // namespace ref

// How cpu::matmul treats the activations for few tokens (decode). F32 (default): fp32 activations and
// fp32 FMA, max|y - y_ref| / max|y_ref| <= ~1e-6. Q8: each 32-block of x rounded to int8 with a float
// scale and integer dot products for Q4_0 / Q4_1 / Q8_0 weights, ~1.3-1.5x faster per core but
// 0.4-2% error (output logits off by up to ~0.6; tests/test_kernels.cpp KernelAccuracy). Other weight
// types and calls with many tokens (the GEMM path) always use fp32.
enum class ActQuant { F32, Q8 };

namespace cpu {
// Same contract as ref::matmul, SIMD and split over the pool's threads.
void matmul(const WeightView& w, const float* x, float* y, int64_t n_tokens, ThreadPool& pool,
            ActQuant act = ActQuant::F32);
// The SIMD target the kernels run with on this CPU (Highway's name, e.g. "AVX3_DL", "AVX2").
std::string simd_target();
}  // namespace cpu

}  // namespace kvd
