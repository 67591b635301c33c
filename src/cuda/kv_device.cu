// Kernels of the GPU KV cache: RoPE + quantize-on-append (the CPU quantizer's bytes, bit for bit) and
// split-K decode attention over pages of any width mix, with its merge.
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <string>

#include "cuda/decode_mma.cuh"
#include "cuda/decode_parts.cuh"
#include "cuda/device_memory.cuh"
#include "cuda/kv_device.cuh"

namespace kvd::cuda {
namespace {

// One row (kv_dim values, fp16-exact floats in shared memory) stored at a width by the whole block.
__device__ void store_row(const float* x, int bits, int group, int kv_dim, uint8_t* dst) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, n_warps = blockDim.x >> 5;
  if (bits == 16) {
    for (int j = threadIdx.x; j < kv_dim; j += blockDim.x) {
      const uint16_t h = f2h(x[j]);
      dst[2 * j] = static_cast<uint8_t>(h & 0xff);
      dst[2 * j + 1] = static_cast<uint8_t>(h >> 8);
    }
    return;
  }
  const int n_groups = kv_dim / group, code_bytes = group * bits / 8, gb = 4 + code_bytes;
  const int qmax = (1 << bits) - 1, per_byte = 8 / bits;
  for (int g = warp; g < n_groups; g += n_warps) {
    const float* xg = x + g * group;
    float lo = INFINITY, hi = -INFINITY;
    for (int j = lane; j < group; j += 32) {
      lo = fminf(lo, xg[j]);
      hi = fmaxf(hi, xg[j]);
    }
    for (int o = 16; o > 0; o >>= 1) {
      lo = fminf(lo, __shfl_xor_sync(0xffffffffu, lo, o));
      hi = fmaxf(hi, __shfl_xor_sync(0xffffffffu, hi, o));
    }
    // The CPU's std::min keeps the first of equal values, which decides the sign of a zero minimum
    // (and so the stored min's bytes): take the first element equal to it.
    if (lo == 0.0f) {
      int first = group;
      for (int j = lane; j < group; j += 32)
        if (xg[j] == 0.0f) {
          first = j;
          break;
        }
      for (int o = 16; o > 0; o >>= 1) first = min(first, __shfl_xor_sync(0xffffffffu, first, o));
      lo = xg[first];
    }
    uint16_t scale_h, min_h;
    group_scale_min(lo, hi, bits, &scale_h, &min_h);
    const float scale_f = h2f(scale_h), min_f = h2f(min_h);
    const float inv = scale_f > 0 ? __fdiv_rn(1.0f, scale_f) : 0.0f;
    uint8_t* p = dst + g * gb;
    if (lane == 0) {
      p[0] = static_cast<uint8_t>(scale_h & 0xff);
      p[1] = static_cast<uint8_t>(scale_h >> 8);
      p[2] = static_cast<uint8_t>(min_h & 0xff);
      p[3] = static_cast<uint8_t>(min_h >> 8);
    }
    for (int b = lane; b < code_bytes; b += 32) {
      unsigned byte = 0;
      for (int e = 0; e < per_byte; ++e)
        byte |= static_cast<unsigned>(quantize_code(xg[b * per_byte + e], min_f, inv, qmax)) << (e * bits);
      p[4 + b] = static_cast<uint8_t>(byte);
    }
  }
}

// Start of a token's record (K row, then V row) in one layer: class cls, location loc.
__device__ inline uint8_t* record_at(const KvDev& kv, int layer, int cls, uint32_t loc) {
  return kv.pages[kv.geom.page_of(loc)] + kv.geom.record_offset(cls, layer, kv.geom.slot_of(loc));
}

// Token pos's K and V (fp16-exact floats in shared memory: k then v) stored at class cls, location loc;
// layer 0's block also writes the slot's position into the page header (which makes it visible to the
// decode kernel from the next step on).
__device__ inline void store_record(const KvDev& kv, int layer, int cls, uint32_t loc, int pos,
                                    const float* sm) {
  const KvClass c = kv.cls[cls];
  uint8_t* dst = record_at(kv, layer, cls, loc);
  store_row(sm, c.k_bits, c.group, kv.kv_dim, dst);
  store_row(sm + kv.kv_dim, c.v_bits, c.group, kv.kv_dim, dst + c.k_row_bytes);
  if (layer == 0 && threadIdx.x == 0)
    reinterpret_cast<int32_t*>(kv.pages[kv.geom.page_of(loc)])[kv.geom.slot_of(loc)] = pos;
}

// A token's K and V from the fp16 ring into shared memory (k then v), for store_record.
__device__ inline void ring_to_shared(const KvDev& kv, int layer, int pos, float* sm) {
  const size_t slot = (static_cast<size_t>(layer) * kv.ring + pos % kv.ring) * kv.kv_dim;
  for (int j = threadIdx.x; j < kv.kv_dim; j += blockDim.x) {
    sm[j] = h2f(kv.ring_k[slot + j]);
    sm[kv.kv_dim + j] = h2f(kv.ring_v[slot + j]);
  }
}

template <bool kPages>
__global__ void rope_append_kernel(KvDev kv, int layer, float* qkv, int n_heads, int rope_dim, int halves,
                                   const float2* rope_cs, const StepParams* params) {
  extern __shared__ float sm[];  // k then v, fp16-exact
  const int i = blockIdx.x, pos = params->pos0 + i;
  const int hd = kv.head_dim, kv_dim = kv.kv_dim, q_dim = n_heads * hd;
  float* row = qkv + static_cast<size_t>(i) * (q_dim + 2 * kv_dim);
  const int half = rope_dim / 2;
  const float2* cs = rope_cs + static_cast<size_t>(pos) * half;
  const int nq = n_heads * half, nk = kv.n_kv_heads * half;
  for (int p = threadIdx.x; p < nq + nk; p += blockDim.x) {
    const bool is_q = p < nq;
    const int pp = is_q ? p : p - nq, h = pp / half, f = pp - h * half;
    float* base = row + (is_q ? 0 : q_dim) + h * hd;
    const int ia = halves ? f : 2 * f, ib = halves ? f + half : 2 * f + 1;
    const float a = base[ia], b = base[ib];
    const float2 t = cs[f];
    base[ia] = __fsub_rn(__fmul_rn(a, t.x), __fmul_rn(b, t.y));
    base[ib] = __fadd_rn(__fmul_rn(a, t.y), __fmul_rn(b, t.x));
  }
  __syncthreads();
  const size_t slot = (static_cast<size_t>(layer) * kv.ring + pos % kv.ring) * kv_dim;
  float kk = 0, vv = 0;
  for (int j = threadIdx.x; j < kv_dim; j += blockDim.x) {
    const float kf = row[q_dim + j], vf = row[q_dim + kv_dim + j];
    kk += kf * kf;
    vv += vf * vf;
    const uint16_t hk = f2h(kf), hv = f2h(vf);
    kv.ring_k[slot + j] = hk;
    kv.ring_v[slot + j] = hv;
    sm[j] = h2f(hk);
    sm[kv_dim + j] = h2f(hv);
  }
  if (params->stats) {  // block sums of K^2 and V^2 (blockDim.x = 256)
    __shared__ float red[2][8];
    for (int o = 16; o > 0; o >>= 1) {
      kk += __shfl_xor_sync(0xffffffffu, kk, o);
      vv += __shfl_xor_sync(0xffffffffu, vv, o);
    }
    if ((threadIdx.x & 31) == 0) {
      red[0][threadIdx.x >> 5] = kk;
      red[1][threadIdx.x >> 5] = vv;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      float a = 0, b = 0;
      for (int w = 0; w < static_cast<int>(blockDim.x >> 5); ++w) {
        a += red[0][w];
        b += red[1][w];
      }
      float* st = kv.stat_kv + (static_cast<size_t>(i) * kv.n_layers + layer) * 2;
      st[0] = a;
      st[1] = b;
    }
  }
  if (!kPages || params->defer) return;
  __syncthreads();
  store_record(kv, layer, kv.tok_cls[pos], kv.tok_loc[pos], pos, sm);
}

// The page records of tokens whose K and V are in the fp16 ring (written by rope_append_kernel<false>).
__global__ void append_pages_kernel(KvDev kv, int layer, const StepParams* params) {
  extern __shared__ float sm[];
  if (params->defer) return;
  const int pos = params->pos0 + blockIdx.x;
  ring_to_shared(kv, layer, pos, sm);
  __syncthreads();
  store_record(kv, layer, kv.tok_cls[pos], kv.tok_loc[pos], pos, sm);
}

// Block (token i, layer): table entries (layer 0's block) and the page record of token t[i].
__global__ void decide_tokens_kernel(KvDev kv, const DecidedToken* t) {
  extern __shared__ float sm[];
  const DecidedToken d = t[blockIdx.x];
  const int layer = blockIdx.y;
  if (layer == 0 && threadIdx.x == 0) {
    kv.tok_cls[d.pos] = d.cls;
    kv.tok_loc[d.pos] = d.loc;
  }
  ring_to_shared(kv, layer, d.pos, sm);
  __syncthreads();
  store_record(kv, layer, d.cls, d.loc, d.pos, sm);
}

__device__ inline float half_at(const uint8_t* p) { return __half2float(__ushort_as_half(load_u16(p))); }

// E consecutive fp16 values at p: 16-byte loads when aligned.
template <int E>
__device__ inline void load_half_elems(const uint8_t* p, float (&out)[E]) {
  if (E % 8 == 0 && (reinterpret_cast<uintptr_t>(p) & 15) == 0) {
#pragma unroll
    for (int v = 0; v < E / 8; ++v) {
      const uint4 w = *reinterpret_cast<const uint4*>(p + 16 * v);
      const __half2* h2 = reinterpret_cast<const __half2*>(&w);
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        const float2 f = __half22float2(h2[k]);
        out[8 * v + 2 * k] = f.x;
        out[8 * v + 2 * k + 1] = f.y;
      }
    }
  } else {
#pragma unroll
    for (int e = 0; e < E; ++e) out[e] = half_at(p + 2 * e);
  }
}

