// Plain (scalar) group quantization and dequantization for the KV cache; the attention fast path
// reads the same bytes directly (kv/attention_cpu.cpp).
#include "kv/kv_quant.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <iterator>
#include <vector>

#include "kv/kv_rotate.h"
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

constexpr float kClipGrid[] = {1.0f, 0.95f, 0.9f, 0.85f, 0.8f, 0.75f, 0.7f, 0.65f, 0.6f, 0.55f, 0.5f};
// The grid's best few ranges are then refitted by least squares (refit_range). WikiText-2 -c 512, 8 chunks,
// KL vs the 16-bit cache: K3V2g64 0.295 (grid alone) -> 0.289 (best refitted) -> 0.275 (best 3, 3 rounds);
// K5V4g64 0.0128 -> 0.0113 -> 0.0102. One round instead of three: 0.289 / 0.0106.
constexpr int kRefitCandidates = 3, kRefitRounds = 3;

// fp16 minimum and scale coding [lo, hi] with qmax steps.
void range_params(float lo, float hi, int qmax, uint16_t* min_h, uint16_t* scale_h) {
  *min_h = fp16_down(lo);
  const float min_f = fp16_to_float(*min_h);
  *scale_h = fp16_up((hi - min_f) / static_cast<float>(qmax));
  float scale_f = fp16_to_float(*scale_h);
  // (hi - min) / qmax can round below the true quotient in float; make sure the top code reaches hi.
  while (scale_f > 0 && min_f + scale_f * static_cast<float>(qmax) < hi) {
    ++*scale_h;
    scale_f = fp16_to_float(*scale_h);
  }
}

// Round half to even of (x - min) / scale, clamped to [0, qmax] (NaN codes as 0), as a float: the same
// as nearbyint in the default rounding mode (clamping first keeps v < 2^22, where adding and subtracting
// 1.5 * 2^23 rounds exactly), without the library call, and in a form the compiler vectorizes (the clip
// search codes every group 11 to 29 times).
inline float code_value(float x, float min_f, float inv, float qmax) {
  float v = (x - min_f) * inv;
  v = v > 0.0f ? v : 0.0f;
  v = v < qmax ? v : qmax;
  constexpr float magic = 12582912.0f;  // IEEE rules (no -ffast-math) keep the two additions
  return (v + magic) - magic;
}
int code_of(float x, float min_f, float inv, int qmax) {
  return static_cast<int>(code_value(x, min_f, inv, static_cast<float>(qmax)));
}

// Squared error of the group coded with this fp16 minimum and scale. Eight partial sums, added in a fixed
// order, so the loop vectorizes and the result does not depend on the machine.
double group_sq_error(const float* x, int n, int qmax, uint16_t min_h, uint16_t scale_h) {
  const float mf = fp16_to_float(min_h), sf = fp16_to_float(scale_h);
  const float inv = sf > 0 ? 1.0f / sf : 0.0f, qm = static_cast<float>(qmax);
  double acc[8] = {};
  const int n8 = n & ~7;
  for (int i = 0; i < n8; i += 8)
    for (int j = 0; j < 8; ++j) {
      const float e = code_value(x[i + j], mf, inv, qm) * sf + mf - x[i + j];
      acc[j] += static_cast<double>(e) * e;
    }
  for (int i = n8; i < n; ++i) {  // groups of 4 (the smallest --kv-group)
    const float e = code_value(x[i], mf, inv, qm) * sf + mf - x[i];
    acc[i - n8] += static_cast<double>(e) * e;
  }
  return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

// Least-squares refit of (scale, minimum) to the codes of the current range, repeated while it lowers the
// group's squared error: with the codes q fixed, the best affine decoder is the regression of x on q.
// Kept only when it helps, so the clip search's guarantee (never worse than the unclipped range) holds.
void refit_range(const float* x, int n, int qmax, int rounds, double* best, uint16_t* min_h,
                 uint16_t* scale_h) {
  for (int it = 0; it < rounds; ++it) {
    const float mf = fp16_to_float(*min_h), sf = fp16_to_float(*scale_h);
    if (!(sf > 0)) return;
    const float inv = 1.0f / sf, qm = static_cast<float>(qmax);
    double sq[8] = {}, sx[8] = {}, sqq[8] = {}, sqx[8] = {};
    for (int i = 0; i < n; ++i) {  // lane i % 8: vectorizes when n is a multiple of 8
      const double q = code_value(x[i], mf, inv, qm), v = x[i];
      sq[i & 7] += q;
      sx[i & 7] += v;
      sqq[i & 7] += q * q;
      sqx[i & 7] += q * v;
    }
    const auto sum = [](const double* a) {
      return ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));
    };
    const double tq = sum(sq), tx = sum(sx), var = sum(sqq) - tq * tq / n;
    if (!(var > 0)) return;
    const double s = (sum(sqx) - tq * tx / n) / var, m = (tx - s * tq) / n;
    if (!(s > 0)) return;
    const uint16_t nm = float_to_fp16(static_cast<float>(m)), ns = float_to_fp16(static_cast<float>(s));
    const float nmf = fp16_to_float(nm), nsf = fp16_to_float(ns);
    if (!(nsf > 0) || !std::isfinite(nsf) || !std::isfinite(nmf)) return;
    const double err = group_sq_error(x, n, qmax, nm, ns);
    if (!(err < *best)) return;
    *best = err;
    *min_h = nm;
    *scale_h = ns;
  }
}

