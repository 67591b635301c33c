// The GPU KV cache as kernels see it (plain data, passed by value), and the kernels that write and
// read it: RoPE + quantize-on-append, split-K decode attention and its merge. Host code: gpu_kv.cu.
//
// Memory: pages of one width class each (kv/kv_pages.h: header of slot positions, then each layer's
// records), from a pool; page table `pages` (pool page -> address). A token's location tok_loc[t] is
// page << page_shift | slot, its class tok_cls[t]; the sequence's block table (`block`, *n_block
// entries) lists its pages with their classes for the decode kernel, which walks pages, not tokens.
// The newest tokens also live at fp16 in a ring of `ring` slots (slot t % ring), read for keys
// t >= query - residual (a token sees itself at fp16, as on the CPU).
#pragma once
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/kv_format.cuh"
#include "kv/kv_pages.h"

namespace kvd::cuda {

// One entry of a sequence's block table.
struct KvPageRef {
  const uint8_t* data = nullptr;
  int cls = 0;
  int pad = 0;
};

// Slots a page on the GPU (the decode kernel reads one page per 64-key step).
constexpr int kPageShift = 6;

struct KvDev {
  int n_layers = 0, n_kv_heads = 0, head_dim = 0, kv_dim = 0;
  int residual = 0;
  int ring = 0;
  uint16_t* ring_k = nullptr;  // [layer][ring][kv_dim] fp16
  uint16_t* ring_v = nullptr;
  KvPageGeom geom;
  uint8_t** pages = nullptr;         // [pool pages]
  uint32_t* tok_loc = nullptr;       // [max_tokens]
  uint8_t* tok_cls = nullptr;        // [max_tokens]
  const KvPageRef* block = nullptr;  // this sequence's pages
  const int* n_block = nullptr;      // how many
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
// One-query decode attention: at most kDecodeBlocks blocks per KV head over the keys in pages, one more
// for the keys read from the fp16 ring; the partial buffer needs n_heads * kDecodeParts * (head_dim + 3)
// floats.
constexpr int kDecodeBlocks = 160;
constexpr int kDecodeParts = kDecodeBlocks + 1;

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
  uint32_t loc;
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
// Raises the kernels' shared-memory limits (the tiled decode kernel's page tiles); once, before any launch
// or graph capture (GpuKv's constructor calls it).
void prepare_attention_kernels();

void launch_attention(const KvDev& kv, int layer, const float* q, int q_stride, int n_heads,
                      const StepParams* params, int n, int max_chunks, float* part, float* out, __half* out_h,
                      cudaStream_t s);

}  // namespace kvd::cuda
