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

// Q5_0: half d, 32 high bits qh (little endian), 16 bytes of nibbles: element j has low 4 bits from
// nibble j (as Q4_0) and bit 4 from bit j of qh; x = (q - 16) * d.
void dequant_q5_0(const uint8_t* b, float* y) {
  const float d = load_half(b);
  uint32_t qh;
  std::memcpy(&qh, b + 2, 4);
  const uint8_t* qs = b + 6;
  for (int j = 0; j < 16; ++j) {
    const int lo = (qs[j] & 0x0f) | (((qh >> j) & 1) << 4);
    const int hi = (qs[j] >> 4) | (((qh >> (j + 16)) & 1) << 4);
    y[j] = static_cast<float>(lo - 16) * d;
    y[j + 16] = static_cast<float>(hi - 16) * d;
  }
}

// Q5_1: half d, half m, 32 high bits, 16 bytes of nibbles: x = q * d + m.
void dequant_q5_1(const uint8_t* b, float* y) {
  const float d = load_half(b), m = load_half(b + 2);
  uint32_t qh;
  std::memcpy(&qh, b + 4, 4);
  const uint8_t* qs = b + 8;
  for (int j = 0; j < 16; ++j) {
    const int lo = (qs[j] & 0x0f) | (((qh >> j) & 1) << 4);
    const int hi = (qs[j] >> 4) | (((qh >> (j + 16)) & 1) << 4);
    y[j] = static_cast<float>(lo) * d + m;
    y[j + 16] = static_cast<float>(hi) * d + m;
  }
}

// The 16 values of the non-linear 4-bit grid of IQ4_NL and IQ4_XS.
constexpr int8_t kIq4Values[16] = {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113};

// IQ4_NL: half d, 16 bytes of nibbles (Q4_0's order); x = grid[nibble] * d.
void dequant_iq4_nl(const uint8_t* b, float* y) {
  const float d = load_half(b);
  const uint8_t* qs = b + 2;
  for (int j = 0; j < 16; ++j) {
    y[j] = d * static_cast<float>(kIq4Values[qs[j] & 0x0f]);
    y[j + 16] = d * static_cast<float>(kIq4Values[qs[j] >> 4]);
  }
}

// Q2_K: 16 bytes of scales (low nibble scale, high nibble min, one per 16 elements), 64 bytes of 2-bit
// codes, half d, half dmin (256 elements). Each 128 elements use 32 bytes: bits 2s..2s+1 of byte l are
// element 32 s + l. x = d * scale * q - dmin * min.
void dequant_q2_k(const uint8_t* b, float* y) {
  const uint8_t* sc = b;
  const uint8_t* qs = b + 16;
  const float d = load_half(b + 80), dmin = load_half(b + 82);
  for (int h = 0; h < 2; ++h, qs += 32)
    for (int s = 0; s < 4; ++s)
      for (int l = 0; l < 32; ++l) {
        const int i = 128 * h + 32 * s + l;
        const float dl = d * static_cast<float>(sc[i / 16] & 0x0f);
        const float ml = dmin * static_cast<float>(sc[i / 16] >> 4);
        y[i] = dl * static_cast<float>((qs[l] >> (2 * s)) & 3) - ml;
      }
}

// Q3_K scales: 16 6-bit values packed in 12 bytes (low 4 bits in bytes 0-7, low then high nibble; high
// 2 bits in bytes 8-11), stored with an offset of 32.
int q3k_scale(int i, const uint8_t* sc) {
  const int lo = i < 8 ? sc[i] & 0x0f : sc[i - 8] >> 4;
  const int hi = (sc[8 + i % 4] >> (2 * (i / 4))) & 3;
  return (lo | (hi << 4)) - 32;
}

// Q3_K: 32 bytes hmask, 64 bytes of 2-bit codes, 12 bytes of scales, half d (256 elements). Element
// i = 128 h + 32 s + l has low bits (qs[32 h + l] >> 2 s) & 3 and its third bit at bit i / 32 of hmask[l];
// q = low - 4 when that bit is clear. x = d * scale[i / 16] * q.
void dequant_q3_k(const uint8_t* b, float* y) {
  const uint8_t* hm = b;
  const uint8_t* qs = b + 32;
  const uint8_t* sc = b + 96;
  const float d = load_half(b + 108);
  for (int h = 0; h < 2; ++h)
    for (int s = 0; s < 4; ++s)
      for (int l = 0; l < 32; ++l) {
        const int i = 128 * h + 32 * s + l;
        const int low = (qs[32 * h + l] >> (2 * s)) & 3;
        const int q = low - (((hm[l] >> (i / 32)) & 1) ? 0 : 4);
        const float dl = d * static_cast<float>(q3k_scale(i / 16, sc));
        y[i] = dl * static_cast<float>(q);
      }
}

// Q5_K: half d, half dmin, 12 bytes of scales (as Q4_K), 32 bytes of high bits, 128 bytes of nibbles.
// Sub-block j (32 elements) takes nibbles as Q4_K does and bit j of qh[l] as bit 4 of element l.
void dequant_q5_k(const uint8_t* b, float* y) {
  const float d = load_half(b), dmin = load_half(b + 2);
  const uint8_t* scales = b + 4;
  const uint8_t* qh = b + 16;
  const uint8_t* q = b + 48;
  for (int j = 0; j < 8; ++j) {
    int sc, mn;
    q4k_scale_min(j, scales, &sc, &mn);
    const float dl = d * static_cast<float>(sc), ml = dmin * static_cast<float>(mn);
    const uint8_t* qj = q + 32 * (j / 2);
    for (int l = 0; l < 32; ++l) {
      const int v = ((qj[l] >> (4 * (j % 2))) & 0x0f) | (((qh[l] >> j) & 1) << 4);
      y[32 * j + l] = dl * static_cast<float>(v) - ml;
    }
  }
}

// IQ4_XS: half d, 16 bits of high scale bits, 4 bytes of low scale nibbles, 128 bytes of nibbles
// (256 elements). Sub-block j of 32 has scale ((low nibble j) | (2 high bits j) << 4) - 32 and its 16
// bytes qs[16 j ..]: low nibbles are elements 0-15, high nibbles 16-31. x = d * scale * grid[nibble].
void dequant_iq4_xs(const uint8_t* b, float* y) {
  const float d = load_half(b);
  const uint16_t sh = load_u16(b + 2);
  const uint8_t* sl = b + 4;
  const uint8_t* qs = b + 8;
  for (int j = 0; j < 8; ++j, qs += 16, y += 32) {
    const int ls = ((sl[j / 2] >> (4 * (j % 2))) & 0x0f) | (((sh >> (2 * j)) & 3) << 4);
    const float dl = d * static_cast<float>(ls - 32);
    for (int l = 0; l < 16; ++l) {
      y[l] = dl * static_cast<float>(kIq4Values[qs[l] & 0x0f]);
      y[l + 16] = dl * static_cast<float>(kIq4Values[qs[l] >> 4]);
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
      case T::Q5_0: dequant_q5_0(src, dst); break;
      case T::Q5_1: dequant_q5_1(src, dst); break;
      case T::IQ4_NL: dequant_iq4_nl(src, dst); break;
      case T::Q2_K: dequant_q2_k(src, dst); break;
      case T::Q3_K: dequant_q3_k(src, dst); break;
      case T::Q4_K: dequant_q4_k(src, dst); break;
      case T::Q5_K: dequant_q5_k(src, dst); break;
      case T::Q6_K: dequant_q6_k(src, dst); break;
      case T::IQ4_XS: dequant_iq4_xs(src, dst); break;
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
