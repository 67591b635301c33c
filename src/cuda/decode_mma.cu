// Decode attention (one query per head) over the paged mixed-precision KV cache on tensor cores, built
// to stream pages at memory speed:
//  - block (chunk of pages, KV head), 256 threads; a page's bytes for the KV head (its header, then each
//    slot's K and V segments) are copied into shared memory with cp.async, kStages pages ahead, so a
//    block always has pages in flight while it computes one;
//  - scores and outputs by mma.m16n8k16 (fp16 in, fp32 accumulate). The stored codes are small integers,
//    exact in fp16, so K and V go in as codes and their scales and minimums are applied in fp32 around
//    the products (q.k = scale * (q.c) + min * sum(q) per group; the output's sum p * scale * c, then
//    sum p * min per group). The fp16 operands that are not exact (q, and the weights times the V
//    scales) are split into a high and a low half (x = hi + lo, |lo| <= 2^-11 |x|), placed in rows g and
//    g + 8 of the 16-row operand: the G <= 8 heads use 8 rows, so the split costs no extra instruction and
//    the result keeps fp32-level accuracy (the reference's tolerance holds).
//  - codes become fp16 operands without conversion instructions: a byte permute places two codes in the
//    mantissas of 1024.0 (0x6400), one fused multiply-add of the pair removes the 1024 and the codes'
//    bit offsets (powers of two: exact).
// Pages and widths as attn_decode_paged_kernel (kv_device.cu): a page has one width, the unpacking is
// compiled per width; one more block reads the fp16 ring (the step's own token, the residual window);
// the blocks' partial states are merged by merge_parts (decode_parts.cuh).
#include <cuda_fp16.h>

#include <algorithm>

#include "cuda/decode_mma.cuh"
#include "cuda/decode_parts.cuh"
#include "cuda/device_memory.cuh"

namespace kvd::cuda {
namespace {

constexpr int kStages = 3;  // pages in shared memory at once: one computed, two in flight
constexpr int kSlots = 64;  // slots a page (kPageShift)
constexpr int kHeaderBytes = 4 * kSlots;
constexpr int kGroup = 32;  // elements a quantized group (launch_decode_mma checks every class)
static_assert(kSlots == 1 << kPageShift, "the kernel reads pages of 64 slots");

// ---- PTX wrappers ----
__device__ inline void cp_async16(void* smem, const void* gmem) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(s), "l"(gmem) : "memory");
}
__device__ inline void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N>
__device__ inline void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

__device__ inline uint32_t prmt(uint32_t a, uint32_t b, uint32_t sel) {
  uint32_t r;
  asm("prmt.b32 %0, %1, %2, %3;\n" : "=r"(r) : "r"(a), "r"(b), "r"(sel));
  return r;
}

// d += a * b, m16n8k16, row-major A (16 x 16 fp16), column-major B (16 x 8 fp16), fp32 accumulators.
// Lane (g = lane / 4, t = lane % 4) holds A rows g and g + 8, columns 2t, 2t + 1, 2t + 8, 2t + 9 (a[0]:
// row g cols 2t..; a[1]: row g + 8; a[2]: row g, cols 2t + 8..; a[3]: row g + 8), B rows (k) 2t, 2t + 1
// (b0) and 2t + 8, 2t + 9 (b1) of column g, and D rows g (d[0], d[1]) and g + 8 (d[2], d[3]) of columns
// 2t, 2t + 1. The lower-indexed element of a pair is in the low 16 bits.
__device__ inline void mma16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ inline uint32_t h2_bits(__half2 h) { return *reinterpret_cast<uint32_t*>(&h); }
__device__ inline __half2 bits_h2(uint32_t u) { return *reinterpret_cast<__half2*>(&u); }

// x = hi + lo with hi, lo fp16 (lo the rounding error of hi).
__device__ inline void split_half(float x, __half& hi, __half& lo) {
  hi = __float2half_rn(x);
  lo = __float2half_rn(x - __half2float(hi));
}
// The A registers of one (hi, lo) pair of columns: hi in row g, lo in row g + 8.
__device__ inline void split_pair(float x0, float x1, uint32_t& hi, uint32_t& lo) {
  __half h0, l0, h1, l1;
  split_half(x0, h0, l0);
  split_half(x1, h1, l1);
  hi = h2_bits(__halves2half2(h0, h1));
  lo = h2_bits(__halves2half2(l0, l1));
}

