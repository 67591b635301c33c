// Fast CPU matmul for every weight type, never dequantizing a whole matrix: few tokens take a fused
// unpack + dot per row (fp32 or int8 activations), many tokens a blocked GEMM over dequantized row tiles.
// Compiled once per Highway target (foreach_target re-includes this file); the best one runs (dispatch).
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "kernels/cpu/matmul.cpp"
// Opt in to the AVX3_DL target (AVX-512 + VNNI: Ice Lake, Zen 4) for the int8 dot products.
#ifndef HWY_WANT_AVX3_DL
#define HWY_WANT_AVX3_DL
#endif
#include <hwy/aligned_allocator.h>
#include <hwy/foreach_target.h>  // must precede highway.h
#include <hwy/highway.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "kernels/cpu/matmul_internal.h"
#include "kernels/kernels.h"
#include "util/error.h"
#include "util/fp16.h"
#include "util/thread_pool.h"

HWY_BEFORE_NAMESPACE();
namespace kvd::cpu {
// Internal linkage: other files compile their own per-target code into kvd::cpu::N_<TARGET> too, and
// same-named helpers (Half, kN, ...) must not collide or be merged by the linker.
namespace {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;
using gguf::TensorType;

// Vectors of at most 16 floats: one vector never spans two 16-element sub-blocks of a quant block.
using DF = hn::CappedTag<float, 16>;
using DI = hn::RebindToSigned<DF>;
using VF = hn::Vec<DF>;
using VI = hn::Vec<DI>;
constexpr size_t kN = hn::MaxLanes(DF());

HWY_INLINE float Half(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
#if HWY_ARCH_X86 && HWY_TARGET <= HWY_AVX2
  return _cvtsh_ss(h);  // F16C: every AVX2 target has it
#else
  return fp16_to_float(h);
#endif
}

// Widens n (= kN) bytes at p to int32 lanes.
HWY_INLINE VI LoadU8(const uint8_t* p) {
  return hn::PromoteTo(DI(), hn::LoadU(hn::Rebind<uint8_t, DF>(), p));
}
HWY_INLINE VI LoadI8(const uint8_t* p) {
  return hn::PromoteTo(DI(), hn::LoadU(hn::Rebind<int8_t, DF>(), reinterpret_cast<const int8_t*>(p)));
}
HWY_INLINE VF ToF(VI v) { return hn::ConvertTo(DF(), v); }

// ---------------------------------------------------------------------------------------------------
// fp32-activation dot products of rows with tokens (the decode path). Quant blocks are handled as
// d * sum(q * x) + m * sum(x): the per-block sums of x (sx, one per 32 elements) are computed once per
// token, so the inner loop is convert + FMA and the scale is applied once per block.

// One Q4_0 (m = -8 d) / Q4_1 block against T tokens: acc[t] += d * sum(q * x_t), macc[t] += m * sx_t.
// The nibbles are unpacked once and reused for every token.
template <bool kQ40, size_t T>
HWY_INLINE void Q4Block(const uint8_t* blk, const float* const* xs, const float* const* sxs, int64_t b,
                        VF* acc, float* macc) {
  const DF df;
  const VI mask = hn::Set(DI(), 0x0f);
  const float d = Half(blk), m = kQ40 ? -8.0f * d : Half(blk + 2);
  const uint8_t* qs = blk + (kQ40 ? 2 : 4);
  VF p[T];
#pragma GCC unroll 8
  for (size_t t = 0; t < T; ++t) p[t] = hn::Zero(df);
#pragma GCC unroll 16
  for (size_t j = 0; j < 16; j += kN) {
    const VI q = LoadU8(qs + j);
    const VF lo = ToF(hn::And(q, mask)), hi = ToF(hn::ShiftRight<4>(q));
#pragma GCC unroll 8
    for (size_t t = 0; t < T; ++t) {
      const float* x = xs[t] + b * 32 + j;
      p[t] = hn::MulAdd(lo, hn::LoadU(df, x), p[t]);
      p[t] = hn::MulAdd(hi, hn::LoadU(df, x + 16), p[t]);
    }
  }
  const VF vd = hn::Set(df, d);
#pragma GCC unroll 8
  for (size_t t = 0; t < T; ++t) {
    acc[t] = hn::MulAdd(p[t], vd, acc[t]);
    macc[t] += m * sxs[t][b];
  }
}

// One Q8_0 block against T tokens.
template <size_t T>
HWY_INLINE void Q8Block(const uint8_t* blk, const float* const* xs, int64_t b, VF* acc) {
  const DF df;
  const uint8_t* qs = blk + 2;
  VF p[T];
#pragma GCC unroll 8
  for (size_t t = 0; t < T; ++t) p[t] = hn::Zero(df);
#pragma GCC unroll 16
  for (size_t j = 0; j < 32; j += kN) {
    const VF q = ToF(LoadI8(qs + j));
#pragma GCC unroll 8
    for (size_t t = 0; t < T; ++t) {
      const float* x = xs[t] + b * 32 + j;
      p[t] = hn::MulAdd(q, hn::LoadU(df, x), p[t]);
    }
  }
  const VF vd = hn::Set(df, Half(blk));
#pragma GCC unroll 8
  for (size_t t = 0; t < T; ++t) acc[t] = hn::MulAdd(p[t], vd, acc[t]);
}

#if HWY_ARCH_X86 && HWY_TARGET <= HWY_AVX3
// AVX-512 Q4_0 / Q4_1, R rows x T tokens: a per-block table lut[i] = i * d + m of the 16 possible
// weights, indexed with vpermps, which reads only the low 4 bits of each index (so the low nibble needs no
// mask). The weights come out dequantized and go straight into the FMA with x: no int->float conversion,
// no per-block scale FMA, no offset term. The scales of a run of blocks are converted in a pre-pass, 4
// blocks per vcvtph2ps, so the main loop broadcasts them from memory instead of shuffling registers
// (the shuffle unit is the bottleneck on Zen 4); two rows share each load of x.
template <bool kQ40, size_t R, size_t T>
void DotQ4LutT(const uint8_t* const* rows, const float* const* xs, int64_t nb, float* out) {
  constexpr int64_t kBytes = kQ40 ? 18 : 20, kChunk = 32;
  const float o = kQ40 ? -8.0f : 0.0f;
  const __m512 iota = _mm512_setr_ps(o + 0, o + 1, o + 2, o + 3, o + 4, o + 5, o + 6, o + 7, o + 8, o + 9,
                                     o + 10, o + 11, o + 12, o + 13, o + 14, o + 15);
  __m512 acc[R][2][T];
#pragma GCC unroll 4
  for (size_t r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (size_t t = 0; t < T; ++t) acc[r][0][t] = acc[r][1][t] = _mm512_setzero_ps();
  HWY_ALIGN float sc[R][2 * kChunk];  // Q4_1: d, m per block; Q4_0: d (at even indices)
  for (int64_t c0 = 0; c0 < nb; c0 += kChunk) {
    const int64_t nc = std::min(kChunk, nb - c0);
    for (size_t r = 0; r < R; ++r) {
      const uint8_t* blk = rows[r] + c0 * kBytes;
      int64_t b = 0;
      for (; b + 4 <= nc; b += 4) {
        uint32_t h[4];
        for (int k = 0; k < 4; ++k) std::memcpy(&h[k], blk + (b + k) * kBytes, 4);
        const __m128i v = _mm_setr_epi32(static_cast<int>(h[0]), static_cast<int>(h[1]),
                                         static_cast<int>(h[2]), static_cast<int>(h[3]));
        _mm256_store_ps(sc[r] + 2 * b, _mm256_cvtph_ps(v));
      }
      for (; b < nc; ++b) {
        sc[r][2 * b] = Half(blk + b * kBytes);
        sc[r][2 * b + 1] = kQ40 ? 0.0f : Half(blk + b * kBytes + 2);
      }
    }
    for (int64_t b = 0; b < nc; ++b) {
      __m512 xlo[T], xhi[T];
#pragma GCC unroll 8
      for (size_t t = 0; t < T; ++t) {
        xlo[t] = _mm512_loadu_ps(xs[t] + (c0 + b) * 32);
        xhi[t] = _mm512_loadu_ps(xs[t] + (c0 + b) * 32 + 16);
      }
#pragma GCC unroll 4
      for (size_t r = 0; r < R; ++r) {
        const uint8_t* blk = rows[r] + (c0 + b) * kBytes;
        const __m512 lut =
            kQ40 ? _mm512_mul_ps(iota, _mm512_set1_ps(sc[r][2 * b]))
                 : _mm512_fmadd_ps(iota, _mm512_set1_ps(sc[r][2 * b]), _mm512_set1_ps(sc[r][2 * b + 1]));
        const __m512i q =
            _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + kBytes - 16)));
        const __m512 wlo = _mm512_permutexvar_ps(q, lut);
        const __m512 whi = _mm512_permutexvar_ps(_mm512_srli_epi32(q, 4), lut);
#pragma GCC unroll 8
        for (size_t t = 0; t < T; ++t) {
          acc[r][0][t] = _mm512_fmadd_ps(wlo, xlo[t], acc[r][0][t]);
          acc[r][1][t] = _mm512_fmadd_ps(whi, xhi[t], acc[r][1][t]);
        }
      }
    }
  }
#pragma GCC unroll 4
  for (size_t r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (size_t t = 0; t < T; ++t)
      out[r * T + t] = _mm512_reduce_add_ps(_mm512_add_ps(acc[r][0][t], acc[r][1][t]));
}
#endif

// Q4_0 / Q4_1 / Q8_0 row against T tokens: out[t] = dot(row, xs[t]). Even and odd blocks go to separate
// accumulators so consecutive blocks do not wait on one FMA chain.
template <TensorType kType, size_t T>
void DotBlocksT(const uint8_t* row, const float* const* xs, const float* const* sxs, int64_t nb, float* out) {
  const DF df;
  constexpr size_t kBytes = kType == TensorType::Q4_0 ? 18 : kType == TensorType::Q4_1 ? 20 : 34;
  VF acc0[T], acc1[T];
  float macc0[T], macc1[T];
#pragma GCC unroll 8
  for (size_t t = 0; t < T; ++t) {
    acc0[t] = hn::Zero(df);
    acc1[t] = hn::Zero(df);
    macc0[t] = macc1[t] = 0.0f;
  }
  const auto block = [&](int64_t b, VF* acc, float* macc) HWY_ATTR {
    if constexpr (kType == TensorType::Q8_0) {
      (void)macc;
      Q8Block<T>(row + b * kBytes, xs, b, acc);
    } else {
      Q4Block<kType == TensorType::Q4_0, T>(row + b * kBytes, xs, sxs, b, acc, macc);
    }
  };
  int64_t b = 0;
  for (; b + 2 <= nb; b += 2) {
    block(b, acc0, macc0);
    block(b + 1, acc1, macc1);
  }
  if (b < nb) block(b, acc0, macc0);
#pragma GCC unroll 8
  for (size_t t = 0; t < T; ++t)
    out[t] = hn::GetLane(hn::SumOfLanes(df, hn::Add(acc0[t], acc1[t]))) + (macc0[t] + macc1[t]);
}

// Q4_K: sub-block j of 32 has scale d * sc_j and min dmin * mn_j: x = d sc q - dmin mn.
HWY_INLINE void Q4KScaleMin(int j, const uint8_t* q, int* sc, int* mn) {
  if (j < 4) {
    *sc = q[j] & 63;
    *mn = q[j + 4] & 63;
  } else {
    *sc = (q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4);
    *mn = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
  }
}

float DotQ4K(const uint8_t* row, const float* x, const float* sx, int64_t nb) {
  const DF df;
  const VI mask = hn::Set(DI(), 0x0f);
  VF acc = hn::Zero(df);
  float macc = 0.0f;
  for (int64_t b = 0; b < nb; ++b, row += 144) {
    const float d = Half(row), dmin = Half(row + 2);
    const uint8_t* scales = row + 4;
    const uint8_t* q = row + 16;
    for (int c = 0; c < 4; ++c, q += 32, x += 64) {
      int sc1, mn1, sc2, mn2;
      Q4KScaleMin(2 * c, scales, &sc1, &mn1);
      Q4KScaleMin(2 * c + 1, scales, &sc2, &mn2);
      VF p0 = hn::Zero(df), p1 = hn::Zero(df);
      for (size_t j = 0; j < 32; j += kN) {
        const VI v = LoadU8(q + j);
        p0 = hn::MulAdd(ToF(hn::And(v, mask)), hn::LoadU(df, x + j), p0);
        p1 = hn::MulAdd(ToF(hn::ShiftRight<4>(v)), hn::LoadU(df, x + 32 + j), p1);
      }
      acc = hn::MulAdd(p0, hn::Set(df, d * static_cast<float>(sc1)), acc);
      acc = hn::MulAdd(p1, hn::Set(df, d * static_cast<float>(sc2)), acc);
      const float* s = sx + b * 8 + 2 * c;
      macc -= dmin * static_cast<float>(mn1) * s[0] + dmin * static_cast<float>(mn2) * s[1];
    }
  }
  return hn::GetLane(hn::SumOfLanes(df, acc)) + macc;
}

// Q6_K: 6-bit q - 32 with one int8 scale per 16 elements. The four values sharing a (ql, qh) byte
// position are 32 apart, as in the reference.
float DotQ6K(const uint8_t* row, const float* x, int64_t nb) {
  const DF df;
  const DI di;
  const VI m4 = hn::Set(di, 0x0f), m2 = hn::Set(di, 3), k32 = hn::Set(di, 32);
  VF acc = hn::Zero(df);
  for (int64_t b = 0; b < nb; ++b, row += 210) {
    const uint8_t* ql = row;
    const uint8_t* qh = row + 128;
    const int8_t* sc = reinterpret_cast<const int8_t*>(row + 192);
    const float d = Half(row + 208);
    for (int n = 0; n < 2; ++n, ql += 64, qh += 32, sc += 8, x += 128) {
      for (size_t l = 0; l < 32; l += kN) {
        const size_t is = l / 16;
        const VI a = LoadU8(ql + l), c = LoadU8(ql + 32 + l), h = LoadU8(qh + l);
        const VI q1 = hn::Sub(hn::Or(hn::And(a, m4), hn::ShiftLeft<4>(hn::And(h, m2))), k32);
        const VI q2 =
            hn::Sub(hn::Or(hn::And(c, m4), hn::ShiftLeft<4>(hn::And(hn::ShiftRight<2>(h), m2))), k32);
        const VI q3 =
            hn::Sub(hn::Or(hn::ShiftRight<4>(a), hn::ShiftLeft<4>(hn::And(hn::ShiftRight<4>(h), m2))), k32);
        const VI q4 = hn::Sub(hn::Or(hn::ShiftRight<4>(c), hn::ShiftLeft<4>(hn::ShiftRight<6>(h))), k32);
        acc = hn::MulAdd(hn::Mul(ToF(q1), hn::LoadU(df, x + l)), hn::Set(df, d * sc[is]), acc);
        acc = hn::MulAdd(hn::Mul(ToF(q2), hn::LoadU(df, x + 32 + l)), hn::Set(df, d * sc[is + 2]), acc);
        acc = hn::MulAdd(hn::Mul(ToF(q3), hn::LoadU(df, x + 64 + l)), hn::Set(df, d * sc[is + 4]), acc);
        acc = hn::MulAdd(hn::Mul(ToF(q4), hn::LoadU(df, x + 96 + l)), hn::Set(df, d * sc[is + 6]), acc);
      }
    }
  }
  return hn::GetLane(hn::SumOfLanes(df, acc));
}

// Unquantized rows: any length (no block structure), scalar tail.
template <TensorType kType>
HWY_INLINE VF LoadPlain(const uint8_t* row, int64_t i) {
  const DF df;
  if constexpr (kType == TensorType::F32) {
    return hn::LoadU(df, reinterpret_cast<const float*>(row) + i);
  } else if constexpr (kType == TensorType::F16) {
    return hn::PromoteTo(
        df, hn::LoadU(hn::Rebind<hwy::float16_t, DF>(), reinterpret_cast<const hwy::float16_t*>(row) + i));
  } else {
    const hn::RebindToUnsigned<DF> du;
    const auto h = hn::LoadU(hn::Rebind<uint16_t, DF>(), reinterpret_cast<const uint16_t*>(row) + i);
    return hn::BitCast(df, hn::ShiftLeft<16>(hn::PromoteTo(du, h)));
  }
}
template <TensorType kType>
float LoadPlainScalar(const uint8_t* row, int64_t i) {
  if constexpr (kType == TensorType::F32) {
    float f;
    std::memcpy(&f, row + 4 * i, 4);
    return f;
  } else {
    uint16_t h;
    std::memcpy(&h, row + 2 * i, 2);
    return kType == TensorType::F16 ? fp16_to_float(h) : bf16_to_float(h);
  }
}

template <TensorType kType>
float DotPlain(const uint8_t* row, const float* x, int64_t n) {
  const DF df;
  VF acc0 = hn::Zero(df), acc1 = hn::Zero(df);
  int64_t i = 0;
  for (; i + 2 * static_cast<int64_t>(kN) <= n; i += 2 * kN) {
    acc0 = hn::MulAdd(LoadPlain<kType>(row, i), hn::LoadU(df, x + i), acc0);
    acc1 = hn::MulAdd(LoadPlain<kType>(row, i + kN), hn::LoadU(df, x + i + kN), acc1);
  }
  float s = hn::GetLane(hn::SumOfLanes(df, hn::Add(acc0, acc1)));
  for (; i < n; ++i) s += LoadPlainScalar<kType>(row, i) * x[i];
  return s;
}

float DotRow(TensorType type, const uint8_t* row, const float* x, const float* sx, int64_t n) {
  switch (type) {
    case TensorType::F32:
      return DotPlain<TensorType::F32>(row, x, n);
    case TensorType::F16:
      return DotPlain<TensorType::F16>(row, x, n);
    case TensorType::BF16:
      return DotPlain<TensorType::BF16>(row, x, n);
    case TensorType::Q4_0:
    case TensorType::Q4_1:
    case TensorType::Q8_0:
      break;  // BlockRowsT, below
    case TensorType::Q4_K:
      return DotQ4K(row, x, sx, n / 256);
    case TensorType::Q6_K:
      return DotQ6K(row, x, n / 256);
    case TensorType::Q5_0:
    case TensorType::Q5_1:
    case TensorType::IQ4_NL:
    case TensorType::Q2_K:
    case TensorType::Q3_K:
    case TensorType::Q5_K:
    case TensorType::IQ4_XS:
      break;  // BufferedRows, below
  }
  return 0.0f;
}

void BufferedRows(const WeightView& w, const float* x, float* y, int64_t n_tokens, int64_t r0, int64_t r1);

// Q4_0 / Q4_1 / Q8_0 rows [r0, r1) for every token, up to 4 tokens per pass over a row: the unpacked
// block is reused from registers for each token.
template <TensorType kType>
void BlockRowsT(const WeightView& w, const float* x, const float* sx, int64_t n_sx, float* y,
                int64_t n_tokens, int64_t r0, int64_t r1) {
  const int64_t nb = w.cols / 32;
#if HWY_ARCH_X86 && HWY_TARGET <= HWY_AVX3
  constexpr bool kLut = kType != TensorType::Q8_0;
  constexpr int64_t kRows = kLut ? 2 : 1;
#else
  constexpr int64_t kRows = 1;
#endif
  for (int64_t r = r0; r < r1; r += kRows) {
    const int64_t nr = std::min(kRows, r1 - r);
    const uint8_t* rows[2] = {w.data + r * static_cast<int64_t>(w.row_bytes),
                              w.data + (r + nr - 1) * static_cast<int64_t>(w.row_bytes)};
    for (int64_t t0 = 0; t0 < n_tokens; t0 += 4) {
      const int64_t nt = std::min<int64_t>(4, n_tokens - t0);
      const float* xs[4];
      const float* sxs[4];
      float out[8];
      for (int64_t t = 0; t < 4; ++t) {
        const int64_t tt = t0 + std::min(t, nt - 1);
        xs[t] = x + tt * w.cols;
        sxs[t] = sx + tt * n_sx;
      }
#if HWY_ARCH_X86 && HWY_TARGET <= HWY_AVX3
      if constexpr (kLut) {
        constexpr bool q40 = kType == TensorType::Q4_0;
        using Fn = void (*)(const uint8_t* const*, const float* const*, int64_t, float*);
        static constexpr Fn kFns[2][4] = {
            {DotQ4LutT<q40, 1, 1>, DotQ4LutT<q40, 1, 2>, DotQ4LutT<q40, 1, 3>, DotQ4LutT<q40, 1, 4>},
            {DotQ4LutT<q40, 2, 1>, DotQ4LutT<q40, 2, 2>, DotQ4LutT<q40, 2, 3>, DotQ4LutT<q40, 2, 4>}};
        kFns[nr - 1][nt - 1](rows, xs, nb, out);
        for (int64_t i = 0; i < nr; ++i)
          for (int64_t t = 0; t < nt; ++t) y[(t0 + t) * w.rows + r + i] = out[i * nt + t];
        continue;
      }
#endif
      using Fn = void (*)(const uint8_t*, const float* const*, const float* const*, int64_t, float*);
      static constexpr Fn kFns[4] = {DotBlocksT<kType, 1>, DotBlocksT<kType, 2>, DotBlocksT<kType, 3>,
                                     DotBlocksT<kType, 4>};
      kFns[nt - 1](rows[0], xs, sxs, nb, out);
      for (int64_t t = 0; t < nt; ++t) y[(t0 + t) * w.rows + r] = out[t];
    }
  }
}

// Rows [r0, r1) for every token; sx holds each token's block sums (stride n_sx).
void MatvecRows(const WeightView& w, const float* x, const float* sx, int64_t n_sx, float* y,
                int64_t n_tokens, int64_t r0, int64_t r1) {
  switch (w.type) {
    case TensorType::Q4_0:
      return BlockRowsT<TensorType::Q4_0>(w, x, sx, n_sx, y, n_tokens, r0, r1);
    case TensorType::Q4_1:
      return BlockRowsT<TensorType::Q4_1>(w, x, sx, n_sx, y, n_tokens, r0, r1);
    case TensorType::Q8_0:
      return BlockRowsT<TensorType::Q8_0>(w, x, sx, n_sx, y, n_tokens, r0, r1);
    case TensorType::Q5_0:
    case TensorType::Q5_1:
    case TensorType::IQ4_NL:
    case TensorType::Q2_K:
    case TensorType::Q3_K:
    case TensorType::Q5_K:
    case TensorType::IQ4_XS:
      return BufferedRows(w, x, y, n_tokens, r0, r1);
    default:
      break;
  }
  for (int64_t r = r0; r < r1; ++r) {
    const uint8_t* row = w.data + r * static_cast<int64_t>(w.row_bytes);
    for (int64_t t = 0; t < n_tokens; ++t)
      y[t * w.rows + r] = DotRow(w.type, row, x + t * w.cols, sx + t * n_sx, w.cols);
  }
}

// ---------------------------------------------------------------------------------------------------
// int8-activation dot products (ActQuant::Q8) for Q4_0, Q4_1, Q8_0. Activations: per 32 elements a
// float scale xd and int8 values xq (|xq| <= 127), plus sx = xd * sum(xq) for the Q4 offset terms.

#if HWY_ARCH_X86 && HWY_TARGET <= HWY_AVX2
// Per 32-element block, one 256-bit lane set: 8 int32 partial sums of u8 * s8 products.
#if HWY_TARGET == HWY_AVX3_DL
// Highway 1.0.3's AVX3_DL target enables "avxvnni", so GCC would emit the VEX (AVX-VNNI) form of a
// 256-bit vpdpbusd, which Zen 4 lacks; "no-avxvnni" forces the EVEX (AVX512-VNNI) encoding.
#define KVD_Q8_ATTR __attribute__((target("no-avxvnni,avx512vnni,avx512vl,avx512bw")))
#define KVD_DPBUSD(u8, s8) _mm256_dpbusd_epi32(_mm256_setzero_si256(), u8, s8)
#else
#define KVD_Q8_ATTR
#define KVD_DPBUSD(u8, s8) _mm256_madd_epi16(_mm256_maddubs_epi16(u8, s8), _mm256_set1_epi16(1))
#endif

template <TensorType kType>
KVD_Q8_ATTR float DotRowQ8(const uint8_t* row, const int8_t* xq, const float* xd, const float* sx,
                           int64_t nb) {
  constexpr int64_t kBytes = kType == TensorType::Q4_0 ? 18 : kType == TensorType::Q4_1 ? 20 : 34;
  // Two sets of accumulators (even / odd blocks) so neither the vector nor the scalar FMA chain limits
  // the loop. (No lambda here: it would not inherit this function's target attribute.)
  __m256 acc[2] = {_mm256_setzero_ps(), _mm256_setzero_ps()};
  float macc[2] = {0.0f, 0.0f};
  const __m256i mask = _mm256_set1_epi8(0x0f);
  for (int64_t b0 = 0; b0 < nb; b0 += 2) {
#pragma GCC unroll 2
    for (int64_t h = 0; h < 2; ++h) {
      const int64_t b = b0 + h;
      if (b >= nb) break;
      const uint8_t* blk = row + b * kBytes;
      uint16_t dh;
      std::memcpy(&dh, blk, 2);
      const float d = _cvtsh_ss(dh);
      const __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq + b * 32));
      __m256i dot;
      if constexpr (kType == TensorType::Q8_0) {
        // u8 x s8 only: move the weight's sign onto the activation.
        const __m256i wv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + 2));
        dot = KVD_DPBUSD(_mm256_sign_epi8(wv, wv), _mm256_sign_epi8(xv, wv));
      } else {
        const __m128i t = _mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + kBytes - 16));
        const __m256i q = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(t, 4), t), mask);
        dot = KVD_DPBUSD(q, xv);
        if constexpr (kType == TensorType::Q4_0) {
          macc[h] -= 8.0f * d * sx[b];
        } else {
          uint16_t mh;
          std::memcpy(&mh, blk + 2, 2);
          macc[h] += _cvtsh_ss(mh) * sx[b];
        }
      }
      acc[h] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), _mm256_set1_ps(d * xd[b]), acc[h]);
    }
  }
  const __m256 a = _mm256_add_ps(acc[0], acc[1]);
  __m128 v = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
  v = _mm_add_ps(v, _mm_movehl_ps(v, v));
  v = _mm_add_ss(v, _mm_movehdup_ps(v));
  return _mm_cvtss_f32(v) + (macc[0] + macc[1]);
}
#undef KVD_DPBUSD
#else
template <TensorType kType>
float DotRowQ8(const uint8_t* row, const int8_t* xq, const float* xd, const float* sx, int64_t nb) {
  constexpr size_t kBytes = kType == TensorType::Q4_0 ? 18 : kType == TensorType::Q4_1 ? 20 : 34;
  float acc = 0.0f;
  for (int64_t b = 0; b < nb; ++b, row += kBytes, xq += 32) {
    const float d = Half(row);
    int32_t dot = 0;
    if constexpr (kType == TensorType::Q8_0) {
      const int8_t* q = reinterpret_cast<const int8_t*>(row + 2);
      for (int j = 0; j < 32; ++j) dot += q[j] * xq[j];
    } else {
      const uint8_t* q = row + (kType == TensorType::Q4_0 ? 2 : 4);
      for (int j = 0; j < 16; ++j) dot += (q[j] & 0x0f) * xq[j] + (q[j] >> 4) * xq[j + 16];
      acc += (kType == TensorType::Q4_0 ? -8.0f * d : Half(row + 2)) * sx[b];
    }
    acc += d * xd[b] * static_cast<float>(dot);
  }
  return acc;
}
#define KVD_Q8_ATTR
#endif

