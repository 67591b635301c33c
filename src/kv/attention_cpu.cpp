// Fast attention over the mixed-precision KV cache: Highway SIMD with runtime dispatch (this file is
// compiled once per target by foreach_target), work split into fixed key chunks over the threads; the
// scalar loops it replaced stay as detail::attend_scalar (fallback for other shapes, bench baseline).
//
// K and V are never dequantized into a buffer: a group's codes (scale s, minimum m) become c * s + m in
// registers (on AVX-512, a 16-entry table of the group's values indexed by vpermps), feeding the FMAs of
// all the query heads that share the kv head, so each K/V byte is read once per query token and
// q.k = s * sum(q_i c_i) + m * sum(q_i), out += (p * s) * c + p * m come out without a dequantized copy.
// Codes unpack in their packing order (element i in byte i / (8 / b) at bit (i % (8 / b)) * b): the
// query is permuted once per call instead, and V accumulates in that permuted order (one accumulator
// domain per code layout), un-permuted once per (query, kv head).
//
// Keys are cut into fixed chunks of kKeyChunk positions. Within a chunk, keys are sorted by width and
// taken a vector width (16 on AVX-512) at a time: scores (each key's whole K row at once), an online softmax
// step, then the same keys' V rows while they are in L1, the next block's rows prefetched meanwhile. Each
// (query, chunk) keeps its own max, sums and accumulators (flash-decoding style), merged in chunk order. None
// of this depends on the thread count or on the number of query tokens, so the float operations for one
// (query, head) do not either: a decode step (one query) spreads its chunks over all threads and still
// matches a batched call bit for bit.
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "kv/attention_cpu.cpp"
// clang-format off
#include <hwy/foreach_target.h>  // must precede highway.h and the contrib headers
#include <hwy/highway.h>
#include <hwy/cache_control.h>
#include <hwy/contrib/math/math-inl.h>
// clang-format on

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <memory>
#include <utility>
#include <vector>

#include "kv/attention.h"
#include "kv/attention_cpu_internal.h"
#include "kv/kv_quant.h"
#include "kv/kv_rotate.h"
#include "util/error.h"
#include "util/fp16.h"
#include "util/thread_pool.h"

HWY_BEFORE_NAMESPACE();
namespace kvd::cpu::HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;
using detail::ChunkViews;
using detail::Geometry;
using detail::kDomains;
using detail::kKeyChunk;
using detail::kMaxQPerKv;

using DF = hn::ScalableTag<float>;
using DI = hn::RebindToSigned<DF>;
using DU = hn::RebindToUnsigned<DF>;
using D8 = hn::Rebind<uint8_t, DF>;
using DH = hn::Rebind<hwy::float16_t, DF>;
using VF = hn::Vec<DF>;
using VU = hn::Vec<DU>;
constexpr int kN = static_cast<int>(hn::MaxLanes(DF()));
// Query heads per kernel call: their accumulators stay in registers.
constexpr int kMaxTile = kN >= 16 ? 4 : 2;

HWY_INLINE float Half(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
#if HWY_ARCH_X86 && HWY_TARGET <= HWY_AVX2
  return _cvtsh_ss(h);
#else
  return fp16_to_float(h);
#endif
}

HWY_INLINE VF Load16(const uint8_t* p) {
  return hn::PromoteTo(DF(), hn::LoadU(DH(), reinterpret_cast<const hwy::float16_t*>(p)));
}

// Code layout of one b-bit group of G elements (b < 16) at kN lanes; the low plane (lo = 2, 4 or 8 bits,
// kv/kv_layout.h) decides it. Each group yields G / kN vectors.
//  - promote (lo == 8, or at least kN low-plane bytes): kN bytes widen to kN lanes; vector (chunk, sh) holds
//    code sh of each byte: element (chunk * kN + j) * (8 / lo) + sh in lane j.
//  - broadcast (4 or 8 low-plane bytes, fewer than kN): the D = bytes / 4 dwords repeat over the lanes (lane
//    j holds dword j % D) and a per-lane shift picks slot r * (kN / D) + j / D of that dword.
// The high plane (hi = b - lo bits) is read in the same lane order: lane j of vector r takes the hi bits of
// its element from one of at most two 32-bit words of the plane (kHiOk).
template <int BITS, int G>
struct Layout {
  static constexpr int kLo = BITS == 8 ? 8 : BITS >= 4 ? 4 : 2;
  static constexpr int kHi = BITS - kLo;
  static constexpr int kBytes = G * kLo / 8;  // low plane
  static constexpr int kHiBytes = G * kHi / 8;
  static constexpr int kGroupBytes = 4 + G * BITS / 8;
  static constexpr int kVec = G / kN;
  static constexpr bool kPromote = kLo == 8 || kBytes >= kN;
  static constexpr int kD = kBytes / 4;
  // Element (within the group) held by lane j of vector r.
  static constexpr int element(int r, int j) {
    if (kLo == 8) return r * kN + j;
    if (kPromote) {
      constexpr int per = 8 / kLo;
      return ((r / per) * kN + j) * per + r % per;
    }
    return (j % kD) * (32 / kLo) + r * (kN / kD) + j / kD;
  }
  static constexpr bool HiOk() {
    if (kHi == 0) return true;
    if (kHiBytes % 2 != 0 || kHiBytes > 16) return false;
    for (int r = 0; r < kVec; ++r) {
      int w0 = -1, w1 = -1;
      for (int j = 0; j < kN; ++j) {
        const int w = element(r, j) * kHi / 32;
        if (w0 < 0 || w == w0) {
          w0 = w;
        } else if (w1 < 0 || w == w1) {
          w1 = w;
        } else {
          return false;
        }
      }
    }
    return true;
  }
  static constexpr bool kOk =
      kN >= 4 && G % kN == 0 && (kHi == 0 || kHi == 1 || kHi == 2) &&
      (kPromote ? kBytes % kN == 0 : ((kBytes == 4 || kBytes == 8) && kN % kD == 0)) && HiOk();
};

template <int SH>
HWY_INLINE VU ShiftBy(VU v) {
  if constexpr (SH == 0) {
    return v;
  } else {
    return hn::ShiftRight<SH>(v);
  }
}

// Turns the packed groups of one width into values c * s + m, a vector at a time.
template <int BITS, int G>
struct Decoder {
  using L = Layout<BITS, G>;
  static constexpr int kLo = BITS == 16 ? 16 : L::kLo;
  static constexpr int kHi = BITS == 16 ? 0 : L::kHi;
  static constexpr int kV = L::kVec > 0 ? L::kVec : 1;
  VU shifts[kV];
  VU mask;
  VF iota;  // code value per lane index (low bits only for 2-bit tables)
  // High plane: per vector, the per-lane shift within its word, the two words' indexes and which lanes
  // take the second one.
  VU hshift[kV];
  hn::Mask<DU> hsel[kV];
  int hw0[kV] = {}, hw1[kV] = {};
  VU hmask;
  // AVX-512, 1-bit high plane of at most 64 bits whose elements each vector's lanes take in increasing
  // order: pext of the plane by pmask[r] is vector r's lane mask, and the high bit becomes one masked add
  // of 2^lo * s (a third of the vector ops of converting the bit and an FMA; one more rounding, so the
  // sums differ from the previous kernel's in the last bits, within the reference tests' tolerance).
#if HWY_ARCH_X86 && HWY_TARGET <= HWY_AVX3
  static constexpr bool MaskHiOk() {
    if (kHi != 1 || BITS == 16 || L::kVec == 0 || G > 64 || kN != 16) return false;
    for (int r = 0; r < L::kVec; ++r)
      for (int j = 1; j < kN; ++j)
        if (L::element(r, j) <= L::element(r, j - 1)) return false;
    return true;
  }
  static constexpr bool kMaskHi = MaskHiOk();
#else
  static constexpr bool kMaskHi = false;
#endif
  uint64_t pmask[kV] = {};