// Two codes in the mantissas of 1024 (from a byte permute and a mask: r = (x & mask) | 0x64006400,
// the codes at bit offsets o0 in the low half, o1 in the high half), as exact fp16 values c0, c1:
// (1024 + c 2^o) 2^-o - 1024 2^-o.
struct CodeFix {
  uint32_t mul, add;
};
__device__ inline CodeFix code_fix(int o0, int o1) {
  const float m0 = ldexpf(1.0f, -o0), m1 = ldexpf(1.0f, -o1);
  return {h2_bits(__floats2half2_rn(m0, m1)), h2_bits(__floats2half2_rn(-1024.0f * m0, -1024.0f * m1))};
}
__device__ inline uint32_t codes_to_half2(uint32_t r, uint32_t mask, CodeFix f) {
  return h2_bits(__hfma2(bits_h2((r & mask) | 0x64006400u), bits_h2(f.mul), bits_h2(f.add)));
}

// Where the KV head's K and V segments of a slot's record lie, and where they go in shared memory:
// the 16-byte chunks covering the segment (off16: first chunk's offset in the record, n16 chunks,
// mis: the segment's offset in the first chunk), stride bytes apart a slot (an odd number of chunks,
// so the 8 slots a fragment reads fall in different banks).
struct SegGeom {
  int off16, mis, n16, stride;
};
__host__ __device__ inline SegGeom seg_geom(int start, int bytes) {
  SegGeom s;
  s.off16 = start & ~15;
  s.mis = start & 15;
  s.n16 = (s.mis + bytes + 15) >> 4;
  s.stride = 16 * (s.n16 | 1);
  return s;
}
__host__ __device__ inline int seg_bytes(int bits, int group, int hd) {
  return bits == 16 ? 2 * hd : (hd / group) * (4 + group * bits / 8);
}
struct StageGeom {
  SegGeom k, v;
  __host__ __device__ int bytes() const { return kHeaderBytes + kSlots * (k.stride + v.stride); }
};
__host__ __device__ inline StageGeom stage_geom(const KvClass& c, int kvh, int hd) {
  const int seg = seg_bytes(c.k_bits, c.group, hd);
  return {seg_geom(kvh * seg, seg), seg_geom(c.k_row_bytes + kvh * seg, seg)};
}

// One page's header and the KV head's segments of every slot into a stage (all threads: 4 a slot).
__device__ inline void issue_page(const uint8_t* page, const uint8_t* recs, int tok_bytes,
                                  const StageGeom& sg, uint8_t* stage) {
  const int j = threadIdx.x & (kSlots - 1), c0 = threadIdx.x >> 6;
  if (threadIdx.x < kHeaderBytes / 16) cp_async16(stage + 16 * threadIdx.x, page + 16 * threadIdx.x);
  const uint8_t* rec = recs + static_cast<size_t>(j) * tok_bytes;
  uint8_t* dk = stage + kHeaderBytes + j * sg.k.stride;
  uint8_t* dv = stage + kHeaderBytes + kSlots * sg.k.stride + j * sg.v.stride;
  for (int c = c0; c < sg.k.n16; c += 4) cp_async16(dk + 16 * c, rec + sg.k.off16 + 16 * c);
  for (int c = c0; c < sg.v.n16; c += 4) cp_async16(dv + 16 * c, rec + sg.v.off16 + 16 * c);
}

// Per width class, what the kernel needs of it (shared memory, filled once a block): stage geometry,
// record bytes, the layer's records' offset in a page, the width.
struct ClassInfo {
  StageGeom sg;
  int tok_bytes, bits;
  uint32_t rec_off;
};

// The block's running softmax state, in shared memory: per head the max, sums of weights and of their
// squares, the last page's rescale factor, and per V group the sum of weight * min (quantized pages);
// the page's scores, and its weights times each V group's scales as the output product's A operand
// (hi, lo halves; group 0 only on 16-bit pages, whose weights are not scaled).
template <int HD, int G>
struct Online {
  float m[G], l[G], l2[G], corr[G];
  float ms[G][HD / kGroup];
  float s[G][kSlots];
  __half ph[HD / kGroup][G][kSlots], pl[HD / kGroup][G][kSlots];
};