// Elements idx0 .. idx0 + E - 1 of a stored row. When they share a group (group % E == 0, as with the
// default group 32 and 8 elements a lane) its scale and min are read once.
template <int E>
__device__ inline void load_elems(const uint8_t* row, int bits, int group, int idx0, float (&out)[E]) {
  if (bits == 16) {
    load_half_elems<E>(row + 2 * idx0, out);
  } else if (group % E == 0) {
    const int g = idx0 / group, j0 = idx0 - g * group;
    const uint8_t* p = row + g * (4 + group * bits / 8);
    // Scale and minimum in one 32-bit load: groups start 4-byte aligned (records and group sizes are
    // multiples of 4 bytes), fp16 little-endian.
    const uint32_t sm = *reinterpret_cast<const uint32_t*>(p);
    const float scale = __half2float(__ushort_as_half(static_cast<uint16_t>(sm & 0xffffu)));
    const float mn = __half2float(__ushort_as_half(static_cast<uint16_t>(sm >> 16)));
    const uint8_t* c = p + 4 + ((j0 * bits) >> 3);
    const int nbytes = E * bits / 8;
    if ((reinterpret_cast<uintptr_t>(c) & 3) == 0 && nbytes % 4 == 0 && 32 % bits == 0) {
      // The lane's codes in 32-bit words (no code straddles a word at 2, 4 or 8 bits).
      uint32_t w[E * 8 / 32] = {};
#pragma unroll
      for (int k = 0; k < E * 8 / 32; ++k)
        if (k < nbytes / 4) w[k] = reinterpret_cast<const uint32_t*>(c)[k];
      const uint32_t mask = (1u << bits) - 1;
#pragma unroll
      for (int e = 0; e < E; ++e) {
        const int bit = e * bits;
        out[e] = static_cast<float>((w[bit >> 5] >> (bit & 31)) & mask) * scale + mn;
      }
    } else {
#pragma unroll
      for (int e = 0; e < E; ++e) out[e] = static_cast<float>(code_at(p + 4, j0 + e, bits)) * scale + mn;
    }
  } else {
#pragma unroll
    for (int e = 0; e < E; ++e) out[e] = row_elem(row, bits, group, idx0 + e);
  }
}

// Block (chunk, query head, query): keys [chunk*kAttnChunk, ...] up to the query's position. 4 warps,
// each taking 4 keys at a time (8 lanes a key, HD/8 elements a lane), online softmax; the block's
// partial state (unnormalized output, max, sum) goes to part for the merge.
template <int HD>
__global__ void __launch_bounds__(128)
    attn_partial_kernel(KvDev kv, int layer, const float* q, int q_stride, int n_heads,
                        const StepParams* params, int max_chunks, float* part) {
  constexpr int E = HD / 8;
  const int chunk = blockIdx.x, h = blockIdx.y, i = blockIdx.z;
  const int pos = params->pos0 + i;
  const int t0 = chunk * kAttnChunk;
  if (t0 > pos) return;
  const int t1 = min(t0 + kAttnChunk, pos + 1);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, sub = lane >> 3, sl = lane & 7;
  const int kvh = h / (n_heads / kv.n_kv_heads);
  const int e0 = sl * E, idx0 = kvh * HD + e0;
  const float scale = 1.0f / sqrtf(static_cast<float>(HD));
  float qr[E], acc[E];
  const float* qh = q + static_cast<size_t>(i) * q_stride + h * HD + e0;
#pragma unroll
  for (int e = 0; e < E; ++e) {
    qr[e] = qh[e];
    acc[e] = 0;
  }
  float m = -INFINITY, l = 0;
  const int quant_below = min(pos - kv.residual, params->fp16_from);  // keys t < it: from the pages
  for (int base = t0 + warp * 4; base < t1; base += 16) {
    const int t = base + sub;
    const bool valid = t < t1;
    float kx[E], vx[E];
    if (valid) {
      if (t < quant_below) {
        const int ci = kv.tok_cls[t];
        const KvClass c = kv.cls[ci];
        const uint8_t* rec = record_at(kv, layer, ci, kv.tok_loc[t]);
        load_elems<E>(rec, c.k_bits, c.group, idx0, kx);
        load_elems<E>(rec + c.k_row_bytes, c.v_bits, c.group, idx0, vx);
      } else {
        const size_t slot = (static_cast<size_t>(layer) * kv.ring + t % kv.ring) * kv.kv_dim + idx0;
        load_half_elems<E>(reinterpret_cast<const uint8_t*>(kv.ring_k + slot), kx);
        load_half_elems<E>(reinterpret_cast<const uint8_t*>(kv.ring_v + slot), vx);
      }
    }
    float s = 0;
    if (valid) {
#pragma unroll
      for (int e = 0; e < E; ++e) s += qr[e] * kx[e];
    }
    s += __shfl_xor_sync(0xffffffffu, s, 1);
    s += __shfl_xor_sync(0xffffffffu, s, 2);
    s += __shfl_xor_sync(0xffffffffu, s, 4);
    if (valid) {
      s *= scale;
      const float mn = fmaxf(m, s);
      const float corr = expf(m - mn), p = expf(s - mn);
      l = l * corr + p;
#pragma unroll
      for (int e = 0; e < E; ++e) acc[e] = acc[e] * corr + p * vx[e];
      m = mn;
    }
  }
  __shared__ float s_ml[16][2];
  __shared__ float s_acc[16][HD];
  const int sg = warp * 4 + sub;
  if (sl == 0) {
    s_ml[sg][0] = m;
    s_ml[sg][1] = l;
  }
#pragma unroll
  for (int e = 0; e < E; ++e) s_acc[sg][e0 + e] = acc[e];
  __syncthreads();
  float* out = part + ((static_cast<size_t>(i) * n_heads + h) * max_chunks + chunk) * (HD + 2);
  float M = -INFINITY;
  for (int g = 0; g < 16; ++g) M = fmaxf(M, s_ml[g][0]);
  for (int d = threadIdx.x; d < HD; d += blockDim.x) {
    float o = 0;
    for (int g = 0; g < 16; ++g)
      if (s_ml[g][1] > 0) o += s_acc[g][d] * expf(s_ml[g][0] - M);
    out[d] = o;
  }
  if (threadIdx.x == 0) {
    float L = 0;
    for (int g = 0; g < 16; ++g)
      if (s_ml[g][1] > 0) L += s_ml[g][1] * expf(s_ml[g][0] - M);
    out[HD] = M;
    out[HD + 1] = L;
  }
}

