// The forward pass: one function that reads top to bottom (embed -> per layer: norm, q/k/v, RoPE,
// write cache, attention, output, residual, norm, SwiGLU, residual -> final norm -> logits), written
// against the Backend interface. A Session owns the activations of one sequence in a KvCache.
#pragma once
#include <cstdint>
#include <vector>

#include "kv/attention.h"
#include "kv/kv_cache.h"
#include "model/backend.h"
#include "model/model.h"
#include "model/session_base.h"

namespace kvd {

// One sequence's tokens in a batch that spans several sequences of the cache (Session::forward_parts).
struct SeqTokens {
  int seq = 0;
  const int32_t* tokens = nullptr;
  int n = 0;
  const uint8_t* bits = nullptr;  // the tokens' widths in advance, or nullptr (undecided)
};

class Session : public SessionBase {
 public:
  Session(const Model& model, Backend& backend, KvCache& cache, int seq = 0, int n_batch = 256);

  // Runs tokens at the next n positions of the sequence (in batches of n_batch) and returns logits
  // (vocab floats per token) for the tokens at indexes [logits_from, n): (n - logits_from) x vocab.
  // stats, when non-null, receives one entry per token. bits, when non-null, gives the tokens' KV
  // widths in advance; otherwise they stay undecided in the cache until KvCache::decide.
  const std::vector<float>& forward(const int32_t* tokens, int n, int logits_from,
                                    std::vector<TokenForwardStats>* stats = nullptr,
                                    const uint8_t* bits = nullptr) override;

  // Runs several sequences' tokens as one batch, whatever n_batch says: the matmuls see all the rows at
  // once, each part appends to and attends over its own sequence of the cache (the rows of one part never
  // see another's). Returns logits for every token, part after part: (sum of n) x vocab. stats, when
  // non-null, gets one entry per token in the same order; received() counts the parts of this Session's
  // own sequence. Each row's result does not depend on the other rows of the batch, so a part gives the
  // logits it would give run with the same number of rows in all (collect's label windows rely on it).
  const std::vector<float>& forward_parts(const std::vector<SeqTokens>& parts,
                                          std::vector<TokenForwardStats>* stats = nullptr);

  // Attention each position received so far (summed over layers, heads and later queries), when
  // track_received() was turned on before the tokens ran.
  void track_received(bool on) { track_received_ = on; }
  const std::vector<float>& received() const { return received_; }

  int n_tokens() const override { return cache_.n_tokens(seq_); }
  const Model& model() const override { return model_; }
  const KvLayout& kv_layout() const override { return cache_.layout(); }
  void decide(int pos, int bits) override { cache_.decide(seq_, pos, bits); }
  void flush_window() override { cache_.flush_window(seq_); }
  void clear() override { cache_.clear(seq_); }
  void truncate(int n) override { cache_.truncate(seq_, n); }
  KvStats kv_stats() const override { return cache_.stats(seq_); }
  int token_bits(int pos) const override { return cache_.token_bits(seq_, pos); }
  bool rewinds_exactly() const override {
    return cache_.options().residual == 0 || cache_.options().stage_only;
  }
  std::string device_name() const override;
  Backend& backend() { return backend_; }
  KvCache& cache() { return cache_; }
  int seq() const { return seq_; }

 private:
  // Runs the parts as one batch; logits for rows [logits_from, total rows).
  void forward_batch(const std::vector<SeqTokens>& parts, int logits_from, float* logits,
                     TokenForwardStats* stats);

  const Model& model_;
  Backend& backend_;
  KvCache& cache_;
  int seq_;
  int n_batch_;
  bool track_received_ = false;
  std::vector<float> received_;
  // Activations for up to n_batch tokens.
  std::vector<float> x_, xb_, q_, k_, v_, att_, gate_, up_, logits_;
  std::vector<float> knorm_, vnorm_;  // per token of a batch: |K|, |V| of one layer (statistics)
};

}  // namespace kvd