// One staged page of width BITS: scores of the G heads (warp w: slots 8w .. 8w + 7), the softmax update
// (warp h: head h), the output update (warp w: dims NTW * 8 w ..). Slots whose position is not below
// lim do not count. qa: the lane's Q fragments (hi, lo), qsum: per group the sum of the lane's head's
// (scaled) q. acc: the lane's output accumulators.
template <int HD, int G, int BITS>
__device__ inline void attend_page(const uint8_t* stage, const StageGeom& sg, int lim,
                                   const uint32_t (&qa)[HD / 16][4], const float (&qsum)[HD / kGroup],
                                   Online<HD, G>& st, float (&acc)[HD / 64][4]) {
  constexpr int NTW = HD / 64;  // n-tiles of 8 output dims a warp
  constexpr int NG = HD / kGroup, KPG = kGroup / 16;
  constexpr int GB = 4 + kGroup * BITS / 8;  // a quantized group: [fp16 scale][fp16 min][codes]
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
  const int32_t* pos = reinterpret_cast<const int32_t*>(stage);
  const uint8_t* kbase = stage + kHeaderBytes + sg.k.mis;
  const uint8_t* vbase = stage + kHeaderBytes + kSlots * sg.k.stride + sg.v.mis;
  // ---- scores: this warp's 8 slots; the lane's B column is slot n0 + g, its D columns n0 + 2t, + 1 ----
  {
    const int n0 = 8 * warp, ja = n0 + 2 * t, jb = ja + 1;
    const uint8_t* krow = kbase + (n0 + g) * sg.k.stride;
    float sa = 0, sb = 0;
    if constexpr (BITS == 16) {
      float d[4] = {0, 0, 0, 0};
      const uint32_t* w = reinterpret_cast<const uint32_t*>(krow);
#pragma unroll
      for (int ks = 0; ks < HD / 16; ++ks) mma16816(d, qa[ks], w[8 * ks + t], w[8 * ks + t + 4]);
      sa = d[0] + d[2];
      sb = d[1] + d[3];
    } else {
      // Per lane, the byte permute and mask that put its two codes (dims 2t, 2t + 1 of a k-step, then
      // 2t + 8, 2t + 9) in the mantissas, and the fix-up of their bit offsets.
      uint32_t sel0, sel1, mask;
      CodeFix fix;
      if constexpr (BITS == 8) {  // dims 2t, 2t+1: bytes 2(t&1), +1 of word t/2 (then word 2 + t/2)
        const uint32_t b = 2 * (t & 1);
        sel0 = sel1 = b | 4u << 4 | (b + 1) << 8 | 4u << 12;
        mask = 0x00ff00ffu;
        fix = code_fix(0, 0);
      } else if constexpr (BITS == 4) {  // byte t of word 0 (then of word 1): low, high nibble
        sel0 = sel1 = t | 4u << 4 | t << 8 | 4u << 12;
        mask = 0x00f0000fu;
        fix = code_fix(0, 4);
      } else {  // 2 bits: byte t/2 (then 2 + t/2) of the k-step's word, nibble t&1
        const uint32_t b = t >> 1;
        sel0 = b | 4u << 4 | b << 8 | 4u << 12;
        sel1 = (b + 2) | 4u << 4 | (b + 2) << 8 | 4u << 12;
        mask = 0x000c0003u << (4 * (t & 1));
        fix = code_fix(4 * (t & 1), 4 * (t & 1) + 2);
      }
      const uint8_t* rowa = kbase + ja * sg.k.stride;
      const uint8_t* rowb = kbase + jb * sg.k.stride;
#pragma unroll
      for (int gi = 0; gi < NG; ++gi) {
        const uint32_t* cw = reinterpret_cast<const uint32_t*>(krow + gi * GB + 4);
        float d[4] = {0, 0, 0, 0};
#pragma unroll
        for (int kk = 0; kk < KPG; ++kk) {
          uint32_t b0, b1;
          if constexpr (BITS == 8) {
            b0 = codes_to_half2(prmt(cw[4 * kk + (t >> 1)], 0, sel0), mask, fix);
            b1 = codes_to_half2(prmt(cw[4 * kk + 2 + (t >> 1)], 0, sel1), mask, fix);
          } else if constexpr (BITS == 4) {
            b0 = codes_to_half2(prmt(cw[2 * kk], 0, sel0), mask, fix);
            b1 = codes_to_half2(prmt(cw[2 * kk + 1], 0, sel1), mask, fix);
          } else {
            const uint32_t w = cw[kk];
            b0 = codes_to_half2(prmt(w, 0, sel0), mask, fix);
            b1 = codes_to_half2(prmt(w, 0, sel1), mask, fix);
          }
          mma16816(d, qa[gi * KPG + kk], b0, b1);
        }
        const __half2 ha = bits_h2(*reinterpret_cast<const uint32_t*>(rowa + gi * GB));
        const __half2 hb = bits_h2(*reinterpret_cast<const uint32_t*>(rowb + gi * GB));
        sa += __low2float(ha) * (d[0] + d[2]) + __high2float(ha) * qsum[gi];
        sb += __low2float(hb) * (d[1] + d[3]) + __high2float(hb) * qsum[gi];
      }
    }
    if (g < G) {
      st.s[g][ja] = pos[ja] < lim ? sa : -INFINITY;
      st.s[g][jb] = pos[jb] < lim ? sb : -INFINITY;
    }
  }
  __syncthreads();
  // ---- softmax update: warp h, slots lane and lane + 32; the weights times each V group's scale as
  // (hi, lo) halves, and per V group the sum of weight * min ----
  for (int h = warp; h < G; h += 8) {
    const float a = st.s[h][lane], b = st.s[h][lane + 32];
    float tm = fmaxf(a, b);
    for (int off = 16; off > 0; off >>= 1) tm = fmaxf(tm, __shfl_xor_sync(0xffffffffu, tm, off));
    const float m_old = st.m[h], mn = fmaxf(m_old, tm);
    float corr = 1, pa = 0, pb = 0;
    if (mn != -INFINITY) {
      corr = m_old == -INFINITY ? 0.0f : expf(m_old - mn);
      pa = a == -INFINITY ? 0.0f : expf(a - mn);
      pb = b == -INFINITY ? 0.0f : expf(b - mn);
    }
    float ps = pa + pb, ps2 = pa * pa + pb * pb;
    for (int off = 16; off > 0; off >>= 1) {
      ps += __shfl_xor_sync(0xffffffffu, ps, off);
      ps2 += __shfl_xor_sync(0xffffffffu, ps2, off);
    }
    if constexpr (BITS == 16) {
      split_half(pa, st.ph[0][h][lane], st.pl[0][h][lane]);
      split_half(pb, st.ph[0][h][lane + 32], st.pl[0][h][lane + 32]);
#pragma unroll
      for (int gi = 0; gi < NG; ++gi)
        if (lane == 0) st.ms[h][gi] *= corr;
    } else {
#pragma unroll
      for (int gi = 0; gi < NG; ++gi) {
        // Weights of empty or masked slots are 0 and stay 0 whatever their bytes (scale, min) hold.
        const __half2 ga = bits_h2(*reinterpret_cast<const uint32_t*>(vbase + lane * sg.v.stride + gi * GB));
        const __half2 gb =
            bits_h2(*reinterpret_cast<const uint32_t*>(vbase + (lane + 32) * sg.v.stride + gi * GB));
        split_half(pa != 0 ? pa * __low2float(ga) : 0.0f, st.ph[gi][h][lane], st.pl[gi][h][lane]);
        split_half(pb != 0 ? pb * __low2float(gb) : 0.0f, st.ph[gi][h][lane + 32], st.pl[gi][h][lane + 32]);
        float sm = (pa != 0 ? pa * __high2float(ga) : 0.0f) + (pb != 0 ? pb * __high2float(gb) : 0.0f);
        for (int off = 16; off > 0; off >>= 1) sm += __shfl_xor_sync(0xffffffffu, sm, off);
        if (lane == 0) st.ms[h][gi] = st.ms[h][gi] * corr + sm;
      }
    }
    if (lane == 0) {
      st.l[h] = st.l[h] * corr + ps;
      st.l2[h] = st.l2[h] * corr * corr + ps2;
      st.m[h] = mn;
      st.corr[h] = corr;
    }
  }
  __syncthreads();
  // ---- outputs: this warp's NTW n-tiles (dims nb ..), k-steps of 16 slots ----
  const float corr = g < G ? st.corr[g] : 0.0f;
#pragma unroll
  for (int n = 0; n < NTW; ++n)
#pragma unroll
    for (int i = 0; i < 4; ++i) acc[n][i] *= corr;
  const int nb = NTW * 8 * warp;  // the warp's first dim; its n-tiles share a V group
  const int gi = nb / kGroup, pg = BITS == 16 ? 0 : gi;
  const int gh = min(g, G - 1);  // rows of heads >= G are zero
  uint32_t vsel = 0, vmask = 0, vmask2 = 0;
  CodeFix vfix{};
  if constexpr (BITS == 16) {
    vsel = (g & 1) ? 0x7632u : 0x5410u;
  } else if constexpr (BITS == 8) {  // dim: byte g&3 of a word
    const uint32_t b = g & 3;
    vsel = b | b << 4 | (4 + b) << 8 | (4 + b) << 12;
    vmask = 0x00ff00ffu;
    vfix = code_fix(0, 0);
  } else if constexpr (BITS == 4) {  // byte g/2 of the n-tile's word, nibble g&1
    const uint32_t b = g >> 1;
    vsel = b | b << 4 | (4 + b) << 8 | (4 + b) << 12;
    vmask = 0x000f000fu << (4 * (g & 1));
    vfix = code_fix(4 * (g & 1), 4 * (g & 1));
  } else {  // 2 bits: 8 dims are 16 bits of a word; dim d is byte (d % 16) / 4 (below), crumb g & 3
    vmask = 0x00030003u << (2 * (g & 3));
    vfix = code_fix(2 * (g & 3), 2 * (g & 3));
  }
  const uint32_t* ph = reinterpret_cast<const uint32_t*>(st.ph[pg][gh]);
  const uint32_t* pl = reinterpret_cast<const uint32_t*>(st.pl[pg][gh]);
#pragma unroll
  for (int kk = 0; kk < kSlots / 16; ++kk) {
    const int j0 = 16 * kk + 2 * t;  // the lane's slots: j0, j0 + 1, j0 + 8, j0 + 9
    uint32_t a[4];
    a[0] = g < G ? ph[j0 / 2] : 0u;
    a[1] = g < G ? pl[j0 / 2] : 0u;
    a[2] = g < G ? ph[j0 / 2 + 4] : 0u;
    a[3] = g < G ? pl[j0 / 2 + 4] : 0u;
    if constexpr (BITS == 16) {
      // Empty or masked slots have weight 0, but their fp16 bytes may be anything (NaN): zeroed. (B is
      // every head's: the slot's validity decides.)
      vmask = (pos[j0] < lim ? 0xffffu : 0u) | (pos[j0 + 1] < lim ? 0xffff0000u : 0u);
      vmask2 = (pos[j0 + 8] < lim ? 0xffffu : 0u) | (pos[j0 + 9] < lim ? 0xffff0000u : 0u);
    }
    const uint8_t* r0 = vbase + j0 * sg.v.stride;
    const uint8_t* r1 = r0 + sg.v.stride;
    const uint8_t* r8 = r0 + 8 * sg.v.stride;
    const uint8_t* r9 = r8 + sg.v.stride;
#pragma unroll
    for (int n = 0; n < NTW; ++n) {
      const int d = nb + 8 * n + g;                                       // the lane's B column
      const int wi = BITS == 16 ? 0 : 1 + (d - gi * kGroup) * BITS / 32;  // word after the group header
      const int off = BITS == 16 ? 2 * (d & ~1) : gi * GB + 4 * wi;
      const uint32_t w0 = *reinterpret_cast<const uint32_t*>(r0 + off);
      const uint32_t w1 = *reinterpret_cast<const uint32_t*>(r1 + off);
      const uint32_t w8 = *reinterpret_cast<const uint32_t*>(r8 + off);
      const uint32_t w9 = *reinterpret_cast<const uint32_t*>(r9 + off);
      uint32_t b0, b1;
      if constexpr (BITS == 16) {
        b0 = prmt(w0, w1, vsel) & vmask;
        b1 = prmt(w8, w9, vsel) & vmask2;
      } else if constexpr (BITS == 2) {  // the byte of dim d: (d % 16) / 4
        const uint32_t b = (d & 15) >> 2;
        const uint32_t sel = b | b << 4 | (4 + b) << 8 | (4 + b) << 12;
        b0 = codes_to_half2(prmt(w0, w1, sel), vmask, vfix);
        b1 = codes_to_half2(prmt(w8, w9, sel), vmask, vfix);
      } else {
        b0 = codes_to_half2(prmt(w0, w1, vsel), vmask, vfix);
        b1 = codes_to_half2(prmt(w8, w9, vsel), vmask, vfix);
      }
      mma16816(acc[n], a, b0, b1);
    }
  }
}