// Prompt attention, tiled: block (64 queries, query head), 4 threads a query. Keys the queries read
// quantized (t < p - residual) come from the pages in tiles of 32, dequantized once into shared memory
// for all 64 queries; each thread scores 8 keys of a tile and accumulates HD/4 output elements. The keys
// of each query's fp16 window (its own and the residual newest, from the ring) follow, one by one.
// fp32 throughout, online softmax per query.
template <int HD>
__global__ void __launch_bounds__(256)
    attn_prefill_kernel(KvDev kv, int layer, const float* q, int q_stride, int n_heads,
                        const StepParams* params, float* out, __half* out_h) {
  constexpr int QT = 64, KT = 32, E = 8, DPT = HD / 4;  // DPT: output elements a thread
  __shared__ float s_k[KT][HD + 1], s_v[KT][HD + 1];
  __shared__ float s_p[QT][KT + 1];
  const int h = blockIdx.y, kvh = h / (n_heads / kv.n_kv_heads);
  const int qi = threadIdx.x >> 2, part = threadIdx.x & 3;
  const int n = params->n, pos0 = params->pos0;
  const int i = blockIdx.x * QT + qi;
  const bool active = i < n;
  const int pq = pos0 + (active ? i : n - 1);
  const int qlast = min(n, (blockIdx.x + 1) * QT) - 1;
  // Keys [0, t_hi) are read quantized by some query of the block; this query's: [0, my_hi).
  const int t_hi = max(0, min(pos0 + qlast - kv.residual, params->fp16_from));
  const int my_hi = max(0, min(pq - kv.residual, params->fp16_from));
  const float scale = 1.0f / sqrtf(static_cast<float>(HD));
  float qr[HD], acc[DPT];
  const float* qrow = q + static_cast<size_t>(active ? i : n - 1) * q_stride + h * HD;
#pragma unroll
  for (int d = 0; d < HD; ++d) qr[d] = qrow[d];
#pragma unroll
  for (int d = 0; d < DPT; ++d) acc[d] = 0;
  float m = -INFINITY, l = 0, l2 = 0;  // l2: this thread's share of sum exp(2 (s - m)), for the variance
  for (int t0 = 0; t0 < t_hi; t0 += KT) {
    __syncthreads();  // the previous tile is consumed
    for (int task = threadIdx.x; task < KT * (HD / E); task += blockDim.x) {
      const int kk = task / (HD / E), e0 = (task % (HD / E)) * E, t = t0 + kk;
      float kx[E], vx[E];
      if (t < t_hi) {
        const int ci = kv.tok_cls[t];
        const KvClass c = kv.cls[ci];
        const uint8_t* rec = record_at(kv, layer, ci, kv.tok_loc[t]);
        load_elems<E>(rec, c.k_bits, c.group, kvh * HD + e0, kx);
        load_elems<E>(rec + c.k_row_bytes, c.v_bits, c.group, kvh * HD + e0, vx);
      } else {
#pragma unroll
        for (int e = 0; e < E; ++e) kx[e] = vx[e] = 0;
      }
#pragma unroll
      for (int e = 0; e < E; ++e) {
        s_k[kk][e0 + e] = kx[e];
        s_v[kk][e0 + e] = vx[e];
      }
    }
    __syncthreads();
    float sc[KT / 4];
    float tmax = -INFINITY;
#pragma unroll
    for (int j = 0; j < KT / 4; ++j) {
      const int kk = part + 4 * j, t = t0 + kk;
      float s = 0;
#pragma unroll
      for (int d = 0; d < HD; ++d) s += qr[d] * s_k[kk][d];
      sc[j] = t < my_hi ? s * scale : -INFINITY;
      tmax = fmaxf(tmax, sc[j]);
    }
    tmax = fmaxf(tmax, __shfl_xor_sync(0xffffffffu, tmax, 1));
    tmax = fmaxf(tmax, __shfl_xor_sync(0xffffffffu, tmax, 2));
    const float mn = fmaxf(m, tmax);
    const float corr = mn == -INFINITY ? 1.0f : expf(m - mn);
    float tile = 0, tile2 = 0;
#pragma unroll
    for (int j = 0; j < KT / 4; ++j) {
      const float p = sc[j] == -INFINITY ? 0.0f : expf(sc[j] - mn);
      tile += p;
      tile2 += p * p;
      s_p[qi][part + 4 * j] = p;
    }
    l = l * corr + tile;  // this thread's share of the sum; the 4 shares are added at the end
    l2 = l2 * corr * corr + tile2;
    __syncwarp();
#pragma unroll
    for (int d = 0; d < DPT; ++d) acc[d] *= corr;
#pragma unroll 4
    for (int kk = 0; kk < KT; ++kk) {
      const float p = s_p[qi][kk];
#pragma unroll
      for (int d = 0; d < DPT; ++d) acc[d] += p * s_v[kk][part + 4 * d];
    }
    m = mn;
    __syncwarp();
  }
  // The query's fp16 window from the ring: keys [my_hi, pq].
  for (int t = my_hi; t <= pq; ++t) {
    const size_t slot = (static_cast<size_t>(layer) * kv.ring + t % kv.ring) * kv.kv_dim + kvh * HD;
    float s = 0;
#pragma unroll
    for (int d = 0; d < HD; ++d) s += qr[d] * __half2float(__ushort_as_half(kv.ring_k[slot + d]));
    s *= scale;
    const float mn = fmaxf(m, s);
    const float corr = expf(m - mn), p = expf(s - mn);
    l = l * corr + (part == 0 ? p : 0.0f);  // l is summed over the 4 threads at the end
    l2 = l2 * corr * corr + (part == 0 ? p * p : 0.0f);
#pragma unroll
    for (int d = 0; d < DPT; ++d)
      acc[d] = acc[d] * corr + p * __half2float(__ushort_as_half(kv.ring_v[slot + part + 4 * d]));
    m = mn;
  }
  l += __shfl_xor_sync(0xffffffffu, l, 1);
  l += __shfl_xor_sync(0xffffffffu, l, 2);
  l2 += __shfl_xor_sync(0xffffffffu, l2, 1);
  l2 += __shfl_xor_sync(0xffffffffu, l2, 2);
  if (!active) return;
  if (params->stats && part == 0)
    write_attn_stats(kv.stat_attn + ((static_cast<size_t>(i) * kv.n_layers + layer) * n_heads + h) * 2, l, l2,
                     pq + 1);
  const size_t at = static_cast<size_t>(i) * n_heads * HD + h * HD;
#pragma unroll
  for (int d = 0; d < DPT; ++d) {
    const float r = acc[d] / l;
    out[at + part + 4 * d] = r;
    if (out_h) out_h[at + part + 4 * d] = __float2half_rn(r);
  }
}

template <int E>
__device__ inline void load_key(const KvDev& kv, const uint8_t* rec, int c, int idx0, float (&kx)[E],
                                float (&vx)[E]) {
  if (c != 0xff) {
    const KvClass kc = kv.cls[c];
    load_elems<E>(rec, kc.k_bits, kc.group, idx0, kx);
    load_elems<E>(rec + kc.k_row_bytes, kc.v_bits, kc.group, idx0, vx);
  } else {  // rec: the key's slot in the fp16 ring
    const size_t slot = static_cast<size_t>(rec - reinterpret_cast<const uint8_t*>(kv.ring_k));
    load_half_elems<E>(rec + 2 * idx0, kx);
    load_half_elems<E>(reinterpret_cast<const uint8_t*>(kv.ring_v) + slot + 2 * idx0, vx);
  }
}