void MatvecRowsQ8(const WeightView& w, const int8_t* xq, const float* xd, const float* sx, float* y,
                  int64_t n_tokens, int64_t r0, int64_t r1) {
  const int64_t nb = w.cols / 32;
  for (int64_t r = r0; r < r1; ++r) {
    const uint8_t* row = w.data + r * static_cast<int64_t>(w.row_bytes);
    for (int64_t t = 0; t < n_tokens; ++t) {
      const int8_t* q = xq + t * w.cols;
      const float* d = xd + t * nb;
      const float* s = sx + t * nb;
      float v = 0.0f;
      switch (w.type) {
        case TensorType::Q4_0:
          v = DotRowQ8<TensorType::Q4_0>(row, q, d, s, nb);
          break;
        case TensorType::Q4_1:
          v = DotRowQ8<TensorType::Q4_1>(row, q, d, s, nb);
          break;
        case TensorType::Q8_0:
          v = DotRowQ8<TensorType::Q8_0>(row, q, d, s, nb);
          break;
        default:
          KVD_ASSERT(false);
      }
      y[t * w.rows + r] = v;
    }
  }
}
#undef KVD_Q8_ATTR

// ---------------------------------------------------------------------------------------------------
// SIMD dequantization of n elements (a whole number of blocks) of one row, for the GEMM's weight tile.

