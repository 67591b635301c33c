// Device side of the KV byte layout (kv/kv_layout.h) and of the group quantizer (kv/kv_quant.cpp):
// the same bytes and the same rounding, bit for bit. A token's record is [K row][V row]; each row is
// fp16 at 16 bits, else groups of [fp16 scale][fp16 min][codes], codes packed LSB first (element j of
// a group at bit j * bits). Widths come from a small table of classes (K bits, V bits, group) so that
// a new width or a per-class K/V split changes the table and code_at/pack_byte below, nothing else.
#pragma once
#include <cstdint>

namespace kvd::cuda {

constexpr int kMaxKvClasses = 8;

struct KvClass {
  int k_bits = 16, v_bits = 16, group = 32;
  int k_row_bytes = 0, v_row_bytes = 0;
};

__host__ __device__ inline int kv_row_bytes(int bits, int group, int kv_dim) {
  return bits == 16 ? 2 * kv_dim : (kv_dim / group) * (4 + group * bits / 8);
}

// Ports of util/fp16.h (integer arithmetic, identical results on host and device).
__host__ __device__ inline float h2f(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1f;
  uint32_t mant = h & 0x3ffu;
  uint32_t bits;
  if (exp == 0) {
    if (mant == 0) {
      bits = sign;
    } else {
      exp = 127 - 15 + 1;
      while ((mant & 0x400u) == 0) {
        mant <<= 1;
        --exp;
      }
      bits = sign | (exp << 23) | ((mant & 0x3ffu) << 13);
    }
  } else if (exp == 31) {
    bits = sign | 0x7f800000u | (mant << 13);
  } else {
    bits = sign | ((exp + 127 - 15) << 23) | (mant << 13);
  }
#ifdef __CUDA_ARCH__
  return __uint_as_float(bits);
#else
  float f;
  __builtin_memcpy(&f, &bits, 4);
  return f;
#endif
}

__host__ __device__ inline uint16_t f2h(float f) {
#ifdef __CUDA_ARCH__
  const uint32_t x = __float_as_uint(f);
#else
  uint32_t x;
  __builtin_memcpy(&x, &f, 4);
#endif
  const uint32_t sign = (x >> 16) & 0x8000u;
  const uint32_t abs = x & 0x7fffffffu;
  if (abs >= 0x7f800000u) return static_cast<uint16_t>(sign | 0x7c00u | (abs > 0x7f800000u ? 0x200u : 0));
  if (abs >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);
  if (abs < 0x38800000u) {
    if (abs < 0x33000000u) return static_cast<uint16_t>(sign);
    const uint32_t e = abs >> 23;
    const uint32_t m = (abs & 0x7fffffu) | 0x800000u;
    const uint32_t shift = 126 - e;
    uint32_t r = m >> shift;
    const uint32_t rem = m & ((1u << shift) - 1), half = 1u << (shift - 1);
    if (rem > half || (rem == half && (r & 1))) ++r;
    return static_cast<uint16_t>(sign | r);
  }
  uint32_t r = ((abs >> 13) - ((127 - 15) << 10));
  const uint32_t rem = abs & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (r & 1))) ++r;
  return static_cast<uint16_t>(sign | r);
}

// kv_quant.cpp's fp16_down / fp16_up.
__device__ inline uint16_t f2h_down(float x) {
  uint16_t h = f2h(x);
  if (h2f(h) > x) h = (h & 0x8000u) ? static_cast<uint16_t>(h + 1) : (h == 0 ? 0x8001u : h - 1);
  return h;
}
__device__ inline uint16_t f2h_up(float x) {
  uint16_t h = f2h(x);
  if (h2f(h) < x) h = (h & 0x8000u) ? (h == 0x8000u ? 1 : static_cast<uint16_t>(h - 1)) : h + 1;
  return h;
}

// kv_quant.cpp's choice of (scale, min) for a group whose range is [lo, hi]. The _rn intrinsics keep
// nvcc from contracting into FMAs, which the host code does not use.
__device__ inline void group_scale_min(float lo, float hi, int bits, uint16_t* scale_h, uint16_t* min_h) {
  const int qmax = (1 << bits) - 1;
  *min_h = f2h_down(lo);
  const float min_f = h2f(*min_h);
  uint16_t s = f2h_up(__fdiv_rn(__fsub_rn(hi, min_f), static_cast<float>(qmax)));
  float scale_f = h2f(s);
  while (scale_f > 0 && __fadd_rn(min_f, __fmul_rn(scale_f, static_cast<float>(qmax))) < hi) {
    ++s;
    scale_f = h2f(s);
  }
  *scale_h = s;
}

__device__ inline int quantize_code(float x, float min_f, float inv, int qmax) {
  const int q = static_cast<int>(rintf(__fmul_rn(__fsub_rn(x, min_f), inv)));
  return q < 0 ? 0 : (q > qmax ? qmax : q);
}

__device__ inline uint16_t load_u16(const uint8_t* p) {
  return static_cast<uint16_t>(p[0] | (static_cast<uint16_t>(p[1]) << 8));
}

// Code of element j of a group (codes start at p), any width 1..8 whose codes do not straddle bytes
// (2, 4, 8 today). A width that straddles (3, 5, 6) reads two bytes here.
__device__ inline int code_at(const uint8_t* codes, int j, int bits) {
  const int bit = j * bits;
  return (codes[bit >> 3] >> (bit & 7)) & ((1 << bits) - 1);
}

// Element idx (0 .. kv_dim-1) of a stored row at the given width.
__device__ inline float row_elem(const uint8_t* row, int bits, int group, int idx) {
  if (bits == 16) return h2f(load_u16(row + 2 * idx));
  const int g = idx / group, j = idx - g * group;
  const uint8_t* p = row + g * (4 + group * bits / 8);
  return static_cast<float>(code_at(p + 4, j, bits)) * h2f(load_u16(p)) + h2f(load_u16(p + 2));
}

}  // namespace kvd::cuda