template <int HD, int G>
__device__ inline void online_update(const float (&sq)[G][HD], int e0, unsigned lanes, float scale,
                                     const float (&kx)[HD / 8], const float (&vx)[HD / 8], float (&m)[G],
                                     float (&l)[G], float (&l2)[G], float (&acc)[G][HD / 8]) {
  constexpr int E = HD / 8;
#pragma unroll
  for (int h = 0; h < G; ++h) {
    float s = 0;
#pragma unroll
    for (int e = 0; e < E; ++e) s += sq[h][e0 + e] * kx[e];
    s += __shfl_xor_sync(lanes, s, 1);
    s += __shfl_xor_sync(lanes, s, 2);
    s += __shfl_xor_sync(lanes, s, 4);
    s *= scale;
    const float mn = fmaxf(m[h], s);
    const float corr = expf(m[h] - mn), p = expf(s - mn);
    l[h] = l[h] * corr + p;
    l2[h] = l2[h] * corr * corr + p * p;
#pragma unroll
    for (int e = 0; e < E; ++e) acc[h][e] = acc[h][e] * corr + p * vx[e];
    m[h] = mn;
  }
}

// The G query heads of KV head kvh into shared memory (the caller syncs before reading them).
template <int HD, int G>
__device__ inline void load_queries(const float* q, int kvh, float (&s_q)[G][HD]) {
  for (int j = threadIdx.x; j < G * HD; j += blockDim.x)
    s_q[j / HD][j % HD] = q[(kvh * G + j / HD) * HD + j % HD];
}

// A lane's online-softmax state before any key: max -inf, sums and accumulators 0.
template <int HD, int G>
__device__ inline void clear_online_state(float (&m)[G], float (&l)[G], float (&l2)[G],
                                          float (&acc)[G][HD / 8]) {
#pragma unroll
  for (int h = 0; h < G; ++h) {
    m[h] = -INFINITY;
    l[h] = l2[h] = 0;
#pragma unroll
    for (int e = 0; e < HD / 8; ++e) acc[h][e] = 0;
  }
}

// The end of a decode block (after its keys): its 4 key groups per warp merged (lanes 8 and 16 apart),
// then its 8 warps through shared memory; with one part in all the block writes the output, else its
// partial state goes to part[chunk] for merge_parts.
template <int HD, int G>
__device__ inline void decode_finish(const KvDev& kv, int layer, int n_heads, const StepParams* params,
                                     float* part, float* out, int chunk, int n_parts, int n_keys,
                                     float (&m)[G], float (&l)[G], float (&l2)[G], float (&acc)[G][HD / 8]) {
  constexpr int E = HD / 8, NT = 256;
  __shared__ float s_m[NT / 32][G], s_l[NT / 32][G], s_l2[NT / 32][G];
  __shared__ float s_o[NT / 32][G][HD];
  const int kvh = blockIdx.y;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, sub = lane >> 3, sl = lane & 7;
  const int e0 = sl * E;
#pragma unroll
  for (int h = 0; h < G; ++h) {
#pragma unroll
    for (int o = 8; o <= 16; o <<= 1) {
      const float m2 = __shfl_xor_sync(0xffffffffu, m[h], o), lo = __shfl_xor_sync(0xffffffffu, l[h], o);
      const float qo = __shfl_xor_sync(0xffffffffu, l2[h], o);
      const float mn = fmaxf(m[h], m2);
      const float c1 = m[h] == -INFINITY ? 0.0f : expf(m[h] - mn),
                  c2 = m2 == -INFINITY ? 0.0f : expf(m2 - mn);
#pragma unroll
      for (int e = 0; e < E; ++e)
        acc[h][e] = acc[h][e] * c1 + __shfl_xor_sync(0xffffffffu, acc[h][e], o) * c2;
      l[h] = l[h] * c1 + lo * c2;
      l2[h] = l2[h] * c1 * c1 + qo * c2 * c2;
      m[h] = mn;
    }
    if (sub == 0) {
      if (sl == 0) {
        s_m[warp][h] = m[h];
        s_l[warp][h] = l[h];
        s_l2[warp][h] = l2[h];
      }
#pragma unroll
      for (int e = 0; e < E; ++e) s_o[warp][h][e0 + e] = acc[h][e];
    }
  }
  __syncthreads();
  const bool single = n_parts == 1;
  for (int j = threadIdx.x; j < G * HD; j += NT) {
    const int h = j / HD, d = j % HD;
    float M = -INFINITY;
    for (int w = 0; w < NT / 32; ++w) M = fmaxf(M, s_m[w][h]);
    float o = 0, L = 0, L2 = 0;
    for (int w = 0; w < NT / 32; ++w)
      if (s_m[w][h] != -INFINITY) {
        const float f = expf(s_m[w][h] - M);
        o += s_o[w][h][d] * f;
        L += s_l[w][h] * f;
        L2 += s_l2[w][h] * f * f;
      }
    if (single) {
      out[(kvh * G + h) * HD + d] = o / L;
      if (d == 0 && params->stats)
        write_attn_stats(kv.stat_attn + (static_cast<size_t>(layer) * n_heads + kvh * G + h) * 2, L, L2,
                         n_keys);
      continue;
    }
    float* pp = part + (static_cast<size_t>(kvh * G + h) * kDecodeParts + chunk) * (HD + 3);
    pp[d] = o;
    if (d == 0) {
      pp[HD] = M;
      pp[HD + 1] = L;
      pp[HD + 2] = L2;
    }
  }
  if (single) return;
  __shared__ MergeScratch<G> merge_scratch;
  merge_parts<HD, G>(kv, layer, n_heads, params, part, out, n_parts, n_keys, merge_scratch);
}

// Decode (one query per head) over any width mix. Block (chunk, KV head), 256 threads: 64 keys at a time,
// two per group of 8 lanes (HD/8 elements a lane), both loaded before either is used, for all G query
// heads of the KV head, so each key's bytes are read once. The chunk's token tables are read into
// shared memory first (one load each, all in flight), so a key's data load depends on nothing but them.
// Keys are split evenly over at most kDecodeBlocks chunks (multiples of 64), whatever the context, so
// the grid is fixed and a captured graph needs no re-capture. The last block of a KV head to finish
// merges the chunks' partial states (max, sum, unnormalized output) and writes the output.
template <int HD, int G>
__global__ void __launch_bounds__(256) attn_decode_kernel(KvDev kv, int layer, const float* q, int n_heads,
                                                          const StepParams* params, float* part, float* out) {
  constexpr int E = HD / 8, NT = 256, KPI = 2 * NT / 8;  // KPI: keys per iteration
  constexpr int W = 512;                                 // keys per table window
  const int chunk = blockIdx.x, kvh = blockIdx.y;
  const int pos = params->pos0, n_keys = pos + 1;
  int per = (n_keys + kDecodeBlocks - 1) / kDecodeBlocks;
  per = max(KPI, (per + KPI - 1) / KPI * KPI);
  const int n_chunks = (n_keys + per - 1) / per;
  if (chunk >= n_chunks) return;  // exactly n_chunks blocks reach the counter below
  const int t0 = chunk * per, t1 = min(t0 + per, n_keys);
  __shared__ const uint8_t* s_rec[W];  // per key of the current window: record (or ring slot) address
  __shared__ uint8_t s_cls[W];         // its class, 0xff for the ring
  __shared__ float s_q[G][HD];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, sub = lane >> 3, sl = lane & 7;
  const int e0 = sl * E, idx0 = kvh * HD + e0;
  const unsigned lanes = 0xffu << (8 * sub);  // this key's 8 lanes
  load_queries<HD, G>(q, kvh, s_q);
  float m[G], l[G], l2[G], acc[G][E];
  clear_online_state<HD, G>(m, l, l2, acc);
  const float scale = 1.0f / sqrtf(static_cast<float>(HD));
  const int quant_below = min(pos - kv.residual, params->fp16_from);
  for (int w0 = t0; w0 < t1; w0 += W) {
    const int w1 = min(w0 + W, t1);
    __syncthreads();
    for (int t = w0 + threadIdx.x; t < w1; t += NT) {
      const uint8_t* rec;
      uint8_t c = 0xff;
      if (t < quant_below) {
        c = kv.tok_cls[t];
        rec = record_at(kv, layer, c, kv.tok_loc[t]);
      } else {
        rec = reinterpret_cast<const uint8_t*>(
            kv.ring_k + (static_cast<size_t>(layer) * kv.ring + t % kv.ring) * kv.kv_dim);
      }
      s_rec[t - w0] = rec;
      s_cls[t - w0] = c;
    }
    __syncthreads();
    for (int base = w0; base < w1; base += KPI) {
      // Keys ta and tb (32 apart) of this lane group; a group's 8 lanes always agree on validity.
      const int ta = base + warp * 4 + sub, tb = ta + NT / 8;
      float ka[E], va[E], kb[E], vb[E];
      if (ta < w1) load_key<E>(kv, s_rec[ta - w0], s_cls[ta - w0], idx0, ka, va);
      if (tb < w1) load_key<E>(kv, s_rec[tb - w0], s_cls[tb - w0], idx0, kb, vb);
      if (ta < w1) online_update<HD, G>(s_q, e0, lanes, scale, ka, va, m, l, l2, acc);
      if (tb < w1) online_update<HD, G>(s_q, e0, lanes, scale, kb, vb, m, l, l2, acc);
    }
  }
  decode_finish<HD, G>(kv, layer, n_heads, params, part, out, chunk, n_chunks, n_keys, m, l, l2, acc);
}

