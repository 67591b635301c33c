// The GPU KV cache as kernels see it (plain data, passed by value), and the kernels that write and
// read it: RoPE + quantize-on-append, split-K decode attention and its merge. Host code: kv_gpu.cu.
//
// Memory: pages of page_bytes (a power of two) per layer; physical page p holds all layers, layer l
// at pages[p] + l * page_bytes. A token's record (kv_format.cuh) sits at byte offset tok_off[t] of the
// sequence's page space (page tok_off >> page_shift), never straddling a page: the host assigns
// offsets as kv/kv_cache.cpp's arena does. The newest tokens also live at fp16 in a ring of `ring`
// slots (slot t % ring), read for keys t >= query - residual (a token sees itself at fp16, as on the
// CPU).
#pragma once
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/kv_format.cuh"

namespace kvd::cuda {

struct KvDev {
  int n_layers = 0, n_kv_heads = 0, head_dim = 0, kv_dim = 0;
  int residual = 0;
  int ring = 0;
  uint16_t* ring_k = nullptr;  // [layer][ring][kv_dim] fp16
  uint16_t* ring_v = nullptr;
  uint8_t** pages = nullptr;  // [max_pages]
  int page_shift = 16;
  uint32_t* tok_off = nullptr;  // [max_tokens]
  uint8_t* tok_cls = nullptr;   // [max_tokens]
  int n_classes = 0;
  KvClass cls[kMaxKvClasses];
  int* attn_counters = nullptr;  // [n_kv_heads], zero between launches (the decode kernel's merge)
  // Per-token statistics for policies that decide from them (written when StepParams::stats is set):
  // stat_attn [i][layer][head] = (largest attention weight, variance of the weights over the keys),
  // stat_kv [i][layer] = (sum of K^2, sum of V^2) of the token's row (K after RoPE), fp32.
  float* stat_attn = nullptr;
  float* stat_kv = nullptr;
  int n_heads = 0;
};

// Step parameters read by kernels from device memory (so that a captured graph replays with new ones).
struct StepParams {
  int pos0;  // first position of the batch
  int n;     // tokens in the batch
  // Keys at positions >= fp16_from are read at fp16 from the ring whatever their width: the batch's
  // own tokens when their widths are decided after the forward pass (defer).
  int fp16_from = 0x7fffffff;
  int defer = 0;  // widths decided later: no page records now (decide_tokens writes them)
  int stats = 0;  // write stat_attn / stat_kv
};

constexpr int kAttnChunk = 64;  // keys per attention block (split-K)
// One-query decode attention: blocks per KV head (the keys are split evenly over them, in multiples of
// 64); the partial buffer needs n_heads * kDecodeBlocks * (head_dim + 2) floats.
constexpr int kDecodeBlocks = 160;

// qkv: n rows of [q (n_heads*hd) | k (kv_dim) | v (kv_dim)] fp32, bias already added. Rotates q and k in
// place (rope_cs: [pos][rope_dim/2] (cos, sin) pairs), writes k and v at fp16 into the ring and
// quantized into the pages at the tokens' classes (tok_cls / tok_off, already set).
void launch_rope_append(const KvDev& kv, int layer, float* qkv, int n_heads, int rope_dim, bool halves,
                        const float2* rope_cs, const StepParams* params, int n, cudaStream_t s);

// The same in two parts: RoPE and the fp16 ring only, then (on any stream, later) the page records
// from the ring. A decode step runs the second beside the attention, which reads the step's own token
// from the ring: quantizing leaves the critical path.
void launch_rope_ring(const KvDev& kv, int layer, float* qkv, int n_heads, int rope_dim, bool halves,
                      const float2* rope_cs, const StepParams* params, int n, cudaStream_t s);
void launch_append_pages(const KvDev& kv, int layer, const StepParams* params, int n, cudaStream_t s);
// A token whose width was decided after its forward pass: its class and record offset.
struct DecidedToken {
  int pos;
  uint32_t off;
  uint8_t cls;
};
// Writes the table entries of n decided tokens (a device array) and their page records in every layer,
// from the ring.
void launch_decide_tokens(const KvDev& kv, const DecidedToken* tokens, int n, cudaStream_t s);

// q: n rows of n_heads*hd fp32 (rotated), q_stride floats apart; out: n rows of n_heads*hd fp32 (and
// fp16 when out_h is non-null).
// part: scratch of n * n_heads * max_chunks * (hd + 2) floats. max_chunks bounds the keys: the
// longest query of the batch must have pos < max_chunks * kAttnChunk.
// Whether one-query attention has the fast kernel (and the statistics) for G query heads per KV head.
bool decode_attention_supported(int head_dim, int G);

void launch_attention(const KvDev& kv, int layer, const float* q, int q_stride, int n_heads,
                      const StepParams* params, int n, int max_chunks, float* part, float* out, __half* out_h,
                      cudaStream_t s);

}  // namespace kvd::cuda