// The ring's keys base .. base + 63 (those below n_keys) as an fp16 page in a stage: header positions,
// K and V segments.
template <int HD>
__device__ inline void stage_ring(const KvDev& kv, int layer, int kvh, int base, int n_keys,
                                  const StageGeom& sg, uint8_t* stage) {
  int32_t* pos = reinterpret_cast<int32_t*>(stage);
  if (threadIdx.x < kSlots)
    pos[threadIdx.x] = base + static_cast<int>(threadIdx.x) < n_keys ? base + static_cast<int>(threadIdx.x)
                                                                     : KvPageGeom::kEmptySlot;
  constexpr int N16 = 2 * HD / 16;
  for (int i = threadIdx.x; i < 2 * kSlots * N16; i += blockDim.x) {
    const int v = i / (kSlots * N16), r = i - v * kSlots * N16, j = r / N16, c = r - j * N16;
    const int tk = base + j;
    if (tk >= n_keys) continue;
    const uint16_t* src = (v ? kv.ring_v : kv.ring_k) +
                          (static_cast<size_t>(layer) * kv.ring + tk % kv.ring) * kv.kv_dim + kvh * HD;
    uint8_t* dst = stage + kHeaderBytes + (v ? kSlots * sg.k.stride + j * sg.v.stride : j * sg.k.stride);
    cp_async16(dst + 16 * c, reinterpret_cast<const uint8_t*>(src) + 16 * c);
  }
}

