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

std::string Session::device_name() const {
  return backend_.name() + " (" + std::to_string(backend_.threads()) + " threads)";
}

const std::vector<float>& Session::forward(const int32_t* tokens, int n, int logits_from,
                                           std::vector<TokenForwardStats>* stats, const uint8_t* bits) {
  const int vocab = model_.config().vocab;
  KVD_ASSERT(logits_from >= 0 && logits_from <= n);
  for (int i = 0; i < n; ++i)
    if (tokens[i] < 0 || tokens[i] >= vocab)
      throw Error("token id " + std::to_string(tokens[i]) + " is outside the vocabulary (" +
                  std::to_string(vocab) + ")");
  logits_.resize(static_cast<size_t>(n - logits_from) * vocab);
  if (stats) stats->assign(static_cast<size_t>(n), TokenForwardStats{});
  for (int b = 0; b < n; b += n_batch_) {
    const int nb = std::min(n_batch_, n - b);
    // Logits wanted from this batch: tokens [max(b, logits_from), b + nb).
    const int from = std::clamp(logits_from - b, 0, nb);
    float* out = logits_.data() + static_cast<size_t>(std::max(0, b - logits_from)) * vocab;
    forward_batch({SeqTokens{seq_, tokens + b, nb, bits ? bits + b : nullptr}}, from, out,
                  stats ? stats->data() + b : nullptr);
  }
  return logits_;
}

const std::vector<float>& Session::forward_parts(const std::vector<SeqTokens>& parts,
                                                 std::vector<TokenForwardStats>* stats) {
  const int vocab = model_.config().vocab;
  int rows = 0;
  for (const SeqTokens& p : parts) {
    KVD_ASSERT(p.n >= 0);
    for (int i = 0; i < p.n; ++i)
      if (p.tokens[i] < 0 || p.tokens[i] >= vocab)
        throw Error("token id " + std::to_string(p.tokens[i]) + " is outside the vocabulary (" +
                    std::to_string(vocab) + ")");
    rows += p.n;
  }
  logits_.resize(static_cast<size_t>(rows) * vocab);
  if (stats) stats->assign(static_cast<size_t>(rows), TokenForwardStats{});
  if (rows > 0) forward_batch(parts, 0, logits_.data(), stats ? stats->data() : nullptr);
  return logits_;
}