template <bool kQ40>
void DequantQ4(const uint8_t* src, float* dst, int64_t nb) {
  const DF df;
  const VI mask = hn::Set(DI(), 0x0f);
  for (int64_t b = 0; b < nb; ++b, src += kQ40 ? 18 : 20, dst += 32) {
    const float d = Half(src);
    const VF vd = hn::Set(df, d), vm = hn::Set(df, kQ40 ? -8.0f * d : Half(src + 2));
    const uint8_t* qs = src + (kQ40 ? 2 : 4);
    for (size_t j = 0; j < 16; j += kN) {
      const VI q = LoadU8(qs + j);
      hn::StoreU(hn::MulAdd(ToF(hn::And(q, mask)), vd, vm), df, dst + j);
      hn::StoreU(hn::MulAdd(ToF(hn::ShiftRight<4>(q)), vd, vm), df, dst + 16 + j);
    }
  }
}

void DequantQ8_0(const uint8_t* src, float* dst, int64_t nb) {
  const DF df;
  for (int64_t b = 0; b < nb; ++b, src += 34, dst += 32) {
    const VF vd = hn::Set(df, Half(src));
    for (size_t j = 0; j < 32; j += kN) hn::StoreU(hn::Mul(ToF(LoadI8(src + 2 + j)), vd), df, dst + j);
  }
}