  Decoder() {
    const DU du;
    mask = hn::Set(du, (1u << (kLo == 16 ? 0 : kLo)) - 1);
    iota = hn::ConvertTo(DF(), hn::BitCast(DI(), hn::And(hn::Iota(du, 0), mask)));
    hmask = hn::Set(du, (1u << kHi) - 1);
    if constexpr (!L::kPromote && L::kVec > 0) {
      const VU lane = hn::Iota(du, 0);
      const VU slot_in = L::kD == 2 ? hn::ShiftRight<1>(lane) : lane;
      for (int r = 0; r < L::kVec; ++r)
        shifts[r] = hn::Mul(hn::Add(slot_in, hn::Set(du, static_cast<uint32_t>(r * (kN / L::kD)))),
                            hn::Set(du, static_cast<uint32_t>(kLo)));
    } else {
      for (auto& sh : shifts) sh = hn::Zero(du);
    }
    for (int r = 0; r < kV; ++r) {
      hshift[r] = hn::Zero(du);
      hsel[r] = hn::FirstN(du, 0);
    }
    if constexpr (kHi > 0 && L::kVec > 0) {
      for (int r = 0; r < L::kVec; ++r) {
        HWY_ALIGN uint32_t sh[kN];
        HWY_ALIGN uint32_t sel[kN];
        hw0[r] = L::element(r, 0) * kHi / 32;
        hw1[r] = hw0[r];
        for (int j = 0; j < kN; ++j) {
          const int bit = L::element(r, j) * kHi;
          sh[j] = static_cast<uint32_t>(bit % 32);
          sel[j] = 0;
          if (bit / 32 != hw0[r]) {
            hw1[r] = bit / 32;
            sel[j] = 1;
          }
        }
        hshift[r] = hn::Load(du, sh);
        hsel[r] = hn::Ne(hn::Load(du, sel), hn::Zero(du));
        for (int j = 0; j < kN; ++j) pmask[r] |= uint64_t{1} << (L::element(r, j) % 64);
      }
    }
  }

  // Scales and minimums of n groups (headers kGroupBytes apart from grp) as floats: sm[2g], sm[2g + 1].
  // sm needs room for a multiple of 4 groups.
  static HWY_INLINE void Headers(const uint8_t* grp, int n, float* sm) {
    for (int g0 = 0; g0 < n; g0 += 4) {
      const uint8_t* p = grp + g0 * L::kGroupBytes;
#if HWY_ARCH_X86 && HWY_TARGET <= HWY_AVX2
      const int m = n - g0;
      auto word = [p](int g) {
        int32_t w;
        std::memcpy(&w, p + g * L::kGroupBytes, 4);
        return w;
      };
      __m128i h = _mm_cvtsi32_si128(word(0));
      if (m > 1) h = _mm_insert_epi32(h, word(1), 1);
      if (m > 2) h = _mm_insert_epi32(h, word(2), 2);
      if (m > 3) h = _mm_insert_epi32(h, word(3), 3);
      if (m > 2)
        _mm256_storeu_ps(sm + 2 * g0, _mm256_cvtph_ps(h));
      else
        _mm_storeu_ps(sm + 2 * g0, _mm_cvtph_ps(h));
#else
      for (int g = 0; g < std::min(4, n - g0); ++g) {
        sm[2 * (g0 + g)] = Half(p + g * L::kGroupBytes);
        sm[2 * (g0 + g) + 1] = Half(p + g * L::kGroupBytes + 2);
      }
#endif
    }
  }

  // Codes (low kLo bits of each lane; higher bits are ignored) to values. With a table (AVX-512, 2- and
  // 4-bit low planes), a 16-entry table of the group's values indexed by vpermps, which reads the low 4 bits.
#if HWY_ARCH_X86 && HWY_TARGET <= HWY_AVX3
  static constexpr bool kTable = kLo <= 4;
#else
  static constexpr bool kTable = false;
#endif

  // The G / kN value vectors of the group at grp, whose scale and minimum are sm[0], sm[1].
  HWY_INLINE void Group(const uint8_t* grp, const float* sm, VF* x) const {
    const DF df;
    const VF s = hn::Set(df, sm[0]), m = hn::Set(df, sm[1]);
    const uint8_t* codes = grp + 4;
    [[maybe_unused]] VF table;
    if constexpr (kTable) table = hn::MulAdd(iota, s, m);
    auto decode = [&](VU c) HWY_ATTR -> VF {
      if constexpr (kTable) {
#if HWY_ARCH_X86 && HWY_TARGET <= HWY_AVX3
        return VF{_mm512_permutexvar_ps(c.raw, table.raw)};
#else
        return table;
#endif
      } else {
        return hn::MulAdd(hn::ConvertTo(df, hn::BitCast(DI(), hn::And(c, mask))), s, m);
      }
    };
    if constexpr (kLo == 8) {
      for (int r = 0; r < L::kVec; ++r)
        x[r] = hn::MulAdd(
            hn::ConvertTo(df, hn::BitCast(DI(), hn::PromoteTo(DU(), hn::LoadU(D8(), codes + r * kN)))), s, m);
    } else if constexpr (L::kPromote) {
      constexpr int per = 8 / kLo;
      for (int c = 0; c < L::kBytes / kN; ++c) {
        const VU w = hn::PromoteTo(DU(), hn::LoadU(D8(), codes + c * kN));
        [&]<int... S>(std::integer_sequence<int, S...>) HWY_ATTR {
          ((x[c * per + S] = decode(ShiftBy<S * kLo>(w))), ...);
        }
        (std::make_integer_sequence<int, per>{});
      }
    } else {
      const DU du;
      VU w;
      if constexpr (L::kD == 2) {
        uint64_t bits;
        std::memcpy(&bits, codes, 8);
        w = hn::BitCast(du, hn::Set(hn::Repartition<uint64_t, DF>(), bits));
      } else {
        uint32_t bits;
        std::memcpy(&bits, codes, 4);
        w = hn::Set(du, bits);
      }
      for (int r = 0; r < L::kVec; ++r) x[r] = decode(hn::Shr(w, shifts[r]));
    }
    if constexpr (kMaskHi) {
#if HWY_ARCH_X86 && HWY_TARGET <= HWY_AVX3
      uint64_t plane = 0;
      std::memcpy(&plane, codes + L::kBytes, L::kHiBytes);
      const __m512 s_hi = _mm512_set1_ps(sm[0] * static_cast<float>(1 << kLo));
      for (int r = 0; r < L::kVec; ++r) {
        const __mmask16 k = static_cast<__mmask16>(_pext_u64(plane, pmask[r]));
        x[r] = VF{_mm512_mask_add_ps(x[r].raw, k, x[r].raw, s_hi)};
      }
#endif
    } else if constexpr (kHi > 0) {
      const DU du;
      uint32_t words[4] = {0, 0, 0, 0};
      std::memcpy(words, codes + L::kBytes, L::kHiBytes);
      const VF s_hi = hn::Set(df, sm[0] * static_cast<float>(1 << kLo));
      for (int r = 0; r < L::kVec; ++r) {
        VU w = hn::Set(du, words[hw0[r]]);
        if (hw1[r] != hw0[r]) w = hn::IfThenElse(hsel[r], hn::Set(du, words[hw1[r]]), w);
        const VU hi = hn::And(hn::Shr(w, hshift[r]), hmask);
        x[r] = hn::MulAdd(hn::ConvertTo(df, hn::BitCast(DI(), hi)), s_hi, x[r]);
      }
    }
  }
};

// Pairwise tree step: lower half of the result = sums of adjacent lanes of a, upper half = those of b.
// Applied log2(kN) times to kN vectors (token u in vector u) it leaves the sum of token u's lanes in lane u;
// each lane only ever adds lanes of its own token, in an order independent of the other tokens.
HWY_INLINE VF Fold(VF a, VF b) {
#if HWY_TARGET == HWY_SCALAR
  return hn::Add(a, b);
#else
  const DF df;
  return hn::Add(hn::ConcatEven(df, b, a), hn::ConcatOdd(df, b, a));
#endif
}

// The first tree level: any pairing of a token's lanes will do, and on AVX-512 a blend and a block
// shuffle are cheaper than two two-source permutes.
HWY_INLINE VF FoldFirst(VF a, VF b) {
#if HWY_ARCH_X86 && HWY_TARGET <= HWY_AVX3
  return VF{
      _mm512_add_ps(_mm512_mask_blend_ps(0xFF00, a.raw, b.raw), _mm512_shuffle_f32x4(a.raw, b.raw, 0x4E))};
#else
  return Fold(a, b);
#endif
}

// log2(M) tree levels over v[0..M), the first of them the first level of the whole tree when kFirst.
template <int M, bool kFirst>
HWY_INLINE void FoldLevels(VF* v) {
  if constexpr (M > 1) {
    for (int i = 0; i < M / 2; ++i)
      v[i] = kFirst ? FoldFirst(v[2 * i], v[2 * i + 1]) : Fold(v[2 * i], v[2 * i + 1]);
    FoldLevels<M / 2, false>(v);
  }
}

// One kernel call: the keys of one width within a chunk, for NQT query heads of every kv head.
struct SegJob {
  const uint8_t* const* krows;  // per key: K row
  const uint8_t* const* vrows;  // per key: V row
  int count;                    // keys
  int n_kv;
  size_t kslice, vslice;  // bytes of one kv head's slice of a K row, of a V row
  int hd;
  float scale;
  bool want_e2;
  const float* const* q;        // [kvh * NQT + j]: query head in this width's domain order
  float* const* sc;             // [kvh * NQT + j]: where this segment's scaled scores go
  struct HeadState* const* st;  // [kvh * NQT + j]: the head's running softmax state
  float* const* acc;  // [kvh * NQT + j]: the head's domain-0 accumulators (domain d at + d * dom_stride)
  size_t dom_stride;
  int vdom;                       // the domain of this width's V accumulators
  int dom_mask;                   // domains in use in this chunk (rescaled when the max grows)
  float* part;                    // scratch: n_kv * NQT * kN * kN floats
  float* pbuf;                    // scratch: n_kv * NQT * kN floats
  size_t krow_bytes, vrow_bytes;  // of a whole K row, V row, for prefetching
  bool prefetch;
};