template <int HD, int G>
__device__ inline void attend_staged(const uint8_t* stage, const ClassInfo& ci, int lim,
                                     const uint32_t (&qa)[HD / 16][4], const float (&qsum)[HD / kGroup],
                                     Online<HD, G>& st, float (&acc)[HD / 64][4]) {
  switch (ci.bits) {  // K and V share the width on the GPU
    case 16:
      attend_page<HD, G, 16>(stage, ci.sg, lim, qa, qsum, st, acc);
      break;
    case 8:
      attend_page<HD, G, 8>(stage, ci.sg, lim, qa, qsum, st, acc);
      break;
    case 4:
      attend_page<HD, G, 4>(stage, ci.sg, lim, qa, qsum, st, acc);
      break;
    default:
      attend_page<HD, G, 2>(stage, ci.sg, lim, qa, qsum, st, acc);
      break;
  }
}

template <int HD>
__host__ __device__ constexpr int
max_stage_bytes() {  // the 16-bit class, whose segments are the largest (2 HD bytes)
  return kHeaderBytes + kSlots * 2 * 16 * (((2 * HD + 15) / 16) | 1);
}

template <int HD, int G>
__global__ void __launch_bounds__(256, 2)
    attn_decode_mma_kernel(KvDev kv, int layer, const float* q, int n_heads, const StepParams* params,
                           float* part, float* out, int stage_bytes, int fp16_cls, int max_chunks) {
  static_assert(G >= 1 && G <= 8, "heads a KV head: rows of the 16-row operand, hi and lo");
  constexpr int NTW = HD / 64;
  extern __shared__ __align__(16) uint8_t stages[];
  __shared__ Online<HD, G> st;
  const int chunk = blockIdx.x, kvh = blockIdx.y;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
  const int pos = params->pos0, n_keys = pos + 1;
  const int n_pages = *kv.n_block;
  const int per = max(1, (n_pages + max_chunks - 1) / max_chunks);
  const int n_chunks = (n_pages + per - 1) / per;
  if (chunk > n_chunks) return;  // exactly n_chunks + 1 blocks reach the counter in merge_parts
  const int p0 = chunk * per, p1 = chunk < n_chunks ? min(n_pages, p0 + per) : p0;
  __shared__ ClassInfo s_ci[kMaxKvClasses];
  __shared__ int s_stage_cls[kStages];  // the class of the page in each stage
  KvPageRef next = p0 < p1 ? kv.block[p0] : KvPageRef{};
  if (threadIdx.x < kv.n_classes) {
    const int c = threadIdx.x;
    s_ci[c].sg = stage_geom(kv.cls[c], kvh, HD);
    s_ci[c].tok_bytes = static_cast<int>(kv.geom.token_bytes[c]);
    s_ci[c].bits = kv.cls[c].k_bits;
    s_ci[c].rec_off = static_cast<uint32_t>(kv.geom.record_offset(c, layer, 0));
  }
  __syncthreads();
  // Page p's copies into stage s (p < p1; `next` holds its table entry and takes the following one's).
  // Thread 0 records the stage's class: every thread read the stage's previous class before the sync
  // that precedes this.
  auto issue = [&](int p, int s) {
    const KvPageRef ref = next;
    if (p + 1 < p1) next = kv.block[p + 1];
    const ClassInfo& ci = s_ci[ref.cls];
    if (threadIdx.x == 0) s_stage_cls[s] = ref.cls;
    issue_page(ref.data, ref.data + ci.rec_off, ci.tok_bytes, ci.sg, stages + s * stage_bytes);
  };
  // Start the first pages' copies before anything else.
#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    if (p0 + s < p1) issue(p0 + s, s);
    cp_async_commit();
  }
  // The lane's Q fragments: head g (rows g: hi, g + 8: lo), dims 2t, 2t + 1, 2t + 8, 2t + 9 of each
  // k-step, scaled by 1/sqrt(HD); per group of 32 dims, the head's sum of q.
  const float scale = rsqrtf(static_cast<float>(HD));
  uint32_t qa[HD / 16][4];
  float qsum[HD / kGroup];
  {
    const float* qh = q + (kvh * G + min(g, G - 1)) * HD;
#pragma unroll
    for (int gi = 0; gi < HD / 32; ++gi) qsum[gi] = 0;
#pragma unroll
    for (int ks = 0; ks < HD / 16; ++ks) {
      float x[4];
      const int d0 = 16 * ks + 2 * t;
      x[0] = g < G ? qh[d0] * scale : 0.0f;
      x[1] = g < G ? qh[d0 + 1] * scale : 0.0f;
      x[2] = g < G ? qh[d0 + 8] * scale : 0.0f;
      x[3] = g < G ? qh[d0 + 9] * scale : 0.0f;
      split_pair(x[0], x[1], qa[ks][0], qa[ks][1]);
      split_pair(x[2], x[3], qa[ks][2], qa[ks][3]);
      qsum[ks / 2] += (x[0] + x[1]) + (x[2] + x[3]);
    }
#pragma unroll
    for (int gi = 0; gi < HD / 32; ++gi) {
      qsum[gi] += __shfl_xor_sync(0xffffffffu, qsum[gi], 1);
      qsum[gi] += __shfl_xor_sync(0xffffffffu, qsum[gi], 2);
    }
  }
  if (threadIdx.x < G) {
    st.m[threadIdx.x] = -INFINITY;
    st.l[threadIdx.x] = st.l2[threadIdx.x] = 0;
    for (int gi = 0; gi < HD / 32; ++gi) st.ms[threadIdx.x][gi] = 0;
  }
  float acc[NTW][4];