// Elements idx0 .. idx0 + E - 1 of a row stored at BITS (a compile-time width: no branch on it), when
// they share one group (group % E == 0). Scale and minimum in one 32-bit load; the codes in 32-bit
// words (16-bit at 2 bits with 8 elements a lane); no code straddles a word at 2, 4 or 8 bits.
template <int E, int BITS>
__device__ inline void load_row(const uint8_t* row, int group, int idx0, float (&out)[E]) {
  if constexpr (BITS == 16) {
    load_half_elems<E>(row + 2 * idx0, out);
  } else {
    const int g = idx0 / group, j0 = idx0 - g * group;
    const uint8_t* p = row + g * (4 + group * BITS / 8);
    const uint32_t sm = *reinterpret_cast<const uint32_t*>(p);
    const float scale = __half2float(__ushort_as_half(static_cast<uint16_t>(sm & 0xffffu)));
    const float mn = __half2float(__ushort_as_half(static_cast<uint16_t>(sm >> 16)));
    const uint8_t* c = p + 4 + ((j0 * BITS) >> 3);
    constexpr int NB = E * BITS / 8;  // code bytes of the lane
    constexpr uint32_t mask = (1u << BITS) - 1;
    uint32_t w[NB >= 4 ? NB / 4 : 1];
    if constexpr (NB >= 4) {
#pragma unroll
      for (int k = 0; k < NB / 4; ++k) w[k] = reinterpret_cast<const uint32_t*>(c)[k];
    } else {
      w[0] = *reinterpret_cast<const uint16_t*>(c);
    }
#pragma unroll
    for (int e = 0; e < E; ++e) {
      const int bit = e * BITS;
      out[e] = static_cast<float>((w[bit >> 5] >> (bit & 31)) & mask) * scale + mn;
    }
  }
}

// Two slots (ja, jb) of one page of width BITS: both keys loaded (unconditionally: the page is allocated
// whether or not a slot holds a token) before either is scored; a slot counts when its position, from
// the page header, is below quant_below (empty slots hold kEmptySlot).
template <int HD, int G, int BITS>
__device__ inline void page_pair(const uint8_t* recs, int tok_bytes, int k_row_bytes, int group, int ta,
                                 int tb, int ja, int jb, int quant_below, int idx0, const float (&sq)[G][HD],
                                 int e0, unsigned lanes, float scale, float (&m)[G], float (&l)[G],
                                 float (&l2)[G], float (&acc)[G][HD / 8]) {
  constexpr int E = HD / 8;
  float ka[E], va[E], kb[E], vb[E];
  const uint8_t* ra = recs + static_cast<size_t>(ja) * tok_bytes;
  const uint8_t* rb = recs + static_cast<size_t>(jb) * tok_bytes;
  load_row<E, BITS>(ra, group, idx0, ka);
  load_row<E, BITS>(ra + k_row_bytes, group, idx0, va);
  load_row<E, BITS>(rb, group, idx0, kb);
  load_row<E, BITS>(rb + k_row_bytes, group, idx0, vb);
  if (ta < quant_below) online_update<HD, G>(sq, e0, lanes, scale, ka, va, m, l, l2, acc);
  if (tb < quant_below) online_update<HD, G>(sq, e0, lanes, scale, kb, vb, m, l, l2, acc);
}

// Decode (one query per head) over the sequence's pages. Block (chunk, KV head), 256 threads, all G query
// heads of the KV head (each key's bytes read once); a page (64 slots) per step, two slots per group of
// 8 lanes (HD/8 elements a lane). A page has one width, so the unpacking is chosen once per page and
// compiled for it; the page's address comes from the block table, nothing per key but the slot's
// position in the page header. Pages are split evenly over at most kDecodeBlocks chunks; one more block
// (index n_chunks) reads the keys at fp16 from the ring (the step's own token and the residual window). The
// grid is fixed (kDecodeParts blocks a KV head), so a captured graph needs no re-capture as pages are added.
template <int HD, int G>
__global__ void __launch_bounds__(256)
    attn_decode_paged_kernel(KvDev kv, int layer, const float* q, int n_heads, const StepParams* params,
                             float* part, float* out) {
  constexpr int E = HD / 8, NT = 256, P = 1 << kPageShift;
  static_assert(P == 2 * NT / 8, "a page is one step of the block");
  const int chunk = blockIdx.x, kvh = blockIdx.y;
  const int pos = params->pos0, n_keys = pos + 1;
  // This block's first page when there are at most kDecodeBlocks pages (one a block), loaded beside the
  // page count rather than after it (the table has room for kDecodeParts entries whatever the context).
  const KvPageRef first = kv.block[chunk];
  const int n_pages = *kv.n_block;
  const int per = max(1, (n_pages + kDecodeBlocks - 1) / kDecodeBlocks);
  const int n_chunks = (n_pages + per - 1) / per;
  if (chunk > n_chunks) return;  // exactly n_chunks + 1 blocks reach the counter in decode_finish
  __shared__ float s_q[G][HD];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, sub = lane >> 3, sl = lane & 7;
  const int e0 = sl * E, idx0 = kvh * HD + e0;
  const unsigned lanes = 0xffu << (8 * sub);
  load_queries<HD, G>(q, kvh, s_q);
  float m[G], l[G], l2[G], acc[G][E];
  clear_online_state<HD, G>(m, l, l2, acc);
  const float scale = 1.0f / sqrtf(static_cast<float>(HD));
  const int quant_below = min(pos - kv.residual, params->fp16_from);
  const int ja = warp * 4 + sub, jb = ja + NT / 8;
  __syncthreads();
  if (chunk < n_chunks) {
    const int p1 = min(n_pages, (chunk + 1) * per);
    KvPageRef next = per == 1 ? first : kv.block[chunk * per];
    for (int p = chunk * per; p < p1; ++p) {
      const KvPageRef ref = next;
      if (p + 1 < p1) next = kv.block[p + 1];  // the next page's entry in flight during this one
      const int32_t* hdr = reinterpret_cast<const int32_t*>(ref.data);
      const int ta = hdr[ja], tb = hdr[jb];
      const KvClass kc = kv.cls[ref.cls];
      const uint8_t* recs = ref.data + kv.geom.record_offset(ref.cls, layer, 0);
      const int tok = static_cast<int>(kv.geom.token_bytes[ref.cls]);
      switch (kc.k_bits) {  // K and V share the width on the GPU
        case 16:
          page_pair<HD, G, 16>(recs, tok, kc.k_row_bytes, kc.group, ta, tb, ja, jb, quant_below, idx0, s_q,
                               e0, lanes, scale, m, l, l2, acc);
          break;
        case 8:
          page_pair<HD, G, 8>(recs, tok, kc.k_row_bytes, kc.group, ta, tb, ja, jb, quant_below, idx0, s_q, e0,
                              lanes, scale, m, l, l2, acc);
          break;
        case 4:
          page_pair<HD, G, 4>(recs, tok, kc.k_row_bytes, kc.group, ta, tb, ja, jb, quant_below, idx0, s_q, e0,
                              lanes, scale, m, l, l2, acc);
          break;
        default:
          page_pair<HD, G, 2>(recs, tok, kc.k_row_bytes, kc.group, ta, tb, ja, jb, quant_below, idx0, s_q, e0,
                              lanes, scale, m, l, l2, acc);
          break;
      }
    }
  } else {  // the ring: keys [max(0, quant_below), pos] at fp16
    for (int base = max(0, quant_below); base < n_keys; base += 2 * NT / 8) {
      const int ta = base + ja, tb = base + jb;
      float ka[E], va[E], kb[E], vb[E];
      const size_t la = (static_cast<size_t>(layer) * kv.ring + ta % kv.ring) * kv.kv_dim + idx0;
      const size_t lb = (static_cast<size_t>(layer) * kv.ring + tb % kv.ring) * kv.kv_dim + idx0;
      if (ta < n_keys) {
        load_half_elems<E>(reinterpret_cast<const uint8_t*>(kv.ring_k + la), ka);
        load_half_elems<E>(reinterpret_cast<const uint8_t*>(kv.ring_v + la), va);
      }
      if (tb < n_keys) {
        load_half_elems<E>(reinterpret_cast<const uint8_t*>(kv.ring_k + lb), kb);
        load_half_elems<E>(reinterpret_cast<const uint8_t*>(kv.ring_v + lb), vb);
      }
      if (ta < n_keys) online_update<HD, G>(s_q, e0, lanes, scale, ka, va, m, l, l2, acc);
      if (tb < n_keys) online_update<HD, G>(s_q, e0, lanes, scale, kb, vb, m, l, l2, acc);
    }
  }
  decode_finish<HD, G>(kv, layer, n_heads, params, part, out, chunk, n_chunks + 1, n_keys, m, l, l2, acc);
}