// Into L2 (prefetcht2): measured best on Zen 4 for the next block of keys, at every width.
HWY_INLINE void PrefetchRow(const uint8_t* p, size_t bytes) {
  for (size_t o = 0; o < bytes; o += 64) __builtin_prefetch(p + o, 0, 1);
}

// Scores of one block of nb <= kN keys for NQT heads of every kv head, U keys at a time (each load of q
// feeds U FMAs), each key's whole K row at once. The per-key lane sums are folded log2(U) levels in
// registers and the block then finishes the tree: lane u of the result is key u's dot product, and each
// lane only ever adds lanes of its own key, in an order that does not depend on the other keys.
template <int BITS, int G, int NQT>
HWY_INLINE void ScoreBlock(const SegJob& a, const Decoder<BITS, G>& dec, int k0, int nb) {
  const DF df;
  using L = Layout<BITS, G>;
  constexpr int kVecPerStep = BITS == 16 ? 1 : L::kVec;
  // 4 keys while their decoded vectors and accumulators roughly fit the registers: groups of 64 (4 vectors)
  // with 3 query heads still gain from 4 (measured, K5V4g64 at 4096 tokens).
  constexpr int U = std::min(kN, kVecPerStep * 4 + NQT * 4 <= 28 ? 4 : 2);
  constexpr int kSteps = kN / U;
  const int hd = a.hd;
  // Steps past the block's keys are skipped: their partial sums only ever reach their own (unused) lanes.
  const int steps = (nb + U - 1) / U;
  for (int step = 0; step < steps; ++step) {
    // Keys past the end repeat the last one (their lanes are never used).
    const uint8_t* row[U];
    for (int u = 0; u < U; ++u) row[u] = a.krows[k0 + std::min(step * U + u, nb - 1)];
    // The next block's rows, spread over this block's steps.
    if (a.prefetch)
      for (int u = 0; u < U; ++u) {
        const int k = k0 + kN + step * U + u;
        if (k < a.count) {
          PrefetchRow(a.krows[k], a.krow_bytes);
          PrefetchRow(a.vrows[k], a.vrow_bytes);
        }
      }
    for (int kvh = 0; kvh < a.n_kv; ++kvh) {
      const float* const* q = a.q + kvh * NQT;
      const uint8_t* src[U];
      for (int u = 0; u < U; ++u) src[u] = row[u] + kvh * a.kslice;
      VF acc[U][NQT];
      for (int u = 0; u < U; ++u)
        for (int j = 0; j < NQT; ++j) acc[u][j] = hn::Zero(df);
      if constexpr (BITS == 16) {
        for (int e = 0; e < hd; e += kN) {
          VF x[U];
          for (int u = 0; u < U; ++u) x[u] = Load16(src[u] + 2 * e);
          for (int j = 0; j < NQT; ++j) {
            const VF qv = hn::LoadU(df, q[j] + e);
            for (int u = 0; u < U; ++u) acc[u][j] = hn::MulAdd(qv, x[u], acc[u][j]);
          }
        }
      } else {
        HWY_ALIGN float sm[U][2 * (detail::kMaxHeadDim / 16)];
        for (int u = 0; u < U; ++u) dec.Headers(src[u], hd / G, sm[u]);
        for (int g = 0; g < hd / G; ++g) {
          VF x[U][L::kVec];
          for (int u = 0; u < U; ++u) dec.Group(src[u] + g * L::kGroupBytes, sm[u] + 2 * g, x[u]);
          for (int r = 0; r < L::kVec; ++r)
            for (int j = 0; j < NQT; ++j) {
              const VF qv = hn::LoadU(df, q[j] + g * G + r * kN);
              for (int u = 0; u < U; ++u) acc[u][j] = hn::MulAdd(qv, x[u][r], acc[u][j]);
            }
        }
      }
      for (int j = 0; j < NQT; ++j) {
        VF t[U];
        for (int u = 0; u < U; ++u) t[u] = acc[u][j];
#if HWY_ARCH_X86 && HWY_TARGET <= HWY_AVX3
        if constexpr (U == 4) {
          // Block shuffles instead of two-source permutes: 128-bit block k of the result is key k.
          const __m512 x = FoldFirst(t[0], t[1]).raw, y = FoldFirst(t[2], t[3]).raw;
          t[0] = VF{_mm512_add_ps(_mm512_shuffle_f32x4(x, y, 0x88), _mm512_shuffle_f32x4(x, y, 0xDD))};
        } else {
          FoldLevels<U, true>(t);
        }
#else
        FoldLevels<U, true>(t);
#endif
        hn::Store(t[0], df, a.part + (static_cast<size_t>(kvh * NQT + j) * kSteps + step) * kN);
      }
    }
  }
  const VF vscale = hn::Set(df, a.scale);
  for (int h = 0; h < a.n_kv * NQT; ++h) {
    VF t[kSteps];
    for (int m = 0; m < kSteps; ++m)
      t[m] = m < steps ? hn::Load(df, a.part + (static_cast<size_t>(h) * kSteps + m) * kN) : hn::Zero(df);
#if HWY_ARCH_X86 && HWY_TARGET <= HWY_AVX3
    if constexpr (U == 4) {
      // In-block pair sums: block k of a holds keys k and 4 + k, of b keys 8 + k and 12 + k; then lane
      // 4k + i of f is key k + 4i, put back in order with one permute.
      const auto pair = [](__m512 p, __m512 q) HWY_ATTR {
        return _mm512_add_ps(_mm512_shuffle_ps(p, q, 0x88), _mm512_shuffle_ps(p, q, 0xDD));
      };
      const __m512 f = pair(pair(t[0].raw, t[1].raw), pair(t[2].raw, t[3].raw));
      const __m512i order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
      t[0] = VF{_mm512_permutexvar_ps(order, f)};
    } else {
      FoldLevels<kSteps, U == 1>(t);
    }
#else
    FoldLevels<kSteps, U == 1>(t);
#endif
    hn::StoreU(hn::Mul(t[0], vscale), df, a.sc[h] + k0);
  }
}

// Running softmax state of one head over a chunk: max (lane 0 of m, broadcast), and per-lane sums of
// exp(score - max) and of its square (summed over the lanes once, at the end of the chunk).
struct HeadState {
  float m[16];
  float l[16];
  float e2[16];
};

// Online softmax over one block: for each head, raises the running max (rescaling what was accumulated)
// and leaves p = exp(score - max) in pbuf (0 past the block's nb keys).
HWY_INLINE void SoftmaxBlock(const SegJob& a, int heads, int k0, int nb) {
  const DF df;
  const auto valid = hn::FirstN(df, static_cast<size_t>(nb));
  const VF neg_inf = hn::Set(df, -INFINITY);
  for (int h = 0; h < heads; ++h) {
    HeadState& st = *a.st[h];
    const VF s = hn::IfThenElse(valid, hn::LoadU(df, a.sc[h] + k0), neg_inf);
    VF m = hn::Load(df, st.m);
    if (!hn::AllFalse(df, hn::Gt(s, m))) {
      const VF bm = hn::MaxOfLanes(df, s);
      const VF f = hn::Exp(df, hn::Sub(m, bm));  // 0 for the first block (max -inf)
      m = bm;
      hn::Store(m, df, st.m);
      hn::Store(hn::Mul(hn::Load(df, st.l), f), df, st.l);
      hn::Store(hn::Mul(hn::Load(df, st.e2), hn::Mul(f, f)), df, st.e2);
      for (int d = 0; d < kDomains; ++d) {
        if (!(a.dom_mask & (1 << d))) continue;
        float* acc = a.acc[h] + d * a.dom_stride;
        for (int e = 0; e < a.hd; e += kN) hn::StoreU(hn::Mul(hn::LoadU(df, acc + e), f), df, acc + e);
      }
    }
    const VF p = hn::Exp(df, hn::Sub(s, m));
    hn::Store(p, df, a.pbuf + h * kN);
    hn::Store(hn::Add(hn::Load(df, st.l), p), df, st.l);
    if (a.want_e2) hn::Store(hn::MulAdd(p, p, hn::Load(df, st.e2)), df, st.e2);
  }
}

