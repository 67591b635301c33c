// Llama-family forward pass over a batch of tokens, top to bottom.
#include "model/forward.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "util/error.h"

namespace kvd {

Session::Session(const Model& model, Backend& backend, KvCache& cache, int seq, int n_batch)
    : model_(model), backend_(backend), cache_(cache), seq_(seq), n_batch_(std::max(1, n_batch)) {
  const ModelConfig& c = model.config();
  const KvLayout& lay = cache.layout();
  if (lay.n_layers != c.n_layers || lay.n_kv_heads != c.n_kv_heads || lay.head_dim != c.head_dim)
    throw Error("KV cache shape does not match the model");
}

const std::vector<float>& Session::forward(const int32_t* tokens, int n, int logits_from,
                                           std::vector<TokenForwardStats>* stats, const uint8_t* bits) {
  const int vocab = model_.config().vocab;
  KVD_ASSERT(logits_from >= 0 && logits_from <= n);
  for (int i = 0; i < n; ++i)
    if (tokens[i] < 0 || tokens[i] >= vocab)
      throw Error("token id " + std::to_string(tokens[i]) + " is outside the vocabulary (" + std::to_string(vocab) + ")");
  logits_.resize(static_cast<size_t>(n - logits_from) * vocab);
  if (stats) stats->assign(static_cast<size_t>(n), TokenForwardStats{});
  for (int b = 0; b < n; b += n_batch_) {
    const int nb = std::min(n_batch_, n - b);
    // Logits wanted from this batch: tokens [max(b, logits_from), b + nb).
    const int from = std::clamp(logits_from - b, 0, nb);
    float* out = logits_.data() + static_cast<size_t>(std::max(0, b - logits_from)) * vocab;
    forward_batch(tokens + b, nb, from, out, stats ? stats->data() + b : nullptr, bits ? bits + b : nullptr);
  }
  return logits_;
}

void Session::forward_batch(const int32_t* tokens, int n, int logits_from, float* logits, TokenForwardStats* stats,
                            const uint8_t* bits) {
  const ModelConfig& c = model_.config();
  const Weights& w = model_.weights();
  const int dim = c.dim, hd = c.head_dim;
  const int q_dim = c.n_heads * hd, kv_dim = c.n_kv_heads * hd;
  const size_t N = static_cast<size_t>(n);
  x_.resize(N * dim);
  xb_.resize(N * std::max(dim, q_dim));
  q_.resize(N * q_dim);
  k_.resize(N * kv_dim);
  v_.resize(N * kv_dim);
  att_.resize(N * q_dim);
  gate_.resize(N * c.ffn_dim);
  up_.resize(N * c.ffn_dim);

  const int pos0 = cache_.begin_tokens(seq_, n, bits);
  const AttnShape shape{c.n_heads, c.n_kv_heads, hd};
  std::vector<AttnStats> attn_stats(stats ? N : 0);
  if (track_received_) {
    received_.resize(static_cast<size_t>(pos0 + n), 0.0f);
    for (auto& s : attn_stats) s.received = &received_;
  }

  // x = embedding of each token: (n, dim)
  for (int i = 0; i < n; ++i) embed_token(w.token_embd, tokens[i], x_.data() + static_cast<size_t>(i) * dim);

  for (int l = 0; l < c.n_layers; ++l) {
    const LayerWeights& L = w.layers[l];
    // Attention block: xb = norm(x); q, k, v = xb Wq, xb Wk, xb Wv (+ bias); RoPE on q and k.
    backend_.rmsnorm(x_.data(), L.attn_norm.data(), xb_.data(), n, dim, c.rms_eps);
    backend_.matmul(L.wq, xb_.data(), q_.data(), n);
    backend_.matmul(L.wk, xb_.data(), k_.data(), n);
    backend_.matmul(L.wv, xb_.data(), v_.data(), n);
    if (!L.bq.empty())
      for (int i = 0; i < n; ++i)
        for (int j = 0; j < q_dim; ++j) q_[i * q_dim + j] += L.bq[j];
    if (!L.bk.empty())
      for (int i = 0; i < n; ++i)
        for (int j = 0; j < kv_dim; ++j) k_[i * kv_dim + j] += L.bk[j];
    if (!L.bv.empty())
      for (int i = 0; i < n; ++i)
        for (int j = 0; j < kv_dim; ++j) v_[i * kv_dim + j] += L.bv[j];
    if (!L.q_norm.empty()) {  // Qwen3: RMSNorm of each head's q and k
      backend_.rmsnorm(q_.data(), L.q_norm.data(), q_.data(), n * c.n_heads, hd, c.rms_eps);
      backend_.rmsnorm(k_.data(), L.k_norm.data(), k_.data(), n * c.n_kv_heads, hd, c.rms_eps);
    }
    if (c.rope_scaling.active()) {
      rope_scaled(c.rope_scaling, q_.data(), n, c.n_heads, hd, pos0, c.rope_style);
      rope_scaled(c.rope_scaling, k_.data(), n, c.n_kv_heads, hd, pos0, c.rope_style);
    } else {
      backend_.rope(q_.data(), n, c.n_heads, hd, c.rope_dim, pos0, c.rope_theta, c.rope_style);
      backend_.rope(k_.data(), n, c.n_kv_heads, hd, c.rope_dim, pos0, c.rope_theta, c.rope_style);
    }
    // Write this layer's K and V of every token of the batch, then attend (causal) over the cache.
    for (int i = 0; i < n; ++i) {
      const float* ki = k_.data() + static_cast<size_t>(i) * kv_dim;
      const float* vi = v_.data() + static_cast<size_t>(i) * kv_dim;
      cache_.write(seq_, l, pos0 + i, ki, vi);
      if (stats) {
        float kn = 0, vn = 0;
        for (int j = 0; j < kv_dim; ++j) {
          kn += ki[j] * ki[j];
          vn += vi[j] * vi[j];
        }
        stats[i].k_norm += std::sqrt(kn) / static_cast<float>(c.n_layers);
        stats[i].v_norm += std::sqrt(vn) / static_cast<float>(c.n_layers);
      }
    }
    backend_.attention(cache_, seq_, l, shape, q_.data(), pos0, n, att_.data(), stats ? attn_stats.data() : nullptr);
    // x += att Wo
    backend_.matmul(L.wo, att_.data(), xb_.data(), n);
    for (size_t i = 0; i < N * dim; ++i) x_[i] += xb_[i];

    // Feed-forward block: x += (silu(norm(x) Wgate) * norm(x) Wup) Wdown
    backend_.rmsnorm(x_.data(), L.ffn_norm.data(), xb_.data(), n, dim, c.rms_eps);
    backend_.matmul(L.w_gate, xb_.data(), gate_.data(), n);
    backend_.matmul(L.w_up, xb_.data(), up_.data(), n);
    backend_.swiglu(gate_.data(), up_.data(), gate_.data(), N * c.ffn_dim);
    backend_.matmul(L.w_down, gate_.data(), xb_.data(), n);
    for (size_t i = 0; i < N * dim; ++i) x_[i] += xb_[i];
  }

  // Final norm and logits for the requested tokens only.
  const int n_out = n - logits_from;
  if (n_out > 0) {
    backend_.rmsnorm(x_.data() + static_cast<size_t>(logits_from) * dim, w.output_norm.data(), xb_.data(), n_out, dim,
                     c.rms_eps);
    backend_.matmul(w.output, xb_.data(), logits, n_out);
  }
  // Tokens whose widths were given in advance can leave the staging area now.
  if (bits) cache_.flush_window(seq_);
  if (stats) {
    for (int i = 0; i < n; ++i) {
      const double cnt = std::max<int64_t>(1, attn_stats[i].var_count);
      stats[i].attn_var = static_cast<float>(attn_stats[i].var_sum / cnt);
      stats[i].attn_max = static_cast<float>(attn_stats[i].max_weight_sum / cnt);
    }
  }
}

}  // namespace kvd
