// Internals of the fast CPU matmul shared with its tests and benchmarks: the activation quantizer of
// the ActQuant::Q8 path, the SIMD row dequantizer and the token count where the blocked GEMM takes over.
#pragma once
#include <cstdint>

#include "gguf/gguf.h"

namespace kvd::cpu {

// From this many tokens on, matmul dequantizes tiles of rows once and runs a GEMM over all tokens;
// below it, each row is unpacked and dotted with each token directly (cheaper when weights are not reused).
constexpr int64_t kGemmMinTokens = 12;

// Rounds n (a multiple of 32) activations to int8 blocks: xq = round(x / xd[b]) with xd[b] = max|x| / 127
// per 32 elements; sx[b] = xd[b] * sum(xq) of the block (for the Q4 offset terms).
void quantize_act_q8(const float* x, int64_t n, int8_t* xq, float* xd, float* sx);

// SIMD dequantization with the same contract as ref::dequantize_row (results may differ by rounding:
// the fast one uses FMA for q * d + m).
void dequantize_row_fast(gguf::TensorType type, const uint8_t* src, float* dst, int64_t n);

}  // namespace kvd::cpu