void Session::forward_batch(const std::vector<SeqTokens>& parts, int logits_from, float* logits,
                            TokenForwardStats* stats) {
  const ModelConfig& c = model_.config();
  const Weights& w = model_.weights();
  const int dim = c.dim, hd = c.head_dim;
  const int q_dim = c.n_heads * hd, kv_dim = c.n_kv_heads * hd;
  // Each part's first position in its sequence and first row in the batch.
  std::vector<int> pos0(parts.size()), row0(parts.size());
  int n = 0;
  for (size_t p = 0; p < parts.size(); ++p) {
    row0[p] = n;
    n += parts[p].n;
  }
  const size_t N = static_cast<size_t>(n);
  x_.resize(N * dim);
  xb_.resize(N * std::max(dim, q_dim));
  q_.resize(N * q_dim);
  k_.resize(N * kv_dim);
  v_.resize(N * kv_dim);
  att_.resize(N * q_dim);
  gate_.resize(N * c.ffn_dim);
  up_.resize(N * c.ffn_dim);
  knorm_.resize(N);
  vnorm_.resize(N);

  const AttnShape shape{c.n_heads, c.n_kv_heads, hd};
  std::vector<AttnStats> attn_stats(stats ? N : 0);
  size_t own_end = 0;  // end of this Session's sequence after the batch
  for (size_t p = 0; p < parts.size(); ++p) {
    pos0[p] = cache_.begin_tokens(parts[p].seq, parts[p].n, parts[p].bits);
    if (parts[p].seq == seq_) own_end = std::max(own_end, static_cast<size_t>(pos0[p] + parts[p].n));
  }
  if (track_received_ && own_end > 0) {
    received_.resize(own_end, 0.0f);
    for (size_t p = 0; p < parts.size() && stats; ++p)
      if (parts[p].seq == seq_)
        for (int i = 0; i < parts[p].n; ++i) attn_stats[row0[p] + i].received = &received_;
  }
  // x = embedding of each token: (n, dim)
  for (size_t p = 0; p < parts.size(); ++p)
    backend_.embed(w.token_embd, parts[p].tokens, parts[p].n, x_.data() + static_cast<size_t>(row0[p]) * dim);

  for (int l = 0; l < c.n_layers; ++l) {
    const LayerWeights& L = w.layers[l];
    // Attention block: xb = norm(x); q, k, v = xb Wq, xb Wk, xb Wv (+ bias); RoPE on q and k.
    backend_.rmsnorm(x_.data(), L.attn_norm.data(), xb_.data(), n, dim, c.rms_eps);
    backend_.matmul(L.wq, xb_.data(), q_.data(), n);
    backend_.matmul(L.wk, xb_.data(), k_.data(), n);
    backend_.matmul(L.wv, xb_.data(), v_.data(), n);
    if (!L.bq.empty()) backend_.add_bias(q_.data(), L.bq.data(), n, q_dim);
    if (!L.bk.empty()) backend_.add_bias(k_.data(), L.bk.data(), n, kv_dim);
    if (!L.bv.empty()) backend_.add_bias(v_.data(), L.bv.data(), n, kv_dim);
    if (!L.q_norm.empty()) {  // Qwen3: RMSNorm of each head's q and k
      backend_.rmsnorm(q_.data(), L.q_norm.data(), q_.data(), n * c.n_heads, hd, c.rms_eps);
      backend_.rmsnorm(k_.data(), L.k_norm.data(), k_.data(), n * c.n_kv_heads, hd, c.rms_eps);
    }
    // Per part: RoPE on q and k at its positions, write this layer's K and V of its tokens, then attend
    // (causal) over its sequence.
    for (size_t p = 0; p < parts.size(); ++p) {
      const int np = parts[p].n, r = row0[p];
      if (np == 0) continue;
      float* qp = q_.data() + static_cast<size_t>(r) * q_dim;
      float* kp = k_.data() + static_cast<size_t>(r) * kv_dim;
      backend_.rope(qp, np, c.n_heads, hd, c.rope_dim, pos0[p], c.rope_theta, c.rope_style, c.rope_scaling);
      backend_.rope(kp, np, c.n_kv_heads, hd, c.rope_dim, pos0[p], c.rope_theta, c.rope_style,
                    c.rope_scaling);
      backend_.kv_write(cache_, parts[p].seq, l, pos0[p], np, kp,
                        v_.data() + static_cast<size_t>(r) * kv_dim);
      backend_.attention(cache_, parts[p].seq, l, shape, q_.data() + static_cast<size_t>(r) * q_dim, pos0[p],
                         np, att_.data() + static_cast<size_t>(r) * q_dim,
                         stats ? attn_stats.data() + r : nullptr);
    }
    if (stats) {  // the policies' K and V norms, averaged over layers
      backend_.row_norms(k_.data(), n, kv_dim, knorm_.data());
      backend_.row_norms(v_.data(), n, kv_dim, vnorm_.data());
      for (int i = 0; i < n; ++i) {
        stats[i].k_norm += knorm_[static_cast<size_t>(i)] / static_cast<float>(c.n_layers);
        stats[i].v_norm += vnorm_[static_cast<size_t>(i)] / static_cast<float>(c.n_layers);
      }
    }
    // x += att Wo
    backend_.matmul(L.wo, att_.data(), xb_.data(), n);
    backend_.add(xb_.data(), x_.data(), N * dim);

    // Feed-forward block: x += (silu(norm(x) Wgate) * norm(x) Wup) Wdown
    backend_.rmsnorm(x_.data(), L.ffn_norm.data(), xb_.data(), n, dim, c.rms_eps);
    backend_.matmul(L.w_gate, xb_.data(), gate_.data(), n);
    backend_.matmul(L.w_up, xb_.data(), up_.data(), n);
    backend_.swiglu(gate_.data(), up_.data(), gate_.data(), N * c.ffn_dim);
    backend_.matmul(L.w_down, gate_.data(), xb_.data(), n);
    backend_.add(xb_.data(), x_.data(), N * dim);
  }

  // Final norm and logits for the requested tokens only.
  const int n_out = n - logits_from;
  if (n_out > 0) {
    backend_.rmsnorm(x_.data() + static_cast<size_t>(logits_from) * dim, w.output_norm.data(), xb_.data(),
                     n_out, dim, c.rms_eps);
    backend_.matmul(w.output, xb_.data(), logits, n_out);
  }
  // Tokens whose widths were given in advance can leave the staging area now.
  for (const SeqTokens& p : parts)
    if (p.bits) cache_.flush_window(p.seq);
  if (stats) {
    for (int i = 0; i < n; ++i) {
      const double cnt = std::max<int64_t>(1, attn_stats[i].var_count);
      stats[i].attn_var = static_cast<float>(attn_stats[i].var_sum / cnt);
      stats[i].attn_max = static_cast<float>(attn_stats[i].max_weight_sum / cnt);
    }
  }
}

}  // namespace kvd