// acc += p * value for one block of nb keys, NQT heads of one kv head; the accumulators of a tile of
// elements stay in registers over the block.
template <int BITS, int G, int NQT>
HWY_INLINE void AccumBlock(const SegJob& a, const Decoder<BITS, G>& dec, int kvh, int k0, int nb) {
  const DF df;
  using L = Layout<BITS, G>;
  constexpr int kTV = BITS == 16 ? 4 : std::max(4, L::kVec);  // vectors per tile (whole groups)
  constexpr int kTE = kTV * kN;
  const float* p[NQT];
  float* acc[NQT];
  for (int j = 0; j < NQT; ++j) {
    p[j] = a.pbuf + (kvh * NQT + j) * kN;
    acc[j] = a.acc[kvh * NQT + j] + a.vdom * a.dom_stride;
  }
  const size_t off = kvh * a.vslice;
  for (int e0 = 0; e0 < a.hd; e0 += kTE) {
    VF v[NQT][kTV];
    for (int j = 0; j < NQT; ++j)
      for (int t = 0; t < kTV; ++t) v[j][t] = hn::LoadU(df, acc[j] + e0 + t * kN);
    const size_t toff =
        off + (BITS == 16 ? 2 * static_cast<size_t>(e0) : static_cast<size_t>(e0 / G) * L::kGroupBytes);
    for (int u = 0; u < nb; ++u) {
      const uint8_t* src = a.vrows[k0 + u] + toff;
      VF x[kTV];
      if constexpr (BITS == 16) {
        for (int t = 0; t < kTV; ++t) x[t] = Load16(src + 2 * t * kN);
      } else {
        HWY_ALIGN float sm[2 * 4 * ((kTE / G + 3) / 4)];
        dec.Headers(src, kTE / G, sm);
        for (int g = 0; g < kTE / G; ++g) dec.Group(src + g * L::kGroupBytes, sm + 2 * g, x + g * L::kVec);
      }
      for (int j = 0; j < NQT; ++j) {
        const VF pj = hn::Set(df, p[j][u]);
        for (int t = 0; t < kTV; ++t) v[j][t] = hn::MulAdd(pj, x[t], v[j][t]);
      }
    }
    for (int j = 0; j < NQT; ++j)
      for (int t = 0; t < kTV; ++t) hn::StoreU(v[j][t], df, acc[j] + e0 + t * kN);
  }
}

// Score and accumulate steps of one (K or V) width, group and tile, behind plain function pointers so the K
// and V of a width class can use different widths without a kernel per (K, V) pair.
using ScoreFn = void (*)(const SegJob&, int k0, int nb);
using AccumFn = void (*)(const SegJob&, int kvh, int k0, int nb);

// A width's decoder holds only constants (masks, shifts, lane selections): built once per width and group,
// not once per block of keys.
template <int BITS, int G>
const Decoder<BITS, G>& DecoderOf() {
  static const Decoder<BITS, G> dec;
  return dec;
}

template <int BITS, int G, int NQT>
void ScoreStep(const SegJob& a, int k0, int nb) {
  ScoreBlock<BITS, G, NQT>(a, DecoderOf<BITS, G>(), k0, nb);
}
template <int BITS, int G, int NQT>
void AccumStep(const SegJob& a, int kvh, int k0, int nb) {
  AccumBlock<BITS, G, NQT>(a, DecoderOf<BITS, G>(), kvh, k0, nb);
}

// The keys of one width class, a block of kN at a time: scores (K row by K row), online softmax, then the
// block's V rows while they are still in L1.
HWY_NOINLINE void SegmentKernel(const SegJob& a, int nqt, ScoreFn score, AccumFn accum) {
  for (int k0 = 0; k0 < a.count; k0 += kN) {
    const int nb = std::min(kN, a.count - k0);
    score(a, k0, nb);
    SoftmaxBlock(a, a.n_kv * nqt, k0, nb);
    for (int kvh = 0; kvh < a.n_kv; ++kvh) accum(a, kvh, k0, nb);
  }
}

template <int BITS, int G>
constexpr bool Usable() {
  if constexpr (BITS == 16) {
    return kN >= 4;
  } else {
    return Layout<BITS, G>::kOk;
  }
}

template <int BITS, int G>
void ByTile(int nt, ScoreFn* s, AccumFn* a) {
  if constexpr (Usable<BITS, G>()) {
    switch (nt) {
      case 1:
        *s = ScoreStep<BITS, G, 1>, *a = AccumStep<BITS, G, 1>;
        return;
      case 2:
        *s = ScoreStep<BITS, G, 2>, *a = AccumStep<BITS, G, 2>;
        return;
      case 3:
        if constexpr (kMaxTile >= 3) *s = ScoreStep<BITS, G, 3>, *a = AccumStep<BITS, G, 3>;
        return;
      case 4:
        if constexpr (kMaxTile >= 4) *s = ScoreStep<BITS, G, 4>, *a = AccumStep<BITS, G, 4>;
        return;
      default:
        return;
    }
  }
}

template <int BITS>
void ByGroup(int group, int nt, ScoreFn* s, AccumFn* a) {
  if constexpr (BITS == 16) {
    ByTile<16, 32>(nt, s, a);
  } else {
    switch (group) {
      case 16:
        return ByTile<BITS, 16>(nt, s, a);
      case 32:
        return ByTile<BITS, 32>(nt, s, a);
      case 64:
        return ByTile<BITS, 64>(nt, s, a);
      default:
        break;
    }
  }
}

// The kernels of one stored width and group for tiles of nt query heads (null when this target has none).
void Kernels(int bits, int group, int nt, ScoreFn* s, AccumFn* a) {
  *s = nullptr;
  *a = nullptr;
  switch (bits) {
    case 16:
      return ByGroup<16>(group, nt, s, a);
    case 8:
      return ByGroup<8>(group, nt, s, a);
    case 6:
      return ByGroup<6>(group, nt, s, a);
    case 5:
      return ByGroup<5>(group, nt, s, a);
    case 4:
      return ByGroup<4>(group, nt, s, a);
    case 3:
      return ByGroup<3>(group, nt, s, a);
    case 2:
      return ByGroup<2>(group, nt, s, a);
    default:
      return;
  }
}

// Whether this target has kernels for a stored width and group at every tile size up to kMaxTile.
bool HasKernels(int bits, int group) {
  for (int nt = 1; nt <= kMaxTile; ++nt) {
    ScoreFn s;
    AccumFn a;
    Kernels(bits, group, nt, &s, &a);
    if (!s || !a) return false;
  }
  return true;
}

int MaxTile() { return kMaxTile; }

template <int BITS, int G>
void FillPerm(int hd, int* perm) {
  using L = Layout<BITS, G>;
  for (int g = 0; g < hd / G; ++g)
    for (int r = 0; r < L::kVec; ++r)
      for (int j = 0; j < kN; ++j) perm[g * G + r * kN + j] = g * G + L::element(r, j);
}

template <int BITS>
bool FillPermByGroup(int hd, int group, int* perm) {
  switch (group) {
    case 16:
      if constexpr (Usable<BITS, 16>()) return FillPerm<BITS, 16>(hd, perm), true;
      return false;
    case 32:
      if constexpr (Usable<BITS, 32>()) return FillPerm<BITS, 32>(hd, perm), true;
      return false;
    case 64:
      if constexpr (Usable<BITS, 64>()) return FillPerm<BITS, 64>(hd, perm), true;
      return false;
    default:
      return false;
  }
}

// perm[k] = element (within the head) at position k of the order rows of this width and group unpack to
// (identity for 16 and 8 bits); false when this target's kernels do not cover head_dim, width and group.
bool BuildPerm(int hd, int bits, int group, int* perm) {
  if (kN < 4 || hd % (4 * kN) != 0 || hd > detail::kMaxHeadDim) return false;
  if (bits != 16) {
    if (group != 16 && group != 32 && group != 64) return false;
    if (hd % std::max(4 * kN, group) != 0) return false;
  }
  if (!HasKernels(bits, group)) return false;
  for (int k = 0; k < hd; ++k) perm[k] = k;
  switch (bits) {
    case 16:
    case 8:
      return true;
    case 6:
      return FillPermByGroup<6>(hd, group, perm);
    case 5:
      return FillPermByGroup<5>(hd, group, perm);
    case 4:
      return FillPermByGroup<4>(hd, group, perm);
    case 3:
      return FillPermByGroup<3>(hd, group, perm);
    case 2:
      return FillPermByGroup<2>(hd, group, perm);
    default:
      return false;
  }
}

int TargetLanes() { return kN; }

