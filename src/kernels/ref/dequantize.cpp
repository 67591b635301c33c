// Plain dequantization of every supported ggml block format, one block at a time, written to be
// read. Layouts follow ggml's block structs; the fast kernels in kernels/cpu are tested against these.
#include <cstring>
#include <vector>

#include "kernels/kernels.h"
#include "util/error.h"
#include "util/fp16.h"

namespace kvd::ref {
namespace {

uint16_t load_u16(const uint8_t* p) {
  uint16_t v;
  std::memcpy(&v, p, 2);
  return v;
}
float load_half(const uint8_t* p) { return fp16_to_float(load_u16(p)); }

// Q4_0: half d, 16 bytes of nibbles; element j is low nibble of byte j, element j+16 the high one.
void dequant_q4_0(const uint8_t* b, float* y) {
  const float d = load_half(b);
  const uint8_t* qs = b + 2;
  for (int j = 0; j < 16; ++j) {
    y[j] = static_cast<float>((qs[j] & 0x0f) - 8) * d;
    y[j + 16] = static_cast<float>((qs[j] >> 4) - 8) * d;
  }
}

// Q4_1: half d, half m (minimum), 16 bytes of nibbles: x = q * d + m.
void dequant_q4_1(const uint8_t* b, float* y) {
  const float d = load_half(b), m = load_half(b + 2);
  const uint8_t* qs = b + 4;
  for (int j = 0; j < 16; ++j) {
    y[j] = static_cast<float>(qs[j] & 0x0f) * d + m;
    y[j + 16] = static_cast<float>(qs[j] >> 4) * d + m;
  }
}

// Q8_0: half d, 32 signed bytes.
void dequant_q8_0(const uint8_t* b, float* y) {
  const float d = load_half(b);
  const int8_t* qs = reinterpret_cast<const int8_t*>(b + 2);
  for (int j = 0; j < 32; ++j) y[j] = static_cast<float>(qs[j]) * d;
}

// Q4_K scales: 8 sub-blocks of 32, each with a 6-bit scale and a 6-bit min packed into 12 bytes.
void q4k_scale_min(int j, const uint8_t* q, int* sc, int* mn) {
  if (j < 4) {
    *sc = q[j] & 63;
    *mn = q[j + 4] & 63;
  } else {
    *sc = (q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4);
    *mn = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
  }
}

// Q4_K: half d, half dmin, 12 bytes of scales, 128 bytes of nibbles (256 elements). Each 64 elements
// use 32 bytes: low nibbles are the first sub-block of 32, high nibbles the second.
void dequant_q4_k(const uint8_t* b, float* y) {
  const float d = load_half(b), dmin = load_half(b + 2);
  const uint8_t* scales = b + 4;
  const uint8_t* q = b + 16;
  for (int j = 0, is = 0; j < 256; j += 64, is += 2, q += 32) {
    int sc, mn;
    q4k_scale_min(is, scales, &sc, &mn);
    const float d1 = d * static_cast<float>(sc), m1 = dmin * static_cast<float>(mn);
    q4k_scale_min(is + 1, scales, &sc, &mn);
    const float d2 = d * static_cast<float>(sc), m2 = dmin * static_cast<float>(mn);
    for (int l = 0; l < 32; ++l) y[j + l] = d1 * static_cast<float>(q[l] & 0x0f) - m1;
    for (int l = 0; l < 32; ++l) y[j + 32 + l] = d2 * static_cast<float>(q[l] >> 4) - m2;
  }
}

// Q6_K: 128 bytes low 4 bits, 64 bytes high 2 bits, 16 int8 scales, half d (256 elements).
void dequant_q6_k(const uint8_t* b, float* y) {
  const uint8_t* ql = b;
  const uint8_t* qh = b + 128;
  const int8_t* sc = reinterpret_cast<const int8_t*>(b + 192);
  const float d = load_half(b + 208);
  for (int n = 0; n < 256; n += 128, ql += 64, qh += 32, sc += 8) {
    for (int l = 0; l < 32; ++l) {
      const int is = l / 16;
      const int q1 = ((ql[l] & 0x0f) | (((qh[l] >> 0) & 3) << 4)) - 32;
      const int q2 = ((ql[l + 32] & 0x0f) | (((qh[l] >> 2) & 3) << 4)) - 32;
      const int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
      const int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
      y[n + l] = d * static_cast<float>(sc[is]) * static_cast<float>(q1);
      y[n + l + 32] = d * static_cast<float>(sc[is + 2]) * static_cast<float>(q2);
      y[n + l + 64] = d * static_cast<float>(sc[is + 4]) * static_cast<float>(q3);
      y[n + l + 96] = d * static_cast<float>(sc[is + 6]) * static_cast<float>(q4);
    }
  }
}

}  // namespace

void dequantize_row(gguf::TensorType type, const uint8_t* src, float* dst, int64_t n) {
  using T = gguf::TensorType;
  const gguf::BlockInfo bi = gguf::block_info(type);
  KVD_ASSERT(n % bi.elems == 0);
  for (int64_t i = 0; i < n; i += bi.elems, src += bi.bytes, dst += bi.elems) {
    switch (type) {
      case T::F32: std::memcpy(dst, src, 4); break;
      case T::F16: *dst = fp16_to_float(load_u16(src)); break;
      case T::BF16: *dst = bf16_to_float(load_u16(src)); break;
      case T::Q4_0: dequant_q4_0(src, dst); break;
      case T::Q4_1: dequant_q4_1(src, dst); break;
      case T::Q8_0: dequant_q8_0(src, dst); break;
      case T::Q4_K: dequant_q4_k(src, dst); break;
      case T::Q6_K: dequant_q6_k(src, dst); break;
    }
  }
}

void matmul(const WeightView& w, const float* x, float* y, int64_t n_tokens) {
  std::vector<float> row(static_cast<size_t>(w.cols));
  for (int64_t r = 0; r < w.rows; ++r) {
    dequantize_row(w.type, w.data + r * w.row_bytes, row.data(), w.cols);
    for (int64_t t = 0; t < n_tokens; ++t) {
      const float* xt = x + t * w.cols;
      float acc = 0.0f;
      for (int64_t c = 0; c < w.cols; ++c) acc += row[c] * xt[c];
      y[t * w.rows + r] = acc;
    }
  }
}

}  // namespace kvd::ref