void DequantQ4K(const uint8_t* src, float* dst, int64_t nb) {
  const DF df;
  const VI mask = hn::Set(DI(), 0x0f);
  for (int64_t b = 0; b < nb; ++b, src += 144) {
    const float d = Half(src), dmin = Half(src + 2);
    const uint8_t* q = src + 16;
    for (int c = 0; c < 4; ++c, q += 32, dst += 64) {
      int sc1, mn1, sc2, mn2;
      Q4KScaleMin(2 * c, src + 4, &sc1, &mn1);
      Q4KScaleMin(2 * c + 1, src + 4, &sc2, &mn2);
      const VF d1 = hn::Set(df, d * static_cast<float>(sc1)),
               m1 = hn::Set(df, dmin * static_cast<float>(mn1));
      const VF d2 = hn::Set(df, d * static_cast<float>(sc2)),
               m2 = hn::Set(df, dmin * static_cast<float>(mn2));
      for (size_t j = 0; j < 32; j += kN) {
        const VI v = LoadU8(q + j);
        hn::StoreU(hn::MulSub(ToF(hn::And(v, mask)), d1, m1), df, dst + j);
        hn::StoreU(hn::MulSub(ToF(hn::ShiftRight<4>(v)), d2, m2), df, dst + 32 + j);
      }
    }
  }
}