#pragma unroll
  for (int n = 0; n < NTW; ++n)
#pragma unroll
    for (int i = 0; i < 4; ++i) acc[n][i] = 0;
  const int quant_below = min(pos - kv.residual, params->fp16_from);
  if (chunk < n_chunks) {
    for (int p = p0; p < p1; ++p) {
      const int i = p - p0;
      cp_async_wait<kStages - 2>();  // this thread's copies of page p are in
      __syncthreads();               // everyone's are, and page p - 1 is consumed
      if (p + kStages - 1 < p1) issue(p + kStages - 1, (i + kStages - 1) % kStages);  // page p - 1's stage
      cp_async_commit();
      const int cur = s_stage_cls[i % kStages];
      attend_staged<HD, G>(stages + (i % kStages) * stage_bytes, s_ci[cur], quant_below, qa, qsum, st, acc);
    }
  } else {  // the ring: keys [max(0, quant_below), pos] at fp16, 64 at a time
    for (int base = max(0, quant_below); base < n_keys; base += kSlots) {
      __syncthreads();  // the previous keys are consumed
      stage_ring<HD>(kv, layer, kvh, base, n_keys, s_ci[fp16_cls].sg, stages);
      cp_async_commit();
      cp_async_wait<0>();
      __syncthreads();
      attend_staged<HD, G>(stages, s_ci[fp16_cls], n_keys, qa, qsum, st, acc);
    }
  }
  cp_async_wait<0>();
  __syncthreads();
  // The lane's outputs: head g, dims nb + 8n + 2t, + 1 (hi row + lo row + the minimums' share).
  const int n_parts = n_chunks + 1;
  if (g < G) {
    const int nb = NTW * 8 * warp;
    for (int n = 0; n < NTW; ++n) {
      const int d = nb + 8 * n + 2 * t;
      const float ms = st.ms[g][d / 32];
      const float o0 = acc[n][0] + acc[n][2] + ms, o1 = acc[n][1] + acc[n][3] + ms;
      const int h = kvh * G + g;
      if (n_parts == 1) {
        out[h * HD + d] = o0 / st.l[g];
        out[h * HD + d + 1] = o1 / st.l[g];
        continue;
      }
      float* pp = part + (static_cast<size_t>(h) * kDecodeParts + chunk) * (HD + 3);
      pp[d] = o0;
      pp[d + 1] = o1;
      if (d == 0) {
        pp[HD] = st.m[g];
        pp[HD + 1] = st.l[g];
        pp[HD + 2] = st.l2[g];
      }
    }
  }
  if (n_parts == 1) {
    if (threadIdx.x < G && params->stats)
      write_attn_stats(kv.stat_attn + (static_cast<size_t>(layer) * n_heads + kvh * G + threadIdx.x) * 2,
                       st.l[threadIdx.x], st.l2[threadIdx.x], n_keys);
    return;
  }
  static_assert(sizeof(MergeScratch<G>) <= kStages * max_stage_bytes<64>(), "the merge uses the stages");
  merge_parts<HD, G>(kv, layer, n_heads, params, part, out, n_parts, n_keys,
                     *reinterpret_cast<MergeScratch<G>*>(stages));
}

