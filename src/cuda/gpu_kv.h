// Host-only entry points to the GPU KV cache for tests and tools (no CUDA headers: usable from plain
// C++ translation units linked with kvdial_cuda).
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "kv/kv_cache.h"
#include "kv/kv_layout.h"

namespace kvd::cuda {

// True when a CUDA device can be used; else why not (in *why).
bool gpu_available(std::string* why = nullptr);

// A GPU KV cache of one sequence driven from the host: tokens appended through the engine's append
// kernel (with RoPE the identity) and attention through the engine's attention kernels.
class KvProbe {
 public:
  KvProbe(const KvLayout& layout, int n_heads, int max_tokens, int residual, int max_batch = 256);
  ~KvProbe();
  // Appends n tokens at the given widths; k and v are [n][n_layers][kv_dim] floats.
  void append(const float* k, const float* v, const uint8_t* bits, int n);
  // Attention of the n queries of the last append (positions pos0 .. pos0 + n - 1, q: n x n_heads*hd).
  // stats, when non-null, receives per query and head (largest weight, variance of the weights).
  void attend(int layer, const float* q, int n, float* out, float* stats = nullptr);
  // Mean time in µs of `iters` attentions of `layer` for the queries of the last append: back to back
  // (L2 warm), or with L2 flushed before each call when cold (as when each layer's KV is read once a
  // step; events around each call); the last call's output in out.
  double time_attend(int layer, const float* q, int iters, bool cold, float* out);
  // Forgets tokens at positions >= n (as KvCache::truncate).
  void truncate(int n);
  // K row then V row of a token of one layer, as stored.
  std::vector<uint8_t> record(int layer, int pos) const;
  KvStats stats() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// The one-query decode-attention kernel for launches from now on, overriding $KVDIAL_CUDA_DECODE_ATTN:
// "mma", "tiled", "paged", "tokens", "old", or "" for the default choice (for tests and benchmarks).
void set_decode_attention(const std::string& kernel);

// Quantizes n rows of kv_dim fp16 values at a width with the append kernel; returns the n rows'
// bytes (layout.row_bytes(bits) each), for comparing with kv_quantize_row_fp16.
std::vector<uint8_t> quantize_rows(const KvLayout& layout, int bits, const std::vector<uint16_t>& rows);

}  // namespace kvd::cuda