void DequantQ6K(const uint8_t* src, float* dst, int64_t nb) {
  const DF df;
  const DI di;
  const VI m4 = hn::Set(di, 0x0f), m2 = hn::Set(di, 3), k32 = hn::Set(di, 32);
  for (int64_t b = 0; b < nb; ++b, src += 210) {
    const uint8_t* ql = src;
    const uint8_t* qh = src + 128;
    const int8_t* sc = reinterpret_cast<const int8_t*>(src + 192);
    const float d = Half(src + 208);
    for (int n = 0; n < 2; ++n, ql += 64, qh += 32, sc += 8, dst += 128) {
      for (size_t l = 0; l < 32; l += kN) {
        const size_t is = l / 16;
        const VI a = LoadU8(ql + l), c = LoadU8(ql + 32 + l), h = LoadU8(qh + l);
        const VI q1 = hn::Sub(hn::Or(hn::And(a, m4), hn::ShiftLeft<4>(hn::And(h, m2))), k32);
        const VI q2 =
            hn::Sub(hn::Or(hn::And(c, m4), hn::ShiftLeft<4>(hn::And(hn::ShiftRight<2>(h), m2))), k32);
        const VI q3 =
            hn::Sub(hn::Or(hn::ShiftRight<4>(a), hn::ShiftLeft<4>(hn::And(hn::ShiftRight<4>(h), m2))), k32);
        const VI q4 = hn::Sub(hn::Or(hn::ShiftRight<4>(c), hn::ShiftLeft<4>(hn::ShiftRight<6>(h))), k32);
        hn::StoreU(hn::Mul(hn::Set(df, d * sc[is]), ToF(q1)), df, dst + l);
        hn::StoreU(hn::Mul(hn::Set(df, d * sc[is + 2]), ToF(q2)), df, dst + 32 + l);
        hn::StoreU(hn::Mul(hn::Set(df, d * sc[is + 4]), ToF(q3)), df, dst + 64 + l);
        hn::StoreU(hn::Mul(hn::Set(df, d * sc[is + 6]), ToF(q4)), df, dst + 96 + l);
      }
    }
  }
}

// Q5_0 / Q5_1: as Q4_0 / Q4_1, with bit 4 of element j at bit j of the little-endian 32-bit qh.
template <bool kQ50>
void DequantQ5(const uint8_t* src, float* dst, int64_t nb) {
  const DF df;
  const DI di;
  const hn::RebindToUnsigned<DF> du;
  const VI mask = hn::Set(di, 0x0f), k16 = hn::Set(di, 16);
  const auto one = hn::Set(du, 1u);
  for (int64_t b = 0; b < nb; ++b, src += kQ50 ? 22 : 24, dst += 32) {
    const VF vd = hn::Set(df, Half(src));
    const VF vm = hn::Set(df, kQ50 ? 0.0f : Half(src + 2));
    uint32_t qh;
    std::memcpy(&qh, src + (kQ50 ? 2 : 4), 4);
    const auto vqh = hn::Set(du, qh);
    const uint8_t* qs = src + (kQ50 ? 6 : 8);
    for (size_t j = 0; j < 16; j += kN) {
      const VI q = LoadU8(qs + j);
      const auto sh = hn::Iota(du, static_cast<uint32_t>(j));
      const VI h_lo = hn::BitCast(di, hn::ShiftLeft<4>(hn::And(vqh >> sh, one)));
      const VI h_hi = hn::BitCast(di, hn::ShiftLeft<4>(hn::And(vqh >> hn::Add(sh, hn::Set(du, 16u)), one)));
      const VI lo = hn::Or(hn::And(q, mask), h_lo), hi = hn::Or(hn::ShiftRight<4>(q), h_hi);
      if constexpr (kQ50) {
        hn::StoreU(hn::Mul(ToF(hn::Sub(lo, k16)), vd), df, dst + j);
        hn::StoreU(hn::Mul(ToF(hn::Sub(hi, k16)), vd), df, dst + 16 + j);
      } else {
        hn::StoreU(hn::MulAdd(ToF(lo), vd, vm), df, dst + j);
        hn::StoreU(hn::MulAdd(ToF(hi), vd, vm), df, dst + 16 + j);
      }
    }
  }
}

// Q2_K: element 128 h + 32 s + l is bits 2s..2s+1 of qs[32 h + l]; scale and min per 16 elements.
void DequantQ2K(const uint8_t* src, float* dst, int64_t nb) {
  const DF df;
  const VI m3 = hn::Set(DI(), 3);
  for (int64_t b = 0; b < nb; ++b, src += 84, dst += 256) {
    const uint8_t* sc = src;
    const float d = Half(src + 80), dmin = Half(src + 82);
    for (int h = 0; h < 2; ++h)
      for (int s = 0; s < 4; ++s)
        for (size_t l = 0; l < 32; l += kN) {
          const size_t i = 128 * h + 32 * s + l;
          const VI q = hn::And(hn::ShiftRightSame(LoadU8(src + 16 + 32 * h + l), 2 * s), m3);
          const VF dl = hn::Set(df, d * static_cast<float>(sc[i / 16] & 0x0f));
          const VF ml = hn::Set(df, dmin * static_cast<float>(sc[i / 16] >> 4));
          hn::StoreU(hn::MulSub(ToF(q), dl, ml), df, dst + i);
        }
  }
}

HWY_INLINE int Q3KScale(int i, const uint8_t* sc) {
  const int lo = i < 8 ? sc[i] & 0x0f : sc[i - 8] >> 4;
  const int hi = (sc[8 + i % 4] >> (2 * (i / 4))) & 3;
  return (lo | (hi << 4)) - 32;
}