// Shared memory of the stages: the largest class's stage (the fp16 ring uses the 16-bit class's).
int stage_bytes_for(const KvDev& kv) {
  int most = 0;
  for (int c = 0; c < kv.n_classes; ++c)
    for (int h = 0; h < kv.n_kv_heads; ++h) most = max(most, stage_geom(kv.cls[c], h, kv.head_dim).bytes());
  return (most + 15) & ~15;
}

// Chunks a KV head: about two waves of blocks (two an SM) in all, so that each block streams several
// pages through its stages (the first copies, the Q fragments and the merge are paid per block); at
// least 8, at most kDecodeBlocks.
int chunks_per_head(int n_kv_heads) {
  static const int n_sm = [] {
    int dev = 0, n = 0;
    if (cudaGetDevice(&dev) != cudaSuccess ||
        cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess)
      n = 132;
    return n;
  }();
  return std::clamp(4 * n_sm / std::max(1, n_kv_heads), 8, kDecodeBlocks);
}

template <int HD, int G>
void launch(const KvDev& kv, int layer, const float* q, int n_heads, const StepParams* params, float* part,
            float* out, int sb, int fp16_cls, cudaStream_t s) {
  attn_decode_mma_kernel<HD, G><<<dim3(kDecodeParts, kv.n_kv_heads), 256, kStages * sb, s>>>(
      kv, layer, q, n_heads, params, part, out, sb, fp16_cls, chunks_per_head(kv.n_kv_heads));
}

