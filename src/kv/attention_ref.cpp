// Reference attention: dequantize every K/V head slice to fp32 (un-rotated), then softmax(q.k / sqrt(d)) V in
// plain loops.
#include <algorithm>
#include <cmath>
#include <vector>

#include "kv/attention.h"
#include "kv/kv_quant.h"

namespace kvd::ref {

void attend(const KvCache& cache, int seq, int layer, const AttnShape& shape, const float* q, int pos,
            float* out, AttnStats* stats) {
  const KvLayout& lay = cache.layout();
  const int hd = shape.head_dim, n = pos + 1;
  const int q_per_kv = shape.n_heads / shape.n_kv_heads;
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  const float* signs = cache.rotation_signs(layer);
  std::vector<float> k(hd), v(hd), w(n);
  for (int h = 0; h < shape.n_heads; ++h) {
    const int kvh = h / q_per_kv;
    const float* qh = q + h * hd;
    float mx = -INFINITY;
    for (int t = 0; t < n; ++t) {
      const KvTokenView tok = cache.token(seq, layer, t, pos);
      kv_load_head(lay, tok.bits, false, tok.k, kvh, signs, k.data());
      float s = 0;
      for (int i = 0; i < hd; ++i) s += qh[i] * k[i];
      w[t] = s * scale;
      mx = std::max(mx, w[t]);
    }
    float sum = 0;
    for (int t = 0; t < n; ++t) {
      w[t] = std::exp(w[t] - mx);
      sum += w[t];
    }
    float* oh = out + h * hd;
    std::fill(oh, oh + hd, 0.0f);
    for (int t = 0; t < n; ++t) {
      w[t] /= sum;
      const KvTokenView tok = cache.token(seq, layer, t, pos);
      kv_load_head(lay, tok.bits, true, tok.v, kvh, signs, v.data());
      for (int i = 0; i < hd; ++i) oh[i] += w[t] * v[i];
    }
    if (stats) {
      const double mean = 1.0 / n;
      double var = 0, wmax = 0;
      for (int t = 0; t < n; ++t) {
        var += (w[t] - mean) * (w[t] - mean);
        wmax = std::max(wmax, static_cast<double>(w[t]));
        if (stats->received) (*stats->received)[t] += w[t];
      }
      stats->var_sum += var / n;
      stats->var_count++;
      stats->max_weight_sum += wmax;
    }
  }
}

}  // namespace kvd::ref