// Q3_K: 2 low bits as Q2_K, the third from bit (i / 32) of hmask[l] (clear: subtract 4).
void DequantQ3K(const uint8_t* src, float* dst, int64_t nb) {
  const DF df;
  const DI di;
  const VI m3 = hn::Set(di, 3), one = hn::Set(di, 1);
  for (int64_t b = 0; b < nb; ++b, src += 110, dst += 256) {
    const uint8_t* hm = src;
    const uint8_t* sc = src + 96;
    const float d = Half(src + 108);
    for (int h = 0; h < 2; ++h)
      for (int s = 0; s < 4; ++s)
        for (size_t l = 0; l < 32; l += kN) {
          const size_t i = 128 * h + 32 * s + l;
          const VI low = hn::And(hn::ShiftRightSame(LoadU8(src + 32 + 32 * h + l), 2 * s), m3);
          const VI bit = hn::And(hn::ShiftRightSame(LoadU8(hm + l), 4 * h + s), one);
          const VI q = hn::Sub(low, hn::ShiftLeft<2>(hn::Xor(bit, one)));
          const VF dl = hn::Set(df, d * static_cast<float>(Q3KScale(static_cast<int>(i / 16), sc)));
          hn::StoreU(hn::Mul(ToF(q), dl), df, dst + i);
        }
  }
}

// Q5_K: Q4_K's nibbles and scales, bit 4 of sub-block j's element l at bit j of qh[l].
void DequantQ5K(const uint8_t* src, float* dst, int64_t nb) {
  const DF df;
  const DI di;
  const VI mask = hn::Set(di, 0x0f), one = hn::Set(di, 1);
  for (int64_t b = 0; b < nb; ++b, src += 176, dst += 256) {
    const float d = Half(src), dmin = Half(src + 2);
    const uint8_t* qh = src + 16;
    for (int j = 0; j < 8; ++j) {
      int sc, mn;
      Q4KScaleMin(j, src + 4, &sc, &mn);
      const VF dl = hn::Set(df, d * static_cast<float>(sc)), ml = hn::Set(df, dmin * static_cast<float>(mn));
      const uint8_t* qj = src + 48 + 32 * (j / 2);
      for (size_t l = 0; l < 32; l += kN) {
        const VI lo = hn::And(hn::ShiftRightSame(LoadU8(qj + l), 4 * (j % 2)), mask);
        const VI hi = hn::ShiftLeft<4>(hn::And(hn::ShiftRightSame(LoadU8(qh + l), j), one));
        hn::StoreU(hn::MulSub(ToF(hn::Or(lo, hi)), dl, ml), df, dst + 32 * j + l);
      }
    }
  }
}

// IQ4_NL / IQ4_XS: the grid values of 16 bytes of nibbles (low nibbles, then high) as 32 int8, by byte
// shuffle (pshufb / tbl) of the 16-entry table.
alignas(16) constexpr int8_t kIq4Grid[16] = {-127, -104, -83, -65, -49, -35, -22, -10,
                                             1,    13,   25,  38,  53,  69,  89,  113};
HWY_INLINE void Iq4Lookup(const uint8_t* qs, int8_t* out) {
#if HWY_TARGET == HWY_SCALAR
  for (int j = 0; j < 16; ++j) {
    out[j] = kIq4Grid[qs[j] & 0x0f];
    out[j + 16] = kIq4Grid[qs[j] >> 4];
  }
#else
  const hn::Full128<uint8_t> d8;
  const hn::Full128<int8_t> di8;
  const auto table = hn::Load(di8, kIq4Grid);
  const auto q = hn::LoadU(d8, qs);
  hn::StoreU(hn::TableLookupBytes(table, hn::BitCast(di8, hn::And(q, hn::Set(d8, 0x0f)))), di8, out);
  hn::StoreU(hn::TableLookupBytes(table, hn::BitCast(di8, hn::ShiftRight<4>(q))), di8, out + 16);
#endif
}

void DequantIQ4NL(const uint8_t* src, float* dst, int64_t nb) {
  const DF df;
  for (int64_t b = 0; b < nb; ++b, src += 18, dst += 32) {
    HWY_ALIGN int8_t v[32];
    Iq4Lookup(src + 2, v);
    const VF vd = hn::Set(df, Half(src));
    for (size_t j = 0; j < 32; j += kN)
      hn::StoreU(hn::Mul(ToF(LoadI8(reinterpret_cast<const uint8_t*>(v) + j)), vd), df, dst + j);
  }
}

void DequantIQ4XS(const uint8_t* src, float* dst, int64_t nb) {
  const DF df;
  for (int64_t b = 0; b < nb; ++b, src += 136) {
    const float d = Half(src);
    uint16_t sh;
    std::memcpy(&sh, src + 2, 2);
    for (int j = 0; j < 8; ++j, dst += 32) {
      const int ls = ((src[4 + j / 2] >> (4 * (j % 2))) & 0x0f) | (((sh >> (2 * j)) & 3) << 4);
      const VF dl = hn::Set(df, d * static_cast<float>(ls - 32));
      HWY_ALIGN int8_t v[32];
      Iq4Lookup(src + 8 + 16 * j, v);
      for (size_t l = 0; l < 32; l += kN)
        hn::StoreU(hn::Mul(ToF(LoadI8(reinterpret_cast<const uint8_t*>(v) + l)), dl), df, dst + l);
    }
  }
}

template <TensorType kType>
void DequantPlain(const uint8_t* src, float* dst, int64_t n) {
  const DF df;
  int64_t i = 0;
  for (; i + static_cast<int64_t>(kN) <= n; i += kN) hn::StoreU(LoadPlain<kType>(src, i), df, dst + i);
  for (; i < n; ++i) dst[i] = LoadPlainScalar<kType>(src, i);
}

void DequantRow(TensorType type, const uint8_t* src, float* dst, int64_t n) {
  switch (type) {
    case TensorType::F32:
      std::memcpy(dst, src, static_cast<size_t>(n) * 4);
      break;
    case TensorType::F16:
      DequantPlain<TensorType::F16>(src, dst, n);
      break;
    case TensorType::BF16:
      DequantPlain<TensorType::BF16>(src, dst, n);
      break;
    case TensorType::Q4_0:
      DequantQ4<true>(src, dst, n / 32);
      break;
    case TensorType::Q4_1:
      DequantQ4<false>(src, dst, n / 32);
      break;
    case TensorType::Q8_0:
      DequantQ8_0(src, dst, n / 32);
      break;
    case TensorType::Q4_K:
      DequantQ4K(src, dst, n / 256);
      break;
    case TensorType::Q6_K:
      DequantQ6K(src, dst, n / 256);
      break;
    case TensorType::Q5_0:
      DequantQ5<true>(src, dst, n / 32);
      break;
    case TensorType::Q5_1:
      DequantQ5<false>(src, dst, n / 32);
      break;
    case TensorType::IQ4_NL:
      DequantIQ4NL(src, dst, n / 32);
      break;
    case TensorType::Q2_K:
      DequantQ2K(src, dst, n / 256);
      break;
    case TensorType::Q3_K:
      DequantQ3K(src, dst, n / 256);
      break;
    case TensorType::Q5_K:
      DequantQ5K(src, dst, n / 256);
      break;
    case TensorType::IQ4_XS:
      DequantIQ4XS(src, dst, n / 256);
      break;
  }
}