// One chunk of keys for one query: for every kv head, the partial softmax results (see
// detail::partial_floats) at partial + kvh * geo.partial_stride. qdom[d * n_heads + h]: query head h in
// domain d's element order. e_out (optional): exp(score - chunk max), [head][kKeyChunk], in sorted key
// order. scratch: detail::chunk_scratch_floats(...) floats, 64-byte aligned.
void ChunkKernel(const Geometry& geo, const ChunkViews& cv, const float* const* qdom, float* partial,
                 float* e_out, float* scratch, bool want_e2) {
  const DF df;
  const int nq = geo.nq, hd = geo.hd, nk = cv.count, nh = geo.n_heads;
  constexpr int kRow = kKeyChunk + 16;  // score row stride (room for a whole last block)
  float* sc = scratch;
  float* part = sc + static_cast<size_t>(nh) * kRow;
  float* pbuf = part + static_cast<size_t>(geo.n_kv) * kMaxTile * kN * kN;
  const int n_tiles = (nq + kMaxTile - 1) / kMaxTile;
  int tile_start[kMaxQPerKv + 1];
  for (int t = 0, j = 0; t <= n_tiles; ++t) {
    tile_start[t] = j;
    j += nq / n_tiles + (t < nq % n_tiles ? 1 : 0);
  }
  int mask = 0;
  for (int w = 0; w < 4; ++w)
    if (cv.seg[w + 1] > cv.seg[w]) mask |= 1 << geo.vdom[w];
  for (int kvh = 0; kvh < geo.n_kv; ++kvh) {
    float* P = partial + static_cast<size_t>(kvh) * geo.partial_stride;
    P[3 * nq] = static_cast<float>(mask);
    float* acc = P + geo.partial_acc;
    for (int d = 0; d < kDomains; ++d)
      if (mask & (1 << d))
        std::fill(acc + static_cast<size_t>(d) * nq * hd, acc + static_cast<size_t>(d + 1) * nq * hd, 0.0f);
  }
  const float* q[detail::kMaxKvHeads * kMaxTile];
  float* srow[detail::kMaxKvHeads * kMaxTile];
  HeadState* st[detail::kMaxKvHeads * kMaxTile];
  float* accp[detail::kMaxKvHeads * kMaxTile];
  HeadState* states = reinterpret_cast<HeadState*>(pbuf + static_cast<size_t>(geo.n_kv) * kMaxTile * kN);
  // The first block of every width (the kernels prefetch each next block as they go).
  for (int w = 0; w < 4; ++w) {
    for (int k = cv.seg[w]; k < std::min(cv.seg[w + 1], cv.seg[w] + kN); ++k) {
      PrefetchRow(cv.k[k], geo.n_kv * geo.kslice[w]);
      PrefetchRow(cv.v[k], geo.n_kv * geo.vslice[w]);
    }
  }
  for (int t = 0; t < n_tiles; ++t) {
    const int j0 = tile_start[t], nt = tile_start[t + 1] - j0;
    for (int kvh = 0; kvh < geo.n_kv; ++kvh)
      for (int j = 0; j < nt; ++j) {
        const int i = kvh * nt + j;
        float* P = partial + static_cast<size_t>(kvh) * geo.partial_stride;
        st[i] = &states[i];
        hn::Store(hn::Set(df, -INFINITY), df, states[i].m);
        hn::Store(hn::Zero(df), df, states[i].l);
        hn::Store(hn::Zero(df), df, states[i].e2);
        accp[i] = P + geo.partial_acc + static_cast<size_t>(j0 + j) * hd;
      }
    for (int w = 0; w < 4; ++w) {
      const int b = cv.seg[w], cnt = cv.seg[w + 1] - b;
      if (cnt == 0) continue;
      const int kdom = geo.kdom[w];
      for (int kvh = 0; kvh < geo.n_kv; ++kvh)
        for (int j = 0; j < nt; ++j) {
          const int h = kvh * nq + j0 + j;
          q[kvh * nt + j] = qdom[kdom * nh + h];
          srow[kvh * nt + j] = sc + static_cast<size_t>(h) * kRow + b;
        }
      const SegJob job{cv.k + b,
                       cv.v + b,
                       cnt,
                       geo.n_kv,
                       geo.kslice[w],
                       geo.vslice[w],
                       hd,
                       geo.scale,
                       want_e2,
                       q,
                       srow,
                       st,
                       accp,
                       static_cast<size_t>(nq) * hd,
                       geo.vdom[w],
                       mask,
                       part,
                       pbuf,
                       geo.n_kv * geo.kslice[w],
                       geo.n_kv * geo.vslice[w],
                       t == 0};
      ScoreFn score, unused_s;
      AccumFn accum, unused_a;
      Kernels(geo.kbits[w], geo.kgroup[w], nt, &score, &unused_a);
      Kernels(geo.vbits[w], geo.vgroup[w], nt, &unused_s, &accum);
      SegmentKernel(job, nt, score, accum);
    }
    for (int kvh = 0; kvh < geo.n_kv; ++kvh)
      for (int j = 0; j < nt; ++j) {
        const HeadState& hs = states[kvh * nt + j];
        float* P = partial + static_cast<size_t>(kvh) * geo.partial_stride;
        P[j0 + j] = hs.m[0];
        P[nq + j0 + j] = hn::GetLane(hn::SumOfLanes(df, hn::Load(df, hs.l)));
        P[2 * nq + j0 + j] = hn::GetLane(hn::SumOfLanes(df, hn::Load(df, hs.e2)));
      }
  }
  if (e_out) {
    for (int kvh = 0; kvh < geo.n_kv; ++kvh) {
      const float* P = partial + static_cast<size_t>(kvh) * geo.partial_stride;
      for (int j = 0; j < nq; ++j) {
        const int h = kvh * nq + j;
        const float* row = sc + static_cast<size_t>(h) * kRow;
        float* e = e_out + static_cast<size_t>(h) * kKeyChunk;
        const VF m = hn::Set(df, P[j]);
        for (int k = 0; k < nk; k += kN)
          hn::StoreU(hn::Exp(df, hn::Sub(hn::LoadU(df, row + k), m)), df, e + k);
      }
    }
  }
}

// Merges the n_chunks partials of one query (chunk-major: partials + (c * n_kv + kvh) * stride) in chunk
// order into out (n_heads x hd). Adds the variance of the weights / n_keys and the largest weight per head
// to *var_sum, *max_sum; g_out (optional, [chunk][head]) receives the factor turning a chunk's
// exponentials into weights.
void MergeKernel(const Geometry& geo, int n_chunks, const float* partials, int n_keys, float* out,
                 double* var_sum, double* max_sum, float* g_out) {
  const DF df;
  const int nq = geo.nq, hd = geo.hd;
  const size_t stride = geo.partial_stride;
  std::vector<float> f(static_cast<size_t>(n_chunks + kN));
  HWY_ALIGN float dom[kDomains][detail::kMaxHeadDim];
  for (int kvh = 0; kvh < geo.n_kv; ++kvh) {
    for (int j = 0; j < nq; ++j) {
      auto part = [&](int c) { return partials + (static_cast<size_t>(c) * geo.n_kv + kvh) * stride; };
      float mx = -INFINITY;
      for (int c = 0; c < n_chunks; ++c) mx = std::max(mx, part(c)[j]);
      for (int c = 0; c < n_chunks; ++c) f[c] = part(c)[j] - mx;
      for (int c = 0; c < n_chunks; c += kN)
        hn::StoreU(hn::Exp(df, hn::LoadU(df, f.data() + c)), df, f.data() + c);
      float sum = 0;
      int mask = 0;
      for (int c = 0; c < n_chunks; ++c) {
        sum += f[c] * part(c)[nq + j];
        mask |= static_cast<int>(part(c)[3 * nq]);
      }
      const float inv = 1.0f / sum;
      for (int d = 0; d < kDomains; ++d) {
        if (!(mask & (1 << d))) continue;
        for (int e = 0; e < hd; e += kN) {
          VF o = hn::Zero(df);
          for (int c = 0; c < n_chunks; ++c) {
            const float* P = part(c);
            if (!(static_cast<int>(P[3 * nq]) & (1 << d))) continue;
            o = hn::MulAdd(hn::Set(df, f[c]),
                           hn::LoadU(df, P + geo.partial_acc + (static_cast<size_t>(d) * nq + j) * hd + e),
                           o);
          }
          hn::Store(o, df, dom[d] + e);
        }
      }
      float* oh = out + static_cast<size_t>(kvh * nq + j) * hd;
      if (mask & 1)
        std::memcpy(oh, dom[0], sizeof(float) * hd);
      else
        std::fill(oh, oh + hd, 0.0f);
      // Rotated domains sum in the rotated basis, turned back once per head.
      HWY_ALIGN float rot[detail::kMaxHeadDim];
      bool any_rot = false;
      for (int d = 1; d < geo.n_dom; ++d) {
        if (!(mask & (1 << d))) continue;
        float* dst = oh;
        if (geo.dom_rot[d]) {
          if (!any_rot) std::fill(rot, rot + hd, 0.0f);
          any_rot = true;
          dst = rot;
        }
        if (geo.perm[d])
          for (int e = 0; e < hd; ++e) dst[geo.perm[d][e]] += dom[d][e];
        else
          for (int e = 0; e < hd; ++e) dst[e] += dom[d][e];
      }
      if (any_rot) {
        kv_unrotate(rot, geo.signs + static_cast<size_t>(kvh) * hd, hd);
        for (int e = 0; e < hd; ++e) oh[e] += rot[e];
      }
      const VF vinv = hn::Set(df, inv);
      for (int e = 0; e < hd; e += kN) hn::StoreU(hn::Mul(hn::LoadU(df, oh + e), vinv), df, oh + e);
      if (var_sum) {
        // sum_t (w_t - 1/n)^2 = sum_t w_t^2 - 1/n (the weights sum to 1); the largest weight is 1 / sum.
        double sq = 0;
        for (int c = 0; c < n_chunks; ++c) {
          const double g = static_cast<double>(f[c]) * inv;
          sq += g * g * part(c)[2 * nq + j];
        }
        const double var = std::max(0.0, sq - 1.0 / n_keys);
        *var_sum += var / n_keys;
        *max_sum += static_cast<double>(inv);
      }
      if (g_out)
        for (int c = 0; c < n_chunks; ++c)
          g_out[static_cast<size_t>(c) * geo.n_heads + kvh * nq + j] = f[c] * inv;
    }
  }
}

