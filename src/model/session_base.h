// What the decoding loops (PolicyRunner, perplexity, bench) need from a sequence being run: forward
// tokens to logits, and the KV cache's few controls and statistics. Session (forward.h) implements it
// over a Backend and a host KvCache; the CUDA engine (cuda/gpu_session.h) over GPU memory.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "kv/kv_cache.h"
#include "model/model.h"

namespace kvd {

// What the forward pass measures for each token it runs (the policies' saliency inputs that come from
// inside the model; entropy and the like come from the logits, in policy/features).
struct TokenForwardStats {
  float attn_var = 0;  // mean over layers and heads of the variance of the attention weights
  float attn_max = 0;  // mean over layers and heads of the largest attention weight
  float k_norm = 0;    // mean over layers of the L2 norm of the token's key (after RoPE)
  float v_norm = 0;    // mean over layers of the L2 norm of the token's value
};

class SessionBase {
 public:
  virtual ~SessionBase() = default;
  // Runs tokens at the next n positions and returns logits (vocab floats per token) for the tokens at
  // indexes [logits_from, n). stats, when non-null, receives one entry per token. bits, when non-null,
  // gives the tokens' KV widths in advance; otherwise they stay undecided until decide().
  virtual const std::vector<float>& forward(const int32_t* tokens, int n, int logits_from,
                                            std::vector<TokenForwardStats>* stats, const uint8_t* bits) = 0;
  virtual int n_tokens() const = 0;
  virtual const Model& model() const = 0;
  virtual const KvLayout& kv_layout() const = 0;
  // The KV controls of kv/kv_cache.h, for this sequence.
  virtual void decide(int pos, int bits) = 0;
  virtual void flush_window() = 0;
  virtual void clear() = 0;
  virtual void truncate(int n) = 0;
  virtual KvStats kv_stats() const = 0;
  // Decided bit-width of a token (16 while undecided).
  virtual int token_bits(int pos) const = 0;
  // Whether truncate() restores the cache exactly (false when tokens that left a residual window kept
  // no fp16 copy: scoring that rewinds, as HellaSwag's, then refuses).
  virtual bool rewinds_exactly() const { return true; }
  // "cpu (2 threads)", "cuda (NVIDIA H200)".
  virtual std::string device_name() const = 0;
  // Device memory line (peak VRAM) for engines that have one; empty otherwise.
  virtual std::string memory_summary() const { return ""; }
  // Peak device memory in bytes: the engine's own allocations, and the device's in use
  // (cudaMemGetInfo, the CUDA context included); 0 for engines without device memory.
  virtual size_t device_engine_peak_bytes() const { return 0; }
  virtual size_t device_used_peak_bytes() const { return 0; }
};

}  // namespace kvd