constexpr int kGrid = static_cast<int>(std::size(kClipGrid));

// The clip grid's candidate ranges and their squared errors, one candidate at a time (group_sq_error):
// the plain form of grid_errors_fast.
void grid_errors_plain(const float* x, int n, int qmax, float lo, float hi, uint16_t* mh, uint16_t* sh,
                       double* err) {
  const float mid = 0.5f * (lo + hi), half = 0.5f * (hi - lo);
  for (int c = 0; c < kGrid; ++c) {
    range_params(mid - kClipGrid[c] * half, mid + kClipGrid[c] * half, qmax, &mh[c], &sh[c]);
    err[c] = group_sq_error(x, n, qmax, mh[c], sh[c]);
  }
}

// The same with every candidate in a lane: the element loop outside, the candidates inside (the compiler
// vectorizes it), each candidate's error summed in group_sq_error's order (eight partial sums by i % 8,
// added as a tree), so the errors, the choice and the stored bytes are those of grid_errors_plain. It runs
// for every token written (each decode step encodes its token in every layer), where the plain search
// cost about 7x the rest of the encoding.
void grid_errors_fast(const float* x, int n, int qmax, float lo, float hi, uint16_t* mh, uint16_t* sh,
                      double* err) {
  constexpr int kLanes = 16;
  static_assert(kGrid <= kLanes);
  const float mid = 0.5f * (lo + hi), half = 0.5f * (hi - lo), qm = static_cast<float>(qmax);
  uint16_t lmh[kLanes], lsh[kLanes];
  alignas(64) float mf[kLanes], sf[kLanes], inv[kLanes];
  alignas(64) double acc[8][kLanes] = {};
  for (int c = 0; c < kLanes; ++c) {
    const float r = kClipGrid[c < kGrid ? c : 0];  // spare lanes repeat the first candidate
    range_params(mid - r * half, mid + r * half, qmax, &lmh[c], &lsh[c]);
    mf[c] = fp16_to_float(lmh[c]);
    sf[c] = fp16_to_float(lsh[c]);
    inv[c] = sf[c] > 0 ? 1.0f / sf[c] : 0.0f;
  }
  for (int i = 0; i < n; ++i) {
    const float xi = x[i];
    double* a = acc[i & 7];
    for (int c = 0; c < kLanes; ++c) {
      const float e = code_value(xi, mf[c], inv[c], qm) * sf[c] + mf[c] - xi;
      a[c] += static_cast<double>(e) * e;
    }
  }
  for (int c = 0; c < kGrid; ++c) {
    mh[c] = lmh[c];
    sh[c] = lsh[c];
    err[c] = ((acc[0][c] + acc[1][c]) + (acc[2][c] + acc[3][c])) +
             ((acc[4][c] + acc[5][c]) + (acc[6][c] + acc[7][c]));
  }
}