// ---------------------------------------------------------------------------------------------------
// Decode path of the types without a fused dot (Q5_0, Q5_1, IQ4_NL, Q2_K, Q3_K, Q5_K, IQ4_XS): each
// 256-element chunk of a row is dequantized (SIMD, as above) into an L1 buffer once and dotted with up to
// 4 tokens from there; two accumulators per token.
template <size_t T>
void DotBufferedT(TensorType type, size_t elems, size_t bytes, const uint8_t* row, const float* const* xs,
                  int64_t n, float* out) {
  const DF df;
  VF acc0[T], acc1[T];
#pragma GCC unroll 4
  for (size_t t = 0; t < T; ++t) acc0[t] = acc1[t] = hn::Zero(df);
  HWY_ALIGN float buf[256];
  for (int64_t c0 = 0; c0 < n; c0 += 256) {
    const int64_t len = std::min<int64_t>(256, n - c0);  // a multiple of 32
    DequantRow(type, row + static_cast<size_t>(c0) / elems * bytes, buf, len);
    for (int64_t j = 0; j < len; j += 2 * static_cast<int64_t>(kN)) {
      const VF w0 = hn::Load(df, buf + j), w1 = hn::Load(df, buf + j + kN);
#pragma GCC unroll 4
      for (size_t t = 0; t < T; ++t) {
        acc0[t] = hn::MulAdd(w0, hn::LoadU(df, xs[t] + c0 + j), acc0[t]);
        acc1[t] = hn::MulAdd(w1, hn::LoadU(df, xs[t] + c0 + j + kN), acc1[t]);
      }
    }
  }
#pragma GCC unroll 4
  for (size_t t = 0; t < T; ++t) out[t] = hn::GetLane(hn::SumOfLanes(df, hn::Add(acc0[t], acc1[t])));
}

void BufferedRows(const WeightView& w, const float* x, float* y, int64_t n_tokens, int64_t r0, int64_t r1) {
  const gguf::BlockInfo bi = gguf::block_info(w.type);
  using Fn = void (*)(TensorType, size_t, size_t, const uint8_t*, const float* const*, int64_t, float*);
  static constexpr Fn kFns[4] = {DotBufferedT<1>, DotBufferedT<2>, DotBufferedT<3>, DotBufferedT<4>};
  for (int64_t r = r0; r < r1; ++r) {
    const uint8_t* row = w.data + r * static_cast<int64_t>(w.row_bytes);
    for (int64_t t0 = 0; t0 < n_tokens; t0 += 4) {
      const int64_t nt = std::min<int64_t>(4, n_tokens - t0);
      const float* xs[4];
      for (int64_t t = 0; t < nt; ++t) xs[t] = x + (t0 + t) * w.cols;
      float out[4];
      kFns[nt - 1](w.type, bi.elems, bi.bytes, row, xs, w.cols, out);
      for (int64_t t = 0; t < nt; ++t) y[(t0 + t) * w.rows + r] = out[t];
    }
  }
}

// ---------------------------------------------------------------------------------------------------
// GEMM for many tokens. X is packed once per call, transposed into token tiles of kNR tokens
// (xp[tile][k][kNR], zero-padded), so a micro-kernel step loads NV vectors of tokens and broadcasts one
// dequantized weight per row: acc[row m][tokens] += w[m][k] * x[tokens][k]. Weight rows are dequantized
// kMC at a time into a per-thread tile (L2) that every token tile streams past; k is split into blocks
// of kKC so the token tile's slice (kKC x kNR floats) stays in L1 while all kMC rows use it.

using DV = hn::ScalableTag<float>;
constexpr size_t kNF = hn::MaxLanes(DV());
#if HWY_ARCH_X86 && HWY_TARGET <= HWY_AVX3
constexpr size_t kMR = 8, kNV = 3;  // 24 of 32 zmm registers accumulate
#elif HWY_ARCH_X86 && HWY_TARGET <= HWY_AVX2
constexpr size_t kMR = 6, kNV = 2;  // 12 of 16 ymm registers
#else
constexpr size_t kMR = 4, kNV = 2;
#endif
constexpr size_t kNR = kNV * kNF;
constexpr int64_t kMC = 64, kKC = 128;

size_t GemmTokenTile() { return kNR; }

// Packs token tiles [tile0, tile1) of x (n_tokens x k) into xp.
void PackX(const float* x, int64_t n_tokens, int64_t k, float* xp, int64_t tile0, int64_t tile1) {
  constexpr int64_t nr = static_cast<int64_t>(kNR);
  for (int64_t tile = tile0; tile < tile1; ++tile) {
    float* dst = xp + tile * k * nr;
    const int64_t t0 = tile * nr, nt = std::min(nr, n_tokens - t0);
    for (int64_t c = 0; c < k; ++c) {
      for (int64_t j = 0; j < nt; ++j) dst[c * nr + j] = x[(t0 + j) * k + c];
      for (int64_t j = nt; j < nr; ++j) dst[c * nr + j] = 0.0f;
    }
  }
}

// c[m][j] (+)= sum_{i < kc} wt[m * ldw + i] * xp[i * kNR + j] for m < MR rows, j < NV * kNF tokens.
template <size_t MR, size_t NV>
HWY_INLINE void MicroKernel(const float* HWY_RESTRICT wt, int64_t ldw, const float* HWY_RESTRICT xp,
                            int64_t kc, float* HWY_RESTRICT c, bool accumulate) {
  const DV d;
  // Fully unrolled so the accumulators live in registers (GCC keeps arrays in memory otherwise).
  hn::Vec<DV> acc[MR][NV];
#pragma GCC unroll 16
  for (size_t m = 0; m < MR; ++m)
#pragma GCC unroll 4
    for (size_t v = 0; v < NV; ++v) acc[m][v] = accumulate ? hn::Load(d, c + m * kNR + v * kNF) : hn::Zero(d);
  for (int64_t i = 0; i < kc; ++i, xp += kNR) {
    hn::Vec<DV> xv[NV];
#pragma GCC unroll 4
    for (size_t v = 0; v < NV; ++v) xv[v] = hn::Load(d, xp + v * kNF);
#pragma GCC unroll 16
    for (size_t m = 0; m < MR; ++m) {
      const auto a = hn::Set(d, wt[m * ldw + i]);
#pragma GCC unroll 4
      for (size_t v = 0; v < NV; ++v) acc[m][v] = hn::MulAdd(a, xv[v], acc[m][v]);
    }
  }
#pragma GCC unroll 16
  for (size_t m = 0; m < MR; ++m)
#pragma GCC unroll 4
    for (size_t v = 0; v < NV; ++v) hn::Store(acc[m][v], d, c + m * kNR + v * kNF);
}

// Picks the kernel for mr rows (<= kMR) and nv token vectors (<= kNV) at run time.
template <size_t MR, size_t NV>
void MicroDispatch(size_t mr, size_t nv, const float* wt, int64_t ldw, const float* xp, int64_t kc, float* c,
                   bool accumulate) {
  if constexpr (NV > 1) {
    if (nv < NV) return MicroDispatch<MR, NV - 1>(mr, nv, wt, ldw, xp, kc, c, accumulate);
  }
  if constexpr (MR > 1) {
    if (mr < MR) return MicroDispatch<MR - 1, NV>(mr, nv, wt, ldw, xp, kc, c, accumulate);
  }
  MicroKernel<MR, NV>(wt, ldw, xp, kc, c, accumulate);
}

