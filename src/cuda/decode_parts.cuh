// What every split-K decode kernel shares: the policies' attention statistics and the merge of the
// blocks' partial softmax states (kv_device.cu's kernels, decode_mma.cu's).
#pragma once
#include <cuda_runtime.h>

#include <cmath>

#include "cuda/kv_device.cuh"

namespace kvd::cuda {

// The policies' attention statistics of one query and head from its softmax sums over n_keys keys
// (weights w = exp(s - M) / L with M the largest score, L2 = sum exp(2 (s - M))): the largest weight 1 / L
// and the weights' variance sum w^2 / n - 1 / n^2.
__device__ inline void write_attn_stats(float* st, float L, float L2, int n_keys) {
  const float nk = static_cast<float>(n_keys);
  st[0] = 1.0f / L;
  st[1] = L2 / (L * L) / nk - 1.0f / (nk * nk);
}

// After a block wrote its partial state (part[(kvh * G + h) * kDecodeParts + chunk]: unnormalized output,
// max, sum, sum of squares): the last of the KV head's n_parts blocks to get here merges them all and
// writes the output (and the policies' statistics). Every head at once, so that the merge costs two
// round trips to L2 whatever G: the parts' (M, L, L2) into shared memory (all loads in flight), then warp
// h reduces head h, then each output element sums its parts (loads through L2: other blocks wrote them).
// The merge's shared memory (a kernel with shared memory to spare lends it).
template <int G>
struct MergeScratch {
  float w[G][kDecodeParts], pm[G][kDecodeParts], pl[G][kDecodeParts], pq[G][kDecodeParts];
};

template <int HD, int G>
__device__ inline void merge_parts(const KvDev& kv, int layer, int n_heads, const StepParams* params,
                                   const float* part, float* out, int n_parts, int n_keys,
                                   MergeScratch<G>& sc) {
  constexpr int NT = 256;
  float(&s_w)[G][kDecodeParts] = sc.w;
  float(&s_pm)[G][kDecodeParts] = sc.pm;
  float(&s_pl)[G][kDecodeParts] = sc.pl;
  float(&s_pq)[G][kDecodeParts] = sc.pq;
  __shared__ float s_L[G];
  __shared__ int s_last;
  const int kvh = blockIdx.y, lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) s_last = atomicAdd(&kv.attn_counters[kvh], 1) == n_parts - 1;
  __syncthreads();
  if (!s_last) return;
  __threadfence();
  constexpr int PS = HD + 3;  // partial stride: o[HD], M, L, L2
  const float* base = part + static_cast<size_t>(kvh * G) * kDecodeParts * PS;
  for (int j = threadIdx.x; j < G * n_parts; j += NT) {
    const int h = j / n_parts, c = j - h * n_parts;
    const float* pc = base + (static_cast<size_t>(h) * kDecodeParts + c) * PS + HD;
    s_pm[h][c] = __ldcg(pc);
    s_pl[h][c] = __ldcg(pc + 1);
    s_pq[h][c] = __ldcg(pc + 2);
  }
  __syncthreads();
  for (int h = warp; h < G; h += NT / 32) {
    float M = -INFINITY;
    for (int c = lane; c < n_parts; c += 32) M = fmaxf(M, s_pm[h][c]);
    for (int o = 16; o > 0; o >>= 1) M = fmaxf(M, __shfl_xor_sync(0xffffffffu, M, o));
    float L = 0, L2 = 0;
    for (int c = lane; c < n_parts; c += 32) {
      const float w = expf(s_pm[h][c] - M);
      s_w[h][c] = w;
      L += w * s_pl[h][c];
      L2 += w * w * s_pq[h][c];
    }
    for (int o = 16; o > 0; o >>= 1) {
      L += __shfl_xor_sync(0xffffffffu, L, o);
      L2 += __shfl_xor_sync(0xffffffffu, L2, o);
    }
    if (lane == 0) {
      s_L[h] = L;
      if (params->stats)
        write_attn_stats(kv.stat_attn + (static_cast<size_t>(layer) * n_heads + kvh * G + h) * 2, L, L2,
                         n_keys);
    }
  }
  __syncthreads();
  for (int j = threadIdx.x; j < G * HD; j += NT) {
    const int h = j / HD, d = j % HD;
    const float* ph = base + static_cast<size_t>(h) * kDecodeParts * PS + d;
    // Eight parts' loads in flight at a time (a serial chain of L2 round trips otherwise).
    float o[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    int c = 0;
    for (; c + 8 <= n_parts; c += 8)
#pragma unroll
      for (int k = 0; k < 8; ++k) o[k] += s_w[h][c + k] * __ldcg(ph + (c + k) * PS);
    for (; c < n_parts; ++c) o[0] += s_w[h][c] * __ldcg(ph + c * PS);
    out[(kvh * G + h) * HD + d] =
        (((o[0] + o[1]) + (o[2] + o[3])) + ((o[4] + o[5]) + (o[6] + o[7]))) / s_L[h];
  }
  if (threadIdx.x == 0) kv.attn_counters[kvh] = 0;
}

}  // namespace kvd::cuda