// received[ord[k]] += sum_h e[h][k] * g[h] for the nk keys of one chunk.
void ReceivedKernel(int nk, int n_heads, const float* e, const float* g, const uint16_t* ord,
                    float* received) {
  const DF df;
  HWY_ALIGN float tmp[kKeyChunk];
  for (int k = 0; k < nk; k += kN) {
    VF s = hn::Zero(df);
    for (int h = 0; h < n_heads; ++h)
      s = hn::MulAdd(hn::LoadU(df, e + static_cast<size_t>(h) * kKeyChunk + k), hn::Set(df, g[h]), s);
    hn::Store(s, df, tmp + k);
  }
  for (int k = 0; k < nk; ++k) received[ord[k]] += tmp[k];
}

}  // namespace kvd::cpu::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace kvd::cpu {
HWY_EXPORT(TargetLanes);
HWY_EXPORT(BuildPerm);
HWY_EXPORT(MaxTile);
HWY_EXPORT(ChunkKernel);
HWY_EXPORT(MergeKernel);
HWY_EXPORT(ReceivedKernel);

namespace detail {
namespace {

// ---------------------------------------------------------------------------------------------------
// The scalar path (before SIMD): one (query token, kv head) per work item.

struct ItemStats {
  double var_sum = 0, max_sum = 0;
  int64_t count = 0;
};

// One query token at position pos, one kv head and the nq query heads that share it: each key and value
// dequantized (and un-rotated) by kv_load_head, then plain loops.
void attend_item(const KvCache& cache, int seq, int layer, const AttnShape& shape, const float* q, int pos,
                 int kvh, float* out, std::vector<float>& scores, ItemStats* st, float* received) {
  const KvLayout& lay = cache.layout();
  const float* signs = cache.rotation_signs(layer);
  const int hd = shape.head_dim, n = pos + 1;
  const int nq = shape.n_heads / shape.n_kv_heads;
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  const float* qh[kMaxQPerKv];
  for (int j = 0; j < nq; ++j) qh[j] = q + (kvh * nq + j) * hd;
  scores.resize(static_cast<size_t>(nq) * n);
  float mx[kMaxQPerKv];
  std::fill(mx, mx + nq, -INFINITY);
  float kv[kMaxHeadDim];
  for (int t = 0; t < n; ++t) {
    const KvTokenView tok = cache.token(seq, layer, t, pos);
    kv_load_head(lay, tok.bits, false, tok.k, kvh, signs, kv);
    for (int j = 0; j < nq; ++j) {
      float sdot = 0;
      for (int i = 0; i < hd; ++i) sdot += qh[j][i] * kv[i];
      const float v = sdot * scale;
      scores[static_cast<size_t>(j) * n + t] = v;
      mx[j] = std::max(mx[j], v);
    }
  }
  float sum[kMaxQPerKv] = {};
  for (int j = 0; j < nq; ++j) {
    float* sc = scores.data() + static_cast<size_t>(j) * n;
    for (int t = 0; t < n; ++t) {
      sc[t] = std::exp(sc[t] - mx[j]);
      sum[j] += sc[t];
    }
    const float inv = 1.0f / sum[j];
    for (int t = 0; t < n; ++t) sc[t] *= inv;
  }
  float acc[kMaxQPerKv][kMaxHeadDim];
  for (int j = 0; j < nq; ++j) std::fill(acc[j], acc[j] + hd, 0.0f);
  for (int t = 0; t < n; ++t) {
    const KvTokenView tok = cache.token(seq, layer, t, pos);
    kv_load_head(lay, tok.bits, true, tok.v, kvh, signs, kv);
    for (int j = 0; j < nq; ++j) {
      const float p = scores[static_cast<size_t>(j) * n + t];
      for (int i = 0; i < hd; ++i) acc[j][i] += p * kv[i];
    }
  }
  for (int j = 0; j < nq; ++j) std::memcpy(out + (kvh * nq + j) * hd, acc[j], sizeof(float) * hd);
  if (st) {
    const double mean = 1.0 / n;
    for (int j = 0; j < nq; ++j) {
      const float* w = scores.data() + static_cast<size_t>(j) * n;
      double var = 0, wmax = 0;
      for (int t = 0; t < n; ++t) {
        var += (w[t] - mean) * (w[t] - mean);
        wmax = std::max(wmax, static_cast<double>(w[t]));
        if (received) received[t] += w[t];
      }
      st->var_sum += var / n;
      st->max_sum += wmax;
      st->count++;
    }
  }
}

// ---------------------------------------------------------------------------------------------------
// The SIMD path's per-thread and per-call buffers (reused across calls).

constexpr int kWidthBits[4] = {16, 8, 4, 2};

struct ThreadScratch {
  ChunkViews views;
  std::vector<float> chunk;  // ChunkKernel's scratch
  float* chunk_scratch(const Geometry& geo) {
    const size_t n = chunk_scratch_floats(geo.n_heads, geo.n_kv) + 16;
    if (chunk.size() < n) chunk.resize(n);
    return chunk.data() + (16 - reinterpret_cast<uintptr_t>(chunk.data()) / sizeof(float) % 16) % 16;
  }
  std::vector<float> qprep;    // (kDomains - 1) x n_heads x hd: the query in domains 1 and 2
  std::vector<float> partial;  // one query's partials (all its chunks) when a work item is a whole query
};

ThreadScratch& thread_scratch() {
  thread_local ThreadScratch s;
  return s;
}

struct CallBuffers {
  std::vector<KvTokenView> view_q, view_f;  // batched calls: views of every key (see attend)
  std::vector<float> qprep, partial, ebuf, gbuf;
  std::vector<uint16_t> ord;
  std::vector<double> var, wmax;
  std::unique_ptr<std::atomic<int>[]> remaining;
  size_t remaining_size = 0;
  // The domains of the last layout seen (cached per calling thread).
  KvLayout plan_layout;
  int plan_lanes = -1;
  bool plan_ok = false;
  Geometry plan;  // per-class widths, slices, domains and perms (pointing into perm)
  std::vector<int> perm[kDomains];
};

CallBuffers& call_buffers() {
  thread_local CallBuffers b;
  return b;
}

bool same_layout(const KvLayout& a, const KvLayout& b) {
  for (int c : kKvClasses)
    if (!(a.setting(c) == b.setting(c))) return false;
  return a.head_dim == b.head_dim && a.n_kv_heads == b.n_kv_heads && a.rotate == b.rotate;
}

// The per-class kernels' geometry and accumulator domains for this layout, cached per calling thread;
// false when this target's kernels do not cover every stored width and group of the layout.
bool prepare_plan(CallBuffers& b, const KvLayout& lay) {
  const int lanes = HWY_DYNAMIC_DISPATCH(TargetLanes)();
  if (b.plan_lanes == lanes && same_layout(b.plan_layout, lay)) return b.plan_ok;
  b.plan_layout = lay;
  b.plan_lanes = lanes;
  b.plan_ok = false;
  Geometry& g = b.plan;
  g = Geometry{};
  const int hd = lay.head_dim;
  if (hd > kMaxHeadDim) return false;
  g.n_dom = 1;
  for (auto& p : b.perm) p.assign(static_cast<size_t>(hd), 0);
  std::vector<int> perm(static_cast<size_t>(hd));
  // The domain of rows stored at (bits, group): an existing one with the same order and basis, or a new one.
  auto domain_of = [&](int bits, int group, int* dom) {
    if (!HWY_DYNAMIC_DISPATCH(BuildPerm)(hd, bits, group, perm.data())) return false;
    const bool rot = kv_row_rotated(lay, bits);
    bool identity = true;
    for (int k = 0; k < hd; ++k) identity &= perm[k] == k;
    if (identity && !rot) return *dom = 0, true;
    for (int d = 1; d < g.n_dom; ++d)
      if (g.dom_rot[d] == rot && b.perm[d] == perm) return *dom = d, true;
    if (g.n_dom == kDomains) return false;
    const int d = g.n_dom++;
    b.perm[d] = perm;
    g.dom_rot[d] = rot;
    g.perm[d] = identity ? nullptr : b.perm[d].data();
    *dom = d;
    return true;
  };
  for (int w = 0; w < 4; ++w) {
    const KvSetting st = lay.setting(kWidthBits[w]);
    g.kbits[w] = st.kbits;
    g.vbits[w] = st.vbits;
    g.kgroup[w] = st.kbits == 16 ? 32 : st.kgroup;
    g.vgroup[w] = st.vbits == 16 ? 32 : st.vgroup;
    g.kslice[w] = st.kbits == 16
                      ? 2 * static_cast<size_t>(hd)
                      : static_cast<size_t>(hd / st.kgroup) * KvLayout::group_bytes_of(st.kbits, st.kgroup);
    g.vslice[w] = st.vbits == 16
                      ? 2 * static_cast<size_t>(hd)
                      : static_cast<size_t>(hd / st.vgroup) * KvLayout::group_bytes_of(st.vbits, st.vgroup);
    if (!domain_of(g.kbits[w], g.kgroup[w], &g.kdom[w]) || !domain_of(g.vbits[w], g.vgroup[w], &g.vdom[w]))
      return false;
  }
  b.plan_ok = true;
  return true;
}

// The query (n_heads x hd) in domain d >= 1 (rotated by its kv head's signs when the domain is rotated,
// then permuted), into dst ((kDomains - 1) x n_heads x hd).
void permute_query(const float* q, const Geometry& geo, int domain, float* dst) {
  const int* perm = geo.perm[domain];
  float tmp[kMaxHeadDim];
  for (int h = 0; h < geo.n_heads; ++h) {
    const float* src = q + static_cast<size_t>(h) * geo.hd;
    float* d = dst + (static_cast<size_t>(domain - 1) * geo.n_heads + h) * geo.hd;
    if (geo.dom_rot[domain]) {
      std::memcpy(tmp, src, sizeof(float) * geo.hd);
      kv_rotate(tmp, geo.signs + static_cast<size_t>(h / geo.nq) * geo.hd, geo.hd);
      src = tmp;
    }
    if (perm)
      for (int k = 0; k < geo.hd; ++k) d[k] = src[perm[k]];
    else
      std::memcpy(d, src, sizeof(float) * geo.hd);
  }
}

int width_index(int bits) { return bits == 16 ? 0 : bits == 8 ? 1 : bits == 4 ? 2 : 3; }

}  // namespace

void attend_scalar(const KvCache& cache, int seq, int layer, const AttnShape& shape, const float* q, int pos0,
                   int n, float* out, AttnStats* stats, ThreadPool& pool) {
  KVD_ASSERT(shape.head_dim <= kMaxHeadDim && shape.n_heads / shape.n_kv_heads <= kMaxQPerKv);
  const int n_items = n * shape.n_kv_heads;
  const int stride = shape.n_heads * shape.head_dim;
  std::vector<ItemStats> item_stats(stats ? static_cast<size_t>(n_items) : 0);
  std::atomic<int> next{0};
  // Received-attention sums are per key position and the query tokens of a batch may share one vector:
  // with them, the items of a token run on one thread, and a batch runs on the calling thread alone.
  const bool need_received = stats && stats[0].received;
  auto work = [&](int, int) {
    std::vector<float> scores;
    for (;;) {
      const int it = need_received ? next.fetch_add(shape.n_kv_heads) : next.fetch_add(1);
      if (it >= n_items) break;
      const int last = need_received ? it + shape.n_kv_heads : it + 1;
      for (int item = it; item < last; ++item) {
        const int i = item / shape.n_kv_heads, kvh = item % shape.n_kv_heads;
        float* recv = need_received ? stats[i].received->data() : nullptr;
        attend_item(cache, seq, layer, shape, q + static_cast<size_t>(i) * stride, pos0 + i, kvh,
                    out + static_cast<size_t>(i) * stride, scores, stats ? &item_stats[item] : nullptr, recv);
      }
    }
  };
  if (need_received && n > 1)
    work(0, 1);
  else
    pool.run_on_all(work);
  if (stats) {
    for (int item = 0; item < n_items; ++item) {
      AttnStats& s = stats[item / shape.n_kv_heads];
      s.var_sum += item_stats[item].var_sum;
      s.max_weight_sum += item_stats[item].max_sum;
      s.var_count += item_stats[item].count;
    }
  }
}

bool simd_supported(const KvLayout& layout, const AttnShape& shape) {
  return layout.head_dim == shape.head_dim && shape.n_kv_heads > 0 && shape.n_kv_heads <= kMaxKvHeads &&
         shape.n_heads % shape.n_kv_heads == 0 && shape.n_heads / shape.n_kv_heads <= kMaxQPerKv &&
         layout.head_dim <= kMaxHeadDim && prepare_plan(call_buffers(), layout);
}

const char* simd_target_name() {
  const int lanes = HWY_DYNAMIC_DISPATCH(TargetLanes)();
  return lanes >= 16 ? "AVX-512" : lanes == 8 ? "AVX2" : lanes == 4 ? "128-bit" : "scalar";
}

}  // namespace detail

