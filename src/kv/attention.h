// Attention of query tokens over the mixed-precision KV cache, with the statistics the saliency
// features need. The reference dequantizes each K/V row and runs plain attention; the fast path
// computes q.k and the weighted sum of V straight from the packed groups.
#pragma once
#include <cstdint>
#include <vector>

#include "kv/kv_cache.h"

namespace kvd {

class ThreadPool;

struct AttnShape {
  int n_heads = 0;     // query heads
  int n_kv_heads = 0;  // key/value heads (grouped-query attention: n_heads % n_kv_heads == 0)
  int head_dim = 0;
};

// Per query token, summed over the layers and heads it was collected for.
struct AttnStats {
  double var_sum = 0;  // sum over (layer, head) of the variance of the attention weights over keys
  int64_t var_count = 0;
  double max_weight_sum = 0;  // sum over (layer, head) of the largest attention weight
  // Attention each key position received (sum over layers and heads), when non-null.
  std::vector<float>* received = nullptr;
};

namespace ref {
// out[h * head_dim ...] for one query at position pos over keys [0, pos] of one layer.
void attend(const KvCache& cache, int seq, int layer, const AttnShape& shape, const float* q, int pos,
            float* out, AttnStats* stats);
}  // namespace ref

namespace cpu {
// n query tokens at positions pos0 .. pos0 + n - 1 (q: n x n_heads*head_dim, out likewise), causal.
// stats, when non-null, has n entries.
void attend(const KvCache& cache, int seq, int layer, const AttnShape& shape, const float* q, int pos0, int n,
            float* out, AttnStats* stats, ThreadPool& pool);
}  // namespace cpu

}  // namespace kvd