template <int HD, int G>
void allow_smem() {
  KVD_CUDA(cudaFuncSetAttribute(attn_decode_mma_kernel<HD, G>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                kStages * max_stage_bytes<HD>()));
}

using Launch = void (*)(const KvDev&, int, const float*, int, const StepParams*, float*, float*, int, int,
                        cudaStream_t);

Launch launch_for(int hd, int G) {
  if (G < 1 || G > 8) return nullptr;
  static constexpr Launch k64[9] = {nullptr,       launch<64, 1>, launch<64, 2>, launch<64, 3>, launch<64, 4>,
                                    launch<64, 5>, launch<64, 6>, launch<64, 7>, launch<64, 8>};
  static constexpr Launch k128[9] = {nullptr,        launch<128, 1>, launch<128, 2>,
                                     launch<128, 3>, launch<128, 4>, launch<128, 5>,
                                     launch<128, 6>, launch<128, 7>, launch<128, 8>};
  return hd == 64 ? k64[G] : hd == 128 ? k128[G] : nullptr;
}

}  // namespace

bool launch_decode_mma(const KvDev& kv, int layer, const float* q, int n_heads, int G,
                       const StepParams* params, float* part, float* out, cudaStream_t s) {
  const Launch f = launch_for(kv.head_dim, G);
  if (!f || !kv.block || !kv.n_block || kv.geom.page_shift != kPageShift) return false;
  int fp16 = -1;
  for (int c = 0; c < kv.n_classes; ++c) {
    const KvClass& k = kv.cls[c];
    if (k.k_bits != k.v_bits) return false;
    if (k.k_bits == 16)
      fp16 = c;
    else if (k.group != 32)
      return false;                                      // q sums and V minimums per 32 dims
    if (kv.geom.token_bytes[c] % 16 != 0) return false;  // 16-byte copies of every slot's segments
  }
  const int sb = stage_bytes_for(kv);
  if (fp16 < 0 || sb > (kv.head_dim == 64 ? max_stage_bytes<64>() : max_stage_bytes<128>())) return false;
  f(kv, layer, q, n_heads, params, part, out, sb, fp16, s);
  return true;
}

void prepare_decode_mma() {
  static const bool done = [] {
    allow_smem<64, 1>();
    allow_smem<64, 2>();
    allow_smem<64, 3>();
    allow_smem<64, 4>();
    allow_smem<64, 5>();
    allow_smem<64, 6>();
    allow_smem<64, 7>();
    allow_smem<64, 8>();
    allow_smem<128, 1>();
    allow_smem<128, 2>();
    allow_smem<128, 3>();
    allow_smem<128, 4>();
    allow_smem<128, 5>();
    allow_smem<128, 6>();
    allow_smem<128, 7>();
    allow_smem<128, 8>();
    return true;
  }();
  (void)done;
}

}  // namespace kvd::cuda