void quantize_group(const float* x, int n, int bits, bool clip, bool plain, uint8_t* dst) {
  float lo = x[0], hi = x[0];
  for (int i = 1; i < n; ++i) {
    lo = std::min(lo, x[i]);
    hi = std::max(hi, x[i]);
  }
  const int qmax = (1 << bits) - 1;
  uint16_t min_h, scale_h;
  range_params(lo, hi, qmax, &min_h, &scale_h);
  if (clip) {
    uint16_t mh[kGrid], sh[kGrid];
    double err[kGrid];
    (plain ? grid_errors_plain : grid_errors_fast)(x, n, qmax, lo, hi, mh, sh, err);
    int order[kGrid];
    for (int c = 0; c < kGrid; ++c) order[c] = c;
    std::stable_sort(order, order + kGrid, [&](int a, int b) { return err[a] < err[b]; });
    for (int j = 0; j < kRefitCandidates; ++j)
      refit_range(x, n, qmax, kRefitRounds, &err[order[j]], &mh[order[j]], &sh[order[j]]);
    int b = 0;
    for (int c = 1; c < kGrid; ++c)
      if (err[c] < err[b]) b = c;
    min_h = mh[b];
    scale_h = sh[b];
  }
  std::memcpy(dst, &scale_h, 2);
  std::memcpy(dst + 2, &min_h, 2);
  const float min_f = fp16_to_float(min_h), scale_f = fp16_to_float(scale_h);
  const int lo_bits = kv_lo_bits(bits), hi_bits = kv_hi_bits(bits);
  uint8_t* lo_plane = dst + 4;
  uint8_t* hi_plane = lo_plane + static_cast<size_t>(n) * lo_bits / 8;
  std::memset(lo_plane, 0, static_cast<size_t>(n) * bits / 8);
  const float inv = scale_f > 0 ? 1.0f / scale_f : 0.0f;
  const int lo_per = 8 / lo_bits, lo_mask = (1 << lo_bits) - 1;
  for (int i = 0; i < n; ++i) {
    const int q = code_of(x[i], min_f, inv, qmax);
    lo_plane[i / lo_per] |= static_cast<uint8_t>((q & lo_mask) << ((i % lo_per) * lo_bits));
    if (hi_bits) {
      const int hi_per = 8 / hi_bits;
      hi_plane[i / hi_per] |= static_cast<uint8_t>((q >> lo_bits) << ((i % hi_per) * hi_bits));
    }
  }
}

void dequantize_group(const uint8_t* src, int n, int bits, float* y) {
  uint16_t scale_h, min_h;
  std::memcpy(&scale_h, src, 2);
  std::memcpy(&min_h, src + 2, 2);
  const float scale = fp16_to_float(scale_h), mn = fp16_to_float(min_h);
  const int lo_bits = kv_lo_bits(bits), hi_bits = kv_hi_bits(bits);
  const uint8_t* lo_plane = src + 4;
  const uint8_t* hi_plane = lo_plane + static_cast<size_t>(n) * lo_bits / 8;
  const int lo_per = 8 / lo_bits, lo_mask = (1 << lo_bits) - 1;
  for (int i = 0; i < n; ++i) {
    int q = (lo_plane[i / lo_per] >> ((i % lo_per) * lo_bits)) & lo_mask;
    if (hi_bits) {
      const int hi_per = 8 / hi_bits;
      q |= ((hi_plane[i / hi_per] >> ((i % hi_per) * hi_bits)) & ((1 << hi_bits) - 1)) << lo_bits;
    }
    y[i] = static_cast<float>(q) * scale + mn;
  }
}