void attend(const KvCache& cache, int seq, int layer, const AttnShape& shape, const float* q, int pos0, int n,
            float* out, AttnStats* stats, ThreadPool& pool) {
  using namespace detail;
  if (n <= 0) return;
  const KvLayout& lay = cache.layout();
  KVD_ASSERT(shape.head_dim <= kMaxHeadDim && shape.n_kv_heads > 0 && shape.n_heads % shape.n_kv_heads == 0 &&
             shape.n_heads / shape.n_kv_heads <= kMaxQPerKv);
  CallBuffers& B = call_buffers();
  if (lay.head_dim != shape.head_dim || lay.n_kv_heads != shape.n_kv_heads ||
      shape.n_kv_heads > kMaxKvHeads || !prepare_plan(B, lay))
    return attend_scalar(cache, seq, layer, shape, q, pos0, n, out, stats, pool);

  Geometry geo = B.plan;
  geo.hd = shape.head_dim;
  geo.n_kv = shape.n_kv_heads;
  geo.n_heads = shape.n_heads;
  geo.nq = shape.n_heads / shape.n_kv_heads;
  geo.scale = 1.0f / std::sqrt(static_cast<float>(geo.hd));
  geo.partial_stride = partial_floats(geo.nq, geo.hd);
  geo.partial_acc = geo.partial_stride - kDomains * static_cast<size_t>(geo.nq) * geo.hd;
  geo.signs = cache.rotation_signs(layer);

  const int C = kKeyChunk, nh = shape.n_heads, hd = geo.hd;
  const size_t qstride = static_cast<size_t>(nh) * hd;
  const int pos_max = pos0 + n - 1;
  const int nch_max = pos_max / C + 1;
  auto n_chunks = [&](int i) { return (pos0 + i) / C + 1; };
  const int n_threads = pool.size();
  // Few query tokens (decode): work items are (query, chunk), so the chunks of one query spread over the
  // threads; the last item of a query to finish merges it. Many: a work item is a whole query.
  const bool split = n < 4 * n_threads;
  bool want_recv = false;
  if (stats)
    for (int i = 0; i < n; ++i) want_recv |= stats[i].received != nullptr;

  // A batch resolves every key's view once: a key in the arena reads the same for every query, a staged
  // key t reads as token(t, pos_max) for queries p with t < p - residual and at fp16 (token(t, t)) for
  // the others (kv/kv_cache.h).
  const int n_arena = cache.n_arena(seq), residual = cache.options().residual;
  if (n > 1) {
    B.view_q.resize(static_cast<size_t>(pos_max) + 1);
    B.view_f.resize(static_cast<size_t>(pos_max) + 1);
    const int f_from = std::max(n_arena, pos0 - residual);
    pool.parallel_for(pos_max + 1, [&](int64_t b, int64_t e) {
      for (int t = static_cast<int>(b); t < e; ++t) {
        B.view_q[t] = cache.token(seq, layer, t, pos_max);
        if (t >= f_from) B.view_f[t] = cache.token(seq, layer, t, t);
      }
    });
  }
  auto build_views = [&](ChunkViews& cv, int p, int c) {
    const int t0 = c * C, t1 = std::min(t0 + C, p + 1), nk = t1 - t0;
    int count[4] = {};
    uint8_t wi[kKeyChunk];
    for (int t = t0; t < t1; ++t) {
      KvTokenView v;
      if (n == 1)
        v = cache.token(seq, layer, t, p);
      else
        v = (t < n_arena || t < p - residual) ? B.view_q[t] : B.view_f[t];
      const int w = width_index(v.bits);
      cv.k[t - t0] = v.k;
      cv.v[t - t0] = v.v;
      wi[t - t0] = static_cast<uint8_t>(w);
      count[w]++;
    }
    cv.count = nk;
    cv.seg[0] = 0;
    for (int w = 0; w < 4; ++w) cv.seg[w + 1] = cv.seg[w] + count[w];
    for (int k = 0; k < nk; ++k) cv.ord[k] = static_cast<uint16_t>(k);
    if (std::max({count[0], count[1], count[2], count[3]}) < nk) {
      // Mixed widths: a stable sort by width.
      const uint8_t* kk[kKeyChunk];
      const uint8_t* vv[kKeyChunk];
      std::memcpy(kk, cv.k, sizeof(kk[0]) * nk);
      std::memcpy(vv, cv.v, sizeof(vv[0]) * nk);
      int at[4] = {cv.seg[0], cv.seg[1], cv.seg[2], cv.seg[3]};
      for (int k = 0; k < nk; ++k) {
        const int d = at[wi[k]]++;
        cv.k[d] = kk[k];
        cv.v[d] = vv[k];
        cv.ord[d] = static_cast<uint16_t>(k);
      }
    }
  };

  // With received-attention sums, queries run in sub-batches whose exponentials fit a bounded buffer.
  constexpr size_t kMaxEbufFloats = size_t{4} << 20;
  const size_t e_per_query = static_cast<size_t>(nch_max) * nh * C;
  const int sub = want_recv ? static_cast<int>(std::clamp<size_t>(kMaxEbufFloats / e_per_query, 1, n)) : n;
  B.var.assign(static_cast<size_t>(n), 0.0);
  B.wmax.assign(static_cast<size_t>(n), 0.0);
  if (want_recv) {
    B.ebuf.resize(static_cast<size_t>(sub) * e_per_query);
    B.gbuf.resize(static_cast<size_t>(sub) * nch_max * nh);
    B.ord.resize(static_cast<size_t>(sub) * nch_max * C);
  }
  const size_t part_per_query = static_cast<size_t>(nch_max) * geo.n_kv * geo.partial_stride;

  for (int i0 = 0; i0 < n; i0 += sub) {
    const int i1 = std::min(n, i0 + sub);
    auto e_at = [&](int i, int c) {
      return want_recv ? B.ebuf.data() + (static_cast<size_t>(i - i0) * nch_max + c) * nh * C : nullptr;
    };
    auto ord_at = [&](int i, int c) {
      return B.ord.data() + (static_cast<size_t>(i - i0) * nch_max + c) * C;
    };
    auto g_at = [&](int i) {
      return want_recv ? B.gbuf.data() + static_cast<size_t>(i - i0) * nch_max * nh : nullptr;
    };
    auto received = [&](int i, int c) {
      const int nk = std::min(C, pos0 + i + 1 - c * C);
      HWY_DYNAMIC_DISPATCH(ReceivedKernel)
      (nk, nh, e_at(i, c), g_at(i) + static_cast<size_t>(c) * nh, ord_at(i, c),
       stats[i].received->data() + static_cast<size_t>(c) * C);
    };
    auto merge = [&](int i, const float* partials) {
      HWY_DYNAMIC_DISPATCH(MergeKernel)
      (geo, n_chunks(i), partials, pos0 + i + 1, out + i * qstride, stats ? &B.var[i] : nullptr,
       stats ? &B.wmax[i] : nullptr, g_at(i));
      // A lone query (decode) adds its received attention here, saving a pass over the threads.
      if (n == 1 && want_recv)
        for (int c = 0; c < n_chunks(i); ++c) received(i, c);
    };
    auto run_chunk = [&](ThreadScratch& s, int i, int c, const float* const* qdom, float* partial) {
      build_views(s.views, pos0 + i, c);
      if (want_recv) std::memcpy(ord_at(i, c), s.views.ord, sizeof(uint16_t) * s.views.count);
      HWY_DYNAMIC_DISPATCH(ChunkKernel)
      (geo, s.views, qdom, partial, e_at(i, c), s.chunk_scratch(geo), stats != nullptr);
    };
    auto qdom_of = [&](const float* qi, const float* prep, const float** qdom) {
      for (int h = 0; h < nh; ++h) {
        qdom[h] = qi + static_cast<size_t>(h) * hd;
        for (int d = 1; d < geo.n_dom; ++d)
          qdom[d * nh + h] = prep + (static_cast<size_t>(d - 1) * nh + h) * hd;
      }
    };
    std::atomic<int> next{0};
    if (split) {
      // Items (i, c) in query order; every query's permuted copies are made up front.
      std::vector<int> first(static_cast<size_t>(i1 - i0) + 1, 0);
      for (int i = i0; i < i1; ++i) first[i - i0 + 1] = first[i - i0] + n_chunks(i);
      const int n_items = first.back();
      B.qprep.resize(static_cast<size_t>(i1 - i0) * (kDomains - 1) * qstride);
      for (int i = i0; i < i1; ++i)
        for (int d = 1; d < geo.n_dom; ++d)
          permute_query(q + i * qstride, geo, d,
                        B.qprep.data() + static_cast<size_t>(i - i0) * (kDomains - 1) * qstride);
      B.partial.resize(static_cast<size_t>(i1 - i0) * part_per_query);
      if (B.remaining_size < static_cast<size_t>(i1 - i0)) {
        B.remaining_size = static_cast<size_t>(i1 - i0);
        B.remaining.reset(new std::atomic<int>[B.remaining_size]);
      }
      for (int i = i0; i < i1; ++i) B.remaining[i - i0].store(n_chunks(i), std::memory_order_relaxed);
      pool.run_on_all([&](int, int) {
        ThreadScratch& s = thread_scratch();
        std::vector<const float*> qdv(static_cast<size_t>(kDomains) * nh);
        const float** qd = qdv.data();
        for (;;) {
          const int it = next.fetch_add(1, std::memory_order_relaxed);
          if (it >= n_items) break;
          const int i =
              i0 + static_cast<int>(std::upper_bound(first.begin(), first.end(), it) - first.begin()) - 1;
          const int c = it - first[i - i0];
          qdom_of(q + i * qstride, B.qprep.data() + static_cast<size_t>(i - i0) * (kDomains - 1) * qstride,
                  qd);
          float* qpart = B.partial.data() + static_cast<size_t>(i - i0) * part_per_query;
          run_chunk(s, i, c, qd, qpart + static_cast<size_t>(c) * geo.n_kv * geo.partial_stride);
          if (B.remaining[i - i0].fetch_sub(1, std::memory_order_acq_rel) == 1) merge(i, qpart);
        }
      });
    } else {
      // Items are whole queries, longest first.
      const int n_items = i1 - i0;
      pool.run_on_all([&](int, int) {
        ThreadScratch& s = thread_scratch();
        std::vector<const float*> qd(static_cast<size_t>(kDomains) * nh);
        s.qprep.resize((kDomains - 1) * qstride);
        s.partial.resize(part_per_query);
        for (;;) {
          const int it = next.fetch_add(1, std::memory_order_relaxed);
          if (it >= n_items) break;
          const int i = i1 - 1 - it;
          qdom_of(q + i * qstride, s.qprep.data(), qd.data());
          bool prepared[kDomains] = {true};
          for (int c = 0; c < n_chunks(i); ++c) {
            build_views(s.views, pos0 + i, c);
            for (int w = 0; w < 4; ++w) {
              const int d = geo.kdom[w];
              if (s.views.seg[w + 1] > s.views.seg[w] && !prepared[d]) {
                permute_query(q + i * qstride, geo, d, s.qprep.data());
                prepared[d] = true;
              }
            }
            if (want_recv) std::memcpy(ord_at(i, c), s.views.ord, sizeof(uint16_t) * s.views.count);
            HWY_DYNAMIC_DISPATCH(ChunkKernel)
            (geo, s.views, qd.data(),
             s.partial.data() + static_cast<size_t>(c) * geo.n_kv * geo.partial_stride, e_at(i, c),
             s.chunk_scratch(geo), stats != nullptr);
          }
          merge(i, s.partial.data());
        }
      });
    }
    if (want_recv && n > 1) {
      // Per chunk of key positions (so no two threads add to one position), queries in order.
      const int nch_sub = n_chunks(i1 - 1);
      std::atomic<int> next_c{0};
      pool.run_on_all([&](int, int) {
        for (;;) {
          const int c = next_c.fetch_add(1, std::memory_order_relaxed);
          if (c >= nch_sub) break;
          for (int i = i0; i < i1; ++i)
            if (stats[i].received && c < n_chunks(i)) received(i, c);
        }
      });
    }
  }
  if (stats)
    for (int i = 0; i < n; ++i) {
      stats[i].var_sum += B.var[i];
      stats[i].max_weight_sum += B.wmax[i];
      stats[i].var_count += nh;
    }
}

}  // namespace kvd::cpu
#endif  // HWY_ONCE