// One page's K and V of one KV head (64 slots) into shared memory as fp32, rows of HD + 1 floats (a
// column's rows fall in different banks): one (slot, 32-element chunk) a thread, unpacked at BITS.
template <int HD, int BITS>
__device__ inline void load_page_tile(const uint8_t* recs, int tok_bytes, int k_row_bytes, int group, int kvh,
                                      float* sk, float* sv) {
  constexpr int CH = HD / 32, RS = HD + 1;
  for (int task = threadIdx.x; task < 64 * CH; task += blockDim.x) {
    const int j = task / CH, c = task - j * CH, idx0 = kvh * HD + c * 32;
    const uint8_t* rec = recs + static_cast<size_t>(j) * tok_bytes;
    float x[32], y[32];
    load_row<32, BITS>(rec, group, idx0, x);
    load_row<32, BITS>(rec + k_row_bytes, group, idx0, y);
#pragma unroll
    for (int e = 0; e < 32; ++e) {
      sk[j * RS + c * 32 + e] = x[e];
      sv[j * RS + c * 32 + e] = y[e];
    }
  }
}

// One 64-key tile in shared memory (sk, sv; s_pos[j] < lim marks the keys that count): the G heads'
// scores (one (head, key) a thread: no shuffles), per head the tile's max, weights and sums (a warp a
// head), then each thread's (head, element) outputs, rescaled once per tile, not once per key.
template <int HD, int G>
__device__ inline void tile_attend(const float* sk, const float* sv, const float (&s_q)[G][HD],
                                   float (&s_s)[G][64], const int* s_pos, int lim, float scale, float* s_m,
                                   float* s_l, float* s_l2, float* s_corr, float (&o)[(G * HD + 255) / 256]) {
  constexpr int NT = 256, KT = 64, RS = HD + 1, OPT = (G * HD + NT - 1) / NT;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  for (int pr = threadIdx.x; pr < G * KT; pr += NT) {
    const int h = pr / KT, j = pr - h * KT;
    const float* kr = sk + j * RS;
    float a0 = 0, a1 = 0, a2 = 0, a3 = 0;
#pragma unroll
    for (int d = 0; d < HD; d += 4) {
      a0 += s_q[h][d] * kr[d];
      a1 += s_q[h][d + 1] * kr[d + 1];
      a2 += s_q[h][d + 2] * kr[d + 2];
      a3 += s_q[h][d + 3] * kr[d + 3];
    }
    s_s[h][j] = s_pos[j] < lim ? ((a0 + a1) + (a2 + a3)) * scale : -INFINITY;
  }
  __syncthreads();
  for (int h = warp; h < G; h += NT / 32) {
    const float a = s_s[h][lane], b = s_s[h][lane + 32];
    float tm = fmaxf(a, b);
    for (int off = 16; off > 0; off >>= 1) tm = fmaxf(tm, __shfl_xor_sync(0xffffffffu, tm, off));
    const float m_old = s_m[h], mn = fmaxf(m_old, tm);
    float corr = 1, pa = 0, pb = 0;
    if (mn != -INFINITY) {
      corr = m_old == -INFINITY ? 0.0f : expf(m_old - mn);
      pa = a == -INFINITY ? 0.0f : expf(a - mn);
      pb = b == -INFINITY ? 0.0f : expf(b - mn);
    }
    s_s[h][lane] = pa;
    s_s[h][lane + 32] = pb;
    float ps = pa + pb, ps2 = pa * pa + pb * pb;
    for (int off = 16; off > 0; off >>= 1) {
      ps += __shfl_xor_sync(0xffffffffu, ps, off);
      ps2 += __shfl_xor_sync(0xffffffffu, ps2, off);
    }
    if (lane == 0) {
      s_l[h] = s_l[h] * corr + ps;
      s_l2[h] = s_l2[h] * corr * corr + ps2;
      s_m[h] = mn;
      s_corr[h] = corr;
    }
  }
  __syncthreads();
#pragma unroll
  for (int k = 0; k < OPT; ++k) {
    const int pr = threadIdx.x + k * NT;
    if (pr >= G * HD) break;
    const int h = pr / HD, d = pr - h * HD;
    float a0 = 0, a1 = 0;
#pragma unroll 8
    for (int j = 0; j < KT; j += 2) {
      a0 += s_s[h][j] * sv[j * RS + d];
      a1 += s_s[h][j + 1] * sv[(j + 1) * RS + d];
    }
    o[k] = o[k] * s_corr[h] + (a0 + a1);
  }
}