void kv_encode_impl(const float* src, int n, int bits, int group, bool clip, bool plain, uint8_t* dst) {
  KVD_ASSERT(kv_width_valid(bits));
  if (bits == 16) {
    for (int i = 0; i < n; ++i) {
      const uint16_t h = float_to_fp16(src[i]);
      std::memcpy(dst + 2 * i, &h, 2);
    }
    return;
  }
  KVD_ASSERT(group > 0 && n % group == 0);
  const size_t gb = KvLayout::group_bytes_of(bits, group);
  for (int g = 0; g < n / group; ++g) quantize_group(src + g * group, group, bits, clip, plain, dst + g * gb);
}

}  // namespace

void kv_encode(const float* src, int n, int bits, int group, bool clip, uint8_t* dst) {
  kv_encode_impl(src, n, bits, group, clip, false, dst);
}

void kv_encode_plain(const float* src, int n, int bits, int group, bool clip, uint8_t* dst) {
  kv_encode_impl(src, n, bits, group, clip, true, dst);
}

void kv_decode(const uint8_t* src, int n, int bits, int group, float* dst) {
  if (bits == 16) {
    for (int i = 0; i < n; ++i) {
      uint16_t h;
      std::memcpy(&h, src + 2 * i, 2);
      dst[i] = fp16_to_float(h);
    }
    return;
  }
  const size_t gb = KvLayout::group_bytes_of(bits, group);
  for (int g = 0; g < n / group; ++g) dequantize_group(src + g * gb, group, bits, dst + g * group);
}

void kv_quantize_row(const KvLayout& layout, int bits, const float* src, uint8_t* dst) {
  KVD_ASSERT(kv_width_valid(bits));
  kv_encode(src, layout.kv_dim(), bits, layout.group, false, dst);
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
    kv_decode(src + 2 * static_cast<size_t>(head) * hd, hd, 16, layout.group, dst);
    return;
  }
  const size_t head_bytes = static_cast<size_t>(hd / layout.group) * layout.group_bytes(bits);
  kv_decode(src + head * head_bytes, hd, bits, layout.group, dst);
}

void kv_dequantize_row(const KvLayout& layout, int bits, const uint8_t* src, float* dst) {
  for (int h = 0; h < layout.n_kv_heads; ++h)
    kv_dequantize_head(layout, bits, src, h, dst + h * layout.head_dim);
}

void kv_store_row(const KvLayout& layout, int cls, bool is_v, const uint16_t* src, const float* signs,
                  uint8_t* dst) {
  const KvSetting s = layout.setting(cls);
  const int bits = is_v ? s.vbits : s.kbits, group = is_v ? s.vgroup : s.kgroup;
  const int n = layout.kv_dim(), hd = layout.head_dim;
  if (bits == 16) {
    std::memcpy(dst, src, 2 * static_cast<size_t>(n));
    return;
  }
  float tmp[4096];
  std::vector<float> big;
  float* x = tmp;
  if (n > 4096) {
    big.resize(static_cast<size_t>(n));
    x = big.data();
  }
  for (int i = 0; i < n; ++i) x[i] = fp16_to_float(src[i]);
  if (layout.rotate)
    for (int h = 0; h < layout.n_kv_heads; ++h) kv_rotate(x + h * hd, signs + h * hd, hd);
  kv_encode(x, n, bits, group, layout.clip, dst);
}

void kv_load_head(const KvLayout& layout, int cls, bool is_v, const uint8_t* row, int head,
                  const float* signs, float* dst) {
  const KvSetting s = layout.setting(cls);
  const int bits = is_v ? s.vbits : s.kbits, group = is_v ? s.vgroup : s.kgroup;
  const int hd = layout.head_dim;
  if (bits == 16) {
    kv_decode(row + 2 * static_cast<size_t>(head) * hd, hd, 16, group, dst);
    return;
  }
  const size_t head_bytes = static_cast<size_t>(hd / group) * KvLayout::group_bytes_of(bits, group);
  kv_decode(row + head * head_bytes, hd, bits, group, dst);
  if (layout.rotate) kv_unrotate(dst, signs + head * hd, hd);
}

}  // namespace kvd