// Rows [r0, r1) of y for all tokens, from the packed xp.
void GemmRows(const WeightView& w, const float* xp, float* y, int64_t n_tokens, int64_t r0, int64_t r1) {
  const int64_t k = w.cols;
  thread_local std::vector<float> tile;
  tile.resize(static_cast<size_t>(kMC * k));
  HWY_ALIGN float cbuf[kMC * kNR];
  constexpr int64_t nr = static_cast<int64_t>(kNR);
  const int64_t n_tiles = (n_tokens + nr - 1) / nr;
  for (int64_t p0 = r0; p0 < r1; p0 += kMC) {
    const int64_t mc = std::min(kMC, r1 - p0);
    for (int64_t m = 0; m < mc; ++m)
      DequantRow(w.type, w.data + (p0 + m) * static_cast<int64_t>(w.row_bytes), tile.data() + m * k, k);
    for (int64_t tt = 0; tt < n_tiles; ++tt) {
      const float* xt = xp + tt * k * nr;
      const int64_t t0 = tt * nr, nt = std::min(nr, n_tokens - t0);
      const size_t nv = static_cast<size_t>((nt + kNF - 1) / kNF);  // skip all-padding vectors
      for (int64_t k0 = 0; k0 < k; k0 += kKC) {
        const int64_t kc = std::min(kKC, k - k0);
        for (int64_t m0 = 0; m0 < mc; m0 += kMR) {
          const size_t mr = static_cast<size_t>(std::min<int64_t>(kMR, mc - m0));
          MicroDispatch<kMR, kNV>(mr, nv, tile.data() + m0 * k + k0, k, xt + k0 * nr, kc, cbuf + m0 * nr,
                                  k0 > 0);
        }
      }
      // Token-major so each token's mc outputs are written contiguously.
      for (int64_t j = 0; j < nt; ++j)
        for (int64_t m = 0; m < mc; ++m) y[(t0 + j) * w.rows + p0 + m] = cbuf[m * nr + j];
    }
  }
}

// The name of the target this translation unit was compiled for (what dynamic dispatch picked).
const char* TargetNameHere() { return hwy::TargetName(HWY_TARGET); }

}  // namespace HWY_NAMESPACE
}  // namespace
}  // namespace kvd::cpu
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace kvd::cpu {
namespace {

HWY_EXPORT(MatvecRows);
HWY_EXPORT(MatvecRowsQ8);
HWY_EXPORT(GemmTokenTile);
HWY_EXPORT(PackX);
HWY_EXPORT(GemmRows);
HWY_EXPORT(DequantRow);
HWY_EXPORT(TargetNameHere);

using gguf::TensorType;

bool needs_block_sums(TensorType t) {
  return t == TensorType::Q4_0 || t == TensorType::Q4_1 || t == TensorType::Q4_K;
}

// Per-32 block sums of each token's x (the Q4 offset terms).
void block_sums(const float* x, int64_t n_tokens, int64_t cols, float* sx) {
  const int64_t nb = cols / 32;
  for (int64_t t = 0; t < n_tokens; ++t)
    for (int64_t b = 0; b < nb; ++b) {
      const float* p = x + t * cols + b * 32;
      float s = 0.0f;
      for (int j = 0; j < 32; ++j) s += p[j];
      sx[t * nb + b] = s;
    }
}

}  // namespace

void quantize_act_q8(const float* x, int64_t n, int8_t* xq, float* xd, float* sx) {
  for (int64_t b = 0; b < n / 32; ++b, x += 32, xq += 32) {
    float amax = 0.0f;
    for (int j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(x[j]));
    const float d = amax / 127.0f, inv = amax > 0.0f ? 127.0f / amax : 0.0f;
    int32_t s = 0;
    for (int j = 0; j < 32; ++j) {
      xq[j] = static_cast<int8_t>(std::nearbyint(x[j] * inv));
      s += xq[j];
    }
    xd[b] = d;
    // The sum of the rounded values, not of x: then the Q4 offset term m * sx sees the same rounding as
    // d * sum(q * xq), and the error is sum(w * dx) with w = d q + m small, rather than sum(d q * dx)
    // with d q ~ 8 d large (measured: 2-4x the error with the exact sum).
    sx[b] = d * static_cast<float>(s);
  }
}

void dequantize_row_fast(TensorType type, const uint8_t* src, float* dst, int64_t n) {
  HWY_DYNAMIC_DISPATCH(DequantRow)(type, src, dst, n);
}

void matmul(const WeightView& w, const float* x, float* y, int64_t n_tokens, ThreadPool& pool, ActQuant act) {
  if (n_tokens <= 0 || w.rows <= 0) return;
  const gguf::BlockInfo bi = gguf::block_info(w.type);
  KVD_ASSERT(w.cols % bi.elems == 0);

  if (n_tokens >= kGemmMinTokens) {
    const int64_t nr = static_cast<int64_t>(HWY_DYNAMIC_DISPATCH(GemmTokenTile)());
    const int64_t n_tiles = (n_tokens + nr - 1) / nr;
    // Aligned: the micro-kernel uses aligned vector loads of the packed tiles.
    thread_local hwy::AlignedFreeUniquePtr<float[]> xp;
    thread_local size_t xp_size = 0;
    const size_t need = static_cast<size_t>(n_tiles * nr * w.cols);
    if (xp_size < need) {
      xp = hwy::AllocateAligned<float>(need);
      xp_size = need;
    }
    float* xpp = xp.get();
    pool.parallel_for(n_tiles, [&](int64_t b, int64_t e) {
      HWY_DYNAMIC_DISPATCH(PackX)(x, n_tokens, w.cols, xpp, b, e);
    });
    // Split rows in units of 8 so both threads get equal shares of the model's row counts.
    const int64_t units = (w.rows + 7) / 8;
    pool.parallel_for(units, [&](int64_t b, int64_t e) {
      HWY_DYNAMIC_DISPATCH(GemmRows)(w, xpp, y, n_tokens, b * 8, std::min(w.rows, e * 8));
    });
    return;
  }

  const bool q8 = act == ActQuant::Q8 &&
                  (w.type == TensorType::Q4_0 || w.type == TensorType::Q4_1 || w.type == TensorType::Q8_0);
  const int64_t nb = w.cols / 32;
  thread_local std::vector<float> sx, xd;
  thread_local std::vector<int8_t> xq;
  if (q8) {
    sx.resize(static_cast<size_t>(n_tokens * nb));
    xd.resize(sx.size());
    xq.resize(static_cast<size_t>(n_tokens * w.cols));
    for (int64_t t = 0; t < n_tokens; ++t)
      quantize_act_q8(x + t * w.cols, w.cols, xq.data() + t * w.cols, xd.data() + t * nb, sx.data() + t * nb);
    // Thread-local names inside the lambda would resolve to each worker's own copy: pass pointers.
    const int8_t* xqp = xq.data();
    const float *xdp = xd.data(), *sxp = sx.data();
    pool.parallel_for(w.rows, [&](int64_t r0, int64_t r1) {
      HWY_DYNAMIC_DISPATCH(MatvecRowsQ8)(w, xqp, xdp, sxp, y, n_tokens, r0, r1);
    });
    return;
  }
  const bool sums = needs_block_sums(w.type);
  sx.resize(sums ? static_cast<size_t>(n_tokens * nb) : 1);
  if (sums) block_sums(x, n_tokens, w.cols, sx.data());
  const int64_t n_sx = sums ? nb : 0;
  const float* sxp = sx.data();
  pool.parallel_for(w.rows, [&](int64_t r0, int64_t r1) {
    HWY_DYNAMIC_DISPATCH(MatvecRows)(w, x, sxp, n_sx, y, n_tokens, r0, r1);
  });
}

std::string simd_target() { return HWY_DYNAMIC_DISPATCH(TargetNameHere)(); }

}  // namespace kvd::cpu
#endif  // HWY_ONCE