// Decode (one query per head) over the sequence's pages, a page at a time through shared memory: block
// (chunk, KV head), 256 threads, all G query heads of the KV head. A page's K and V for the KV head are
// unpacked (width chosen once per page, compiled per width) into fp32 tiles by all threads at once, so a
// page's loads are all in flight together; then tile_attend. Chunks and the ring block as in
// attn_decode_paged_kernel; each block's partial state goes to part for merge_parts.
template <int HD, int G>
__global__ void __launch_bounds__(256)
    attn_decode_tiled_kernel(KvDev kv, int layer, const float* q, int n_heads, const StepParams* params,
                             float* part, float* out) {
  constexpr int NT = 256, KT = 64, RS = HD + 1, OPT = (G * HD + NT - 1) / NT;
  extern __shared__ float tiles[];  // K then V, KT x RS each
  float* sk = tiles;
  float* sv = tiles + KT * RS;
  __shared__ float s_q[G][HD];
  __shared__ float s_s[G][KT];
  __shared__ float s_m[G], s_l[G], s_l2[G], s_corr[G];
  __shared__ int s_pos[KT];
  const int chunk = blockIdx.x, kvh = blockIdx.y;
  const KvPageRef first = kv.block[chunk];  // see attn_decode_paged_kernel
  const int pos = params->pos0, n_keys = pos + 1;
  const int n_pages = *kv.n_block;
  const int per = max(1, (n_pages + kDecodeBlocks - 1) / kDecodeBlocks);
  const int n_chunks = (n_pages + per - 1) / per;
  if (chunk > n_chunks) return;
  load_queries<HD, G>(q, kvh, s_q);
  if (threadIdx.x < G) {
    s_m[threadIdx.x] = -INFINITY;
    s_l[threadIdx.x] = s_l2[threadIdx.x] = 0;
  }
  float o[OPT];
#pragma unroll
  for (int k = 0; k < OPT; ++k) o[k] = 0;
  const float scale = 1.0f / sqrtf(static_cast<float>(HD));
  const int quant_below = min(pos - kv.residual, params->fp16_from);
  if (chunk < n_chunks) {
    const int p1 = min(n_pages, (chunk + 1) * per);
    for (int p = chunk * per; p < p1; ++p) {
      const KvPageRef ref = p == chunk * per && per == 1 ? first : kv.block[p];
      __syncthreads();  // the previous tile is consumed
      if (threadIdx.x < KT) s_pos[threadIdx.x] = reinterpret_cast<const int32_t*>(ref.data)[threadIdx.x];
      const KvClass kc = kv.cls[ref.cls];
      const uint8_t* recs = ref.data + kv.geom.record_offset(ref.cls, layer, 0);
      const int tok = static_cast<int>(kv.geom.token_bytes[ref.cls]);
      switch (kc.k_bits) {  // K and V share the width on the GPU
        case 16:
          load_page_tile<HD, 16>(recs, tok, kc.k_row_bytes, kc.group, kvh, sk, sv);
          break;
        case 8:
          load_page_tile<HD, 8>(recs, tok, kc.k_row_bytes, kc.group, kvh, sk, sv);
          break;
        case 4:
          load_page_tile<HD, 4>(recs, tok, kc.k_row_bytes, kc.group, kvh, sk, sv);
          break;
        default:
          load_page_tile<HD, 2>(recs, tok, kc.k_row_bytes, kc.group, kvh, sk, sv);
          break;
      }
      __syncthreads();
      tile_attend<HD, G>(sk, sv, s_q, s_s, s_pos, quant_below, scale, s_m, s_l, s_l2, s_corr, o);
    }
  } else {  // the ring: keys [max(0, quant_below), pos] at fp16, 64 at a time
    for (int base = max(0, quant_below); base < n_keys; base += KT) {
      __syncthreads();
      if (threadIdx.x < KT) s_pos[threadIdx.x] = base + threadIdx.x;
      for (int task = threadIdx.x; task < KT * (HD / 32); task += NT) {
        const int j = task / (HD / 32), c = task - j * (HD / 32), t = base + j;
        float x[32], y[32];
        if (t < n_keys) {
          const size_t at =
              (static_cast<size_t>(layer) * kv.ring + t % kv.ring) * kv.kv_dim + kvh * HD + c * 32;
          load_half_elems<32>(reinterpret_cast<const uint8_t*>(kv.ring_k + at), x);
          load_half_elems<32>(reinterpret_cast<const uint8_t*>(kv.ring_v + at), y);
        } else {
#pragma unroll
          for (int e = 0; e < 32; ++e) x[e] = y[e] = 0;
        }
#pragma unroll
        for (int e = 0; e < 32; ++e) {
          sk[j * RS + c * 32 + e] = x[e];
          sv[j * RS + c * 32 + e] = y[e];
        }
      }
      __syncthreads();
      tile_attend<HD, G>(sk, sv, s_q, s_s, s_pos, n_keys, scale, s_m, s_l, s_l2, s_corr, o);
    }
  }
  __syncthreads();
  const int n_parts = n_chunks + 1;
#pragma unroll
  for (int k = 0; k < OPT; ++k) {
    const int pr = threadIdx.x + k * NT;
    if (pr >= G * HD) break;
    const int h = pr / HD, d = pr - h * HD;
    if (n_parts == 1) {
      out[(kvh * G + h) * HD + d] = o[k] / s_l[h];
      if (d == 0 && params->stats)
        write_attn_stats(kv.stat_attn + (static_cast<size_t>(layer) * n_heads + kvh * G + h) * 2, s_l[h],
                         s_l2[h], n_keys);
      continue;
    }
    float* pp = part + (static_cast<size_t>(kvh * G + h) * kDecodeParts + chunk) * (HD + 3);
    pp[d] = o[k];
    if (d == 0) {
      pp[HD] = s_m[h];
      pp[HD + 1] = s_l[h];
      pp[HD + 2] = s_l2[h];
    }
  }
  if (n_parts == 1) return;
  __shared__ MergeScratch<G> merge_scratch;
  merge_parts<HD, G>(kv, layer, n_heads, params, part, out, n_parts, n_keys, merge_scratch);
}

template <int HD>
constexpr size_t tile_smem_bytes() {
  return 2 * 64 * (HD + 1) * sizeof(float);
}

__global__ void attn_merge_kernel(int hd, int n_heads, const StepParams* params, int max_chunks,
                                  const float* part, float* out, __half* out_h) {
  const int i = blockIdx.x, h = blockIdx.y, d = threadIdx.x;
  const int pos = params->pos0 + i;
  const int nc = pos / kAttnChunk + 1;
  const float* p = part + (static_cast<size_t>(i) * n_heads + h) * max_chunks * (hd + 2);
  float M = -INFINITY;
  for (int c = 0; c < nc; ++c) M = fmaxf(M, p[c * (hd + 2) + hd]);
  float L = 0, o = 0;
  for (int c = 0; c < nc; ++c) {
    const float* pc = p + c * (hd + 2);
    const float w = expf(pc[hd] - M);
    L += pc[hd + 1] * w;
    o += pc[d] * w;
  }
  const float r = o / L;
  const size_t at = (static_cast<size_t>(i) * n_heads + h) * hd + d;
  out[at] = r;
  if (out_h) out_h[at] = __float2half_rn(r);
}

// $KVDIAL_CUDA_DECODE_ATTN (or set_decode_attention): "old" (one block per query head and 64 keys, then a
// merge kernel), "tokens" (the per-token-table kernel, attn_decode_kernel), "paged"
// (attn_decode_paged_kernel), "tiled" (attn_decode_tiled_kernel), "mma" (decode_mma.cu: tensor cores,
// cp.async page pipeline) or unset: at head dim 64 tiled while every block has one page (up to kDecodeBlocks
// pages), else mma, as measured (results/cuda_decode_mma.md: at 4096 keys tiled 1-3% faster at head dim
// 64, mma 11-15% faster at 128; mma 1.2-2.3x faster than any other at 32k and 128k).
enum class DecodeMode { Auto, Mma, Tiled, Paged, Tokens, Old };
DecodeMode mode_of(const std::string& v) {
  return v == "old"      ? DecodeMode::Old
         : v == "mma"    ? DecodeMode::Mma
         : v == "tokens" ? DecodeMode::Tokens
         : v == "paged"  ? DecodeMode::Paged
         : v == "tiled"  ? DecodeMode::Tiled
                         : DecodeMode::Auto;
}
std::atomic<int> g_decode_override{-1};
DecodeMode decode_mode() {
  const int o = g_decode_override.load(std::memory_order_relaxed);
  if (o >= 0) return static_cast<DecodeMode>(o);
  static const DecodeMode m = [] {
    const char* e = std::getenv("KVDIAL_CUDA_DECODE_ATTN");
    return mode_of(e ? e : "");
  }();
  return m;
}

// The tiled kernel unpacks 32-element chunks: every quantized class's group a multiple of 32.
bool tiled_decode_fits(const KvDev& kv) {
  if (!kv.block || !kv.n_block || kv.geom.page_shift != kPageShift) return false;
  for (int c = 0; c < kv.n_classes; ++c)
    if (kv.cls[c].k_bits != 16 && kv.cls[c].group % 32 != 0) return false;
  return true;
}

