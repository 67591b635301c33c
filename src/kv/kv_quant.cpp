// Plain (scalar) group quantization and dequantization for the KV cache; the attention fast path
// reads the same bytes directly (kv/attention_cpu.cpp).
#include "kv/kv_quant.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "util/error.h"
#include "util/fp16.h"

namespace kvd {
namespace {

// fp16 value <= x (round toward -inf), and fp16 value >= x (toward +inf).
uint16_t fp16_down(float x) {
  uint16_t h = float_to_fp16(x);
  if (fp16_to_float(h) > x) h = (h & 0x8000u) ? static_cast<uint16_t>(h + 1) : (h == 0 ? 0x8001u : h - 1);
  return h;
}
uint16_t fp16_up(float x) {
  uint16_t h = float_to_fp16(x);
  if (fp16_to_float(h) < x) h = (h & 0x8000u) ? (h == 0x8000u ? 1 : static_cast<uint16_t>(h - 1)) : h + 1;
  return h;
}

void quantize_group(const float* x, int n, int bits, uint8_t* dst) {
  float lo = x[0], hi = x[0];
  for (int i = 1; i < n; ++i) {
    lo = std::min(lo, x[i]);
    hi = std::max(hi, x[i]);
  }
  const int qmax = (1 << bits) - 1;
  const uint16_t min_h = fp16_down(lo);
  const float min_f = fp16_to_float(min_h);
  uint16_t scale_h = fp16_up((hi - min_f) / static_cast<float>(qmax));
  float scale_f = fp16_to_float(scale_h);
  // (hi - min) / qmax can round below the true quotient in float; make sure the top code reaches hi.
  while (scale_f > 0 && min_f + scale_f * static_cast<float>(qmax) < hi) {
    ++scale_h;
    scale_f = fp16_to_float(scale_h);
  }
  std::memcpy(dst, &scale_h, 2);
  std::memcpy(dst + 2, &min_h, 2);
  uint8_t* codes = dst + 4;
  std::memset(codes, 0, static_cast<size_t>(n) * bits / 8);
  const float inv = scale_f > 0 ? 1.0f / scale_f : 0.0f;
  const int per_byte = 8 / bits;
  for (int i = 0; i < n; ++i) {
    int q = static_cast<int>(std::nearbyint((x[i] - min_f) * inv));
    q = std::clamp(q, 0, qmax);
    codes[i / per_byte] |= static_cast<uint8_t>(q << ((i % per_byte) * bits));
  }
}

void dequantize_group(const uint8_t* src, int n, int bits, float* y) {
  uint16_t scale_h, min_h;
  std::memcpy(&scale_h, src, 2);
  std::memcpy(&min_h, src + 2, 2);
  const float scale = fp16_to_float(scale_h), mn = fp16_to_float(min_h);
  const uint8_t* codes = src + 4;
  const int per_byte = 8 / bits, mask = (1 << bits) - 1;
  for (int i = 0; i < n; ++i) {
    const int q = (codes[i / per_byte] >> ((i % per_byte) * bits)) & mask;
    y[i] = static_cast<float>(q) * scale + mn;
  }
}

}  // namespace

void kv_quantize_row(const KvLayout& layout, int bits, const float* src, uint8_t* dst) {
  KVD_ASSERT(kv_bits_valid(bits));
  const int n = layout.kv_dim();
  if (bits == 16) {
    for (int i = 0; i < n; ++i) {
      const uint16_t h = float_to_fp16(src[i]);
      std::memcpy(dst + 2 * i, &h, 2);
    }
    return;
  }
  const size_t gb = layout.group_bytes(bits);
  for (int g = 0; g < layout.groups_per_row(); ++g) quantize_group(src + g * layout.group, layout.group, bits, dst + g * gb);
}

void kv_quantize_row_fp16(const KvLayout& layout, int bits, const uint16_t* src, uint8_t* dst) {
  const int n = layout.kv_dim();
  if (bits == 16) {
    std::memcpy(dst, src, 2 * static_cast<size_t>(n));
    return;
  }
  std::vector<float> tmp(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) tmp[i] = fp16_to_float(src[i]);
  kv_quantize_row(layout, bits, tmp.data(), dst);
}

void kv_dequantize_head(const KvLayout& layout, int bits, const uint8_t* src, int head, float* dst) {
  const int hd = layout.head_dim;
  if (bits == 16) {
    for (int i = 0; i < hd; ++i) {
      uint16_t h;
      std::memcpy(&h, src + 2 * (static_cast<size_t>(head) * hd + i), 2);
      dst[i] = fp16_to_float(h);
    }
    return;
  }
  const size_t gb = layout.group_bytes(bits);
  const int g0 = head * hd / layout.group;
  for (int g = 0; g < hd / layout.group; ++g)
    dequantize_group(src + (g0 + g) * gb, layout.group, bits, dst + g * layout.group);
}

void kv_dequantize_row(const KvLayout& layout, int bits, const uint8_t* src, float* dst) {
  for (int h = 0; h < layout.n_kv_heads; ++h) kv_dequantize_head(layout, bits, src, h, dst + h * layout.head_dim);
}

}  // namespace kvd
