// Plain fp32 reference versions of the small ops (RMSNorm, RoPE, SwiGLU, bias and residual adds, row
// norms, embedding and KV writes), shared by both backends: they cost little next to the matmuls and
// attention.
#pragma once
#include <cmath>
#include <cstddef>

#include "kv/kv_cache.h"
#include "model/backend.h"
#include "model/model.h"
#include "model/rope_scaling.h"

namespace kvd::ref {

inline void rmsnorm(const float* x, const float* weight, float* y, int n, int dim, float eps) {
  for (int t = 0; t < n; ++t) {
    const float* xt = x + static_cast<size_t>(t) * dim;
    float* yt = y + static_cast<size_t>(t) * dim;
    float ss = 0;
    for (int i = 0; i < dim; ++i) ss += xt[i] * xt[i];
    const float inv = 1.0f / std::sqrt(ss / static_cast<float>(dim) + eps);
    for (int i = 0; i < dim; ++i) yt[i] = xt[i] * inv * weight[i];
  }
}

// Pair (a, b) at frequency index i rotates by angle pos * theta^(-2i/rope_dim).
inline void rope(float* x, int n, int n_heads, int head_dim, int rope_dim, int pos0, float theta,
                 RopeStyle style) {
  const int half = rope_dim / 2;
  for (int t = 0; t < n; ++t) {
    const double pos = pos0 + t;
    for (int i = 0; i < half; ++i) {
      const double freq = std::pow(static_cast<double>(theta), -2.0 * i / rope_dim);
      const float c = static_cast<float>(std::cos(pos * freq)), s = static_cast<float>(std::sin(pos * freq));
      for (int h = 0; h < n_heads; ++h) {
        float* v = x + (static_cast<size_t>(t) * n_heads + h) * head_dim;
        const int ia = style == RopeStyle::Adjacent ? 2 * i : i;
        const int ib = style == RopeStyle::Adjacent ? 2 * i + 1 : i + half;
        const float a = v[ia], b = v[ib];
        v[ia] = a * c - b * s;
        v[ib] = a * s + b * c;
      }
    }
  }
}

inline void add_bias(float* x, const float* bias, int n, int dim) {
  for (int t = 0; t < n; ++t)
    for (int j = 0; j < dim; ++j) x[static_cast<size_t>(t) * dim + j] += bias[j];
}

inline void add(const float* x, float* y, size_t count) {
  for (size_t i = 0; i < count; ++i) y[i] += x[i];
}

inline void row_norms(const float* x, int n, int dim, float* out) {
  for (int t = 0; t < n; ++t) {
    float ss = 0;
    for (int j = 0; j < dim; ++j)
      ss += x[static_cast<size_t>(t) * dim + j] * x[static_cast<size_t>(t) * dim + j];
    out[t] = std::sqrt(ss);
  }
}

inline void swiglu(const float* gate, const float* up, float* out, size_t count) {
  for (size_t i = 0; i < count; ++i) out[i] = gate[i] / (1.0f + std::exp(-gate[i])) * up[i];
}

inline void embed(const WeightView& table, const int32_t* tokens, int n, float* x) {
  for (int t = 0; t < n; ++t) embed_token(table, tokens[t], x + static_cast<size_t>(t) * table.cols);
}

inline void kv_write(KvCache& cache, int seq, int layer, int pos0, int n, const float* k, const float* v) {
  const size_t kv_dim = static_cast<size_t>(cache.layout().kv_dim());
  for (int t = 0; t < n; ++t) cache.write(seq, layer, pos0 + t, k + t * kv_dim, v + t * kv_dim);
}

// RoPE with the model's frequency scaling when it has one.
inline void rope_any(float* x, int n, int n_heads, int head_dim, int rope_dim, int pos0, float theta,
                     RopeStyle style, const RopeScaling& scaling) {
  if (scaling.active())
    rope_scaled(scaling, x, n, n_heads, head_dim, pos0, style);
  else
    rope(x, n, n_heads, head_dim, rope_dim, pos0, theta, style);
}

}  // namespace kvd::ref

namespace kvd {

// The ops both CPU backends run as the reference loops above (on the calling thread: they cost little).
class RefSmallOps : public Backend {
 public:
  void embed(const WeightView& table, const int32_t* tokens, int n, float* x) override {
    ref::embed(table, tokens, n, x);
  }
  void add_bias(float* x, const float* bias, int n, int dim) override { ref::add_bias(x, bias, n, dim); }
  void kv_write(KvCache& cache, int seq, int layer, int pos0, int n, const float* k,
                const float* v) override {
    ref::kv_write(cache, seq, layer, pos0, n, k, v);
  }
  void row_norms(const float* x, int n, int dim, float* out) override { ref::row_norms(x, n, dim, out); }
};

}  // namespace kvd