// The paged kernel reads a lane's HD/8 elements within one group: every quantized class's group must
// be a multiple of them.
bool paged_decode_fits(const KvDev& kv) {
  if (!kv.block || !kv.n_block || kv.geom.page_shift != kPageShift) return false;
  for (int c = 0; c < kv.n_classes; ++c)
    if (kv.cls[c].k_bits != 16 && kv.cls[c].group % (kv.head_dim / 8) != 0) return false;
  return true;
}

template <int HD, int G>
void decode_launch(const KvDev& kv, int layer, const float* q, int n_heads, const StepParams* params,
                   int max_keys, float* part, float* out, cudaStream_t s) {
  const DecodeMode mode = decode_mode();
  const bool tiled =
      mode == DecodeMode::Tiled || (mode == DecodeMode::Auto && HD == 64 && max_keys <= kDecodeBlocks * 64);
  if ((mode == DecodeMode::Mma || (mode == DecodeMode::Auto && !tiled)) &&
      launch_decode_mma(kv, layer, q, n_heads, G, params, part, out, s))
    return;
  if (tiled && tiled_decode_fits(kv))
    attn_decode_tiled_kernel<HD, G><<<dim3(kDecodeParts, kv.n_kv_heads), 256, tile_smem_bytes<HD>(), s>>>(
        kv, layer, q, n_heads, params, part, out);
  else if (mode != DecodeMode::Tokens && paged_decode_fits(kv))
    attn_decode_paged_kernel<HD, G>
        <<<dim3(kDecodeParts, kv.n_kv_heads), 256, 0, s>>>(kv, layer, q, n_heads, params, part, out);
  else
    attn_decode_kernel<HD, G>
        <<<dim3(kDecodeBlocks, kv.n_kv_heads), 256, 0, s>>>(kv, layer, q, n_heads, params, part, out);
}

// $KVDIAL_CUDA_PREFILL_ATTN=old: the prompt path uses the one-block-per-query kernel (for comparison).
bool prefill_old() {
  static const bool old = [] {
    const char* e = std::getenv("KVDIAL_CUDA_PREFILL_ATTN");
    return e && std::string(e) == "old";
  }();
  return old;
}

template <int HD, int G>
void allow_tile_smem() {
  KVD_CUDA(cudaFuncSetAttribute(attn_decode_tiled_kernel<HD, G>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                static_cast<int>(tile_smem_bytes<HD>())));
}

using DecodeLaunch = void (*)(const KvDev&, int, const float*, int, const StepParams*, int, float*, float*,
                              cudaStream_t);

// The decode kernel instantiated for head dimension hd and G query heads per KV head; null otherwise.
DecodeLaunch decode_kernel_for(int hd, int G) {
  static constexpr DecodeLaunch k64[9] = {nullptr,
                                          decode_launch<64, 1>,
                                          decode_launch<64, 2>,
                                          decode_launch<64, 3>,
                                          decode_launch<64, 4>,
                                          nullptr,
                                          nullptr,
                                          nullptr,
                                          decode_launch<64, 8>};
  static constexpr DecodeLaunch k128[5] = {nullptr, decode_launch<128, 1>, decode_launch<128, 2>, nullptr,
                                           decode_launch<128, 4>};
  if (hd == 64 && G >= 1 && G <= 8) return k64[G];
  if (hd == 128 && G >= 1 && G <= 4) return k128[G];
  return nullptr;
}

// The decode kernel for the shapes it is instantiated for; false otherwise (the caller falls back).
// max_keys: the most keys a launch may see (a captured graph's bound), for the choice of kernel.
bool launch_decode_attention(const KvDev& kv, int layer, const float* q, int n_heads, int G,
                             const StepParams* params, int max_keys, float* part, float* out,
                             cudaStream_t s) {
  if (!kv.attn_counters || G * kv.n_kv_heads != n_heads) return false;
  if (decode_mode() == DecodeMode::Old) return false;
  const DecodeLaunch f = decode_kernel_for(kv.head_dim, G);
  if (!f) return false;
  f(kv, layer, q, n_heads, params, max_keys, part, out, s);
  return true;
}

}  // namespace

void set_decode_attention(const std::string& kernel) {
  g_decode_override.store(kernel.empty() ? -1 : static_cast<int>(mode_of(kernel)), std::memory_order_relaxed);
}

bool decode_attention_supported(int head_dim, int G) { return decode_kernel_for(head_dim, G) != nullptr; }

void prepare_attention_kernels() {
  static const bool done = [] {
    allow_tile_smem<64, 1>();
    allow_tile_smem<64, 2>();
    allow_tile_smem<64, 3>();
    allow_tile_smem<64, 4>();
    allow_tile_smem<64, 8>();
    allow_tile_smem<128, 1>();
    allow_tile_smem<128, 2>();
    allow_tile_smem<128, 4>();
    prepare_decode_mma();
    return true;
  }();
  (void)done;
}

void launch_rope_append(const KvDev& kv, int layer, float* qkv, int n_heads, int rope_dim, bool halves,
                        const float2* rope_cs, const StepParams* params, int n, cudaStream_t s) {
  rope_append_kernel<true><<<n, 256, 2 * kv.kv_dim * sizeof(float), s>>>(kv, layer, qkv, n_heads, rope_dim,
                                                                         halves ? 1 : 0, rope_cs, params);
}

void launch_rope_ring(const KvDev& kv, int layer, float* qkv, int n_heads, int rope_dim, bool halves,
                      const float2* rope_cs, const StepParams* params, int n, cudaStream_t s) {
  rope_append_kernel<false><<<n, 256, 2 * kv.kv_dim * sizeof(float), s>>>(kv, layer, qkv, n_heads, rope_dim,
                                                                          halves ? 1 : 0, rope_cs, params);
}

void launch_decide_tokens(const KvDev& kv, const DecidedToken* tokens, int n, cudaStream_t s) {
  if (n <= 0) return;
  decide_tokens_kernel<<<dim3(n, kv.n_layers), 256, 2 * kv.kv_dim * sizeof(float), s>>>(kv, tokens);
}

void launch_append_pages(const KvDev& kv, int layer, const StepParams* params, int n, cudaStream_t s) {
  append_pages_kernel<<<n, 256, 2 * kv.kv_dim * sizeof(float), s>>>(kv, layer, params);
}

void launch_attention(const KvDev& kv, int layer, const float* q, int q_stride, int n_heads,
                      const StepParams* params, int n, int max_chunks, float* part, float* out, __half* out_h,
                      cudaStream_t s) {
  const int G = n_heads / kv.n_kv_heads;
  if (n == 1 && out_h == nullptr && q_stride >= n_heads * kv.head_dim &&
      launch_decode_attention(kv, layer, q, n_heads, G, params, max_chunks * kAttnChunk, part, out, s))
    return;
  if (n > 1 && !prefill_old()) {
    const dim3 g((n + 63) / 64, n_heads);
    if (kv.head_dim == 64)
      attn_prefill_kernel<64><<<g, 256, 0, s>>>(kv, layer, q, q_stride, n_heads, params, out, out_h);
    else
      attn_prefill_kernel<128><<<g, 256, 0, s>>>(kv, layer, q, q_stride, n_heads, params, out, out_h);
    return;
  }
  const dim3 grid(max_chunks, n_heads, n);
  if (kv.head_dim == 64)
    attn_partial_kernel<64><<<grid, 128, 0, s>>>(kv, layer, q, q_stride, n_heads, params, max_chunks, part);
  else
    attn_partial_kernel<128><<<grid, 128, 0, s>>>(kv, layer, q, q_stride, n_heads, params, max_chunks, part);
  attn_merge_kernel<<<dim3(n, n_heads), kv.head_dim, 0, s>>>(kv.head_dim, n_heads, params, max_chunks, part,
                                                             out, out_h);
}

}  // namespace kvd::cuda
