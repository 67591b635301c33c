// Internals of the fast CPU attention (kv/attention_cpu.cpp), shared by its per-target SIMD code and
// its orchestration, and visible to bench_attention and the tests: the scalar path kept as fallback and
// baseline, and the plain structures one chunk of keys is processed with.
#pragma once
#include <cstddef>
#include <cstdint>

#include "kv/attention.h"

namespace kvd::cpu::detail {

// Keys are processed in chunks of this many positions ([c * kKeyChunk, (c + 1) * kKeyChunk)), whatever
// the thread count or the number of query tokens, and the chunks' partial softmax results are merged in
// chunk order: so the float operations for one (query, head) never depend on how the work was split.
// 512 (bench_decode_steps, 2 threads, 4096 tokens: 11.2 ms per step at 16 bits and 9.8 at 4 bits, against
// 13.9 and 12.0 with 128-key chunks; mixed widths gain most, as each width's run in a chunk is longer).
inline constexpr int kKeyChunk = 512;
inline constexpr int kMaxHeadDim = 256;
inline constexpr int kMaxQPerKv = 16;
inline constexpr int kMaxKvHeads = 64;
// Accumulator domains: one per distinct (element order, basis) the stored rows unpack to. Domain 0 is the
// natural order in the original basis (fp16 rows, unrotated 8-bit rows); the others are built per layout from
// the lane order of each (width, group) (kv/attention_cpu.cpp, BuildPerm) and whether the rows are rotated.
// The query is permuted (and rotated) into each domain once; accumulators are turned back once, at the merge.
inline constexpr int kDomains = 6;

// The pre-SIMD implementation (scalar loops, one (query, kv head) per work item): used for shapes the
// SIMD path does not cover, and as the baseline in bench_attention.
void attend_scalar(const KvCache& cache, int seq, int layer, const AttnShape& shape, const float* q, int pos0,
                   int n, float* out, AttnStats* stats, ThreadPool& pool);

// Whether cpu::attend takes the SIMD path for this layout and shape on this CPU.
bool simd_supported(const KvLayout& layout, const AttnShape& shape);
// Name of the Highway target chosen at run time (e.g. "AVX3").
const char* simd_target_name();

struct Geometry {
  int hd = 0, nq = 0, n_kv = 0, n_heads = 0;
  float scale = 0;  // 1 / sqrt(hd)
  // Per width class, in ChunkViews order (16, 8, 4, 2): stored K and V widths and groups, the bytes of one kv
  // head's slice of a K and of a V row, and the domains the kernels read the query in (K) and accumulate in
  // (V).
  int kbits[4] = {}, vbits[4] = {}, kgroup[4] = {}, vgroup[4] = {};
  size_t kslice[4] = {}, vslice[4] = {};
  int kdom[4] = {}, vdom[4] = {};
  int n_dom = 1;
  size_t partial_stride = 0;       // floats of one (chunk, kv head) partial result
  size_t partial_acc = 0;          // offset of the accumulators within a partial
  const int* perm[kDomains] = {};  // domain index -> element index (nullptr: identity)
  bool dom_rot[kDomains] = {};     // the domain is in the rotated basis
  const float* signs = nullptr;    // the layer's rotation signs (n_kv x hd) when any domain is rotated
};

// The keys of one chunk as one query reads them, sorted by width class (16, 8, 4, 2; positions ascending
// within a class) so the kernels run one class at a time.
struct ChunkViews {
  int count = 0;
  int seg[5] = {};  // keys [seg[w], seg[w + 1]) have width class {16, 8, 4, 2}[w]
  const uint8_t* k[kKeyChunk];
  const uint8_t* v[kKeyChunk];
  uint16_t ord[kKeyChunk];  // position - chunk start, per sorted key
};

// One (chunk, kv head) partial result: running max m, sum of exp l and of exp^2 e2 per query head, a
// mask of the domains used, then kDomains x nq x hd accumulators (sum of exp(s - m) * v).
inline size_t partial_floats(int nq, int hd) {
  const size_t head = (3 * static_cast<size_t>(nq) + 1 + 15) / 16 * 16;
  return head + kDomains * static_cast<size_t>(nq) * hd;
}

// Floats of scratch ChunkKernel needs: score rows (kKeyChunk + 16 per head), then per kv head and query
// head of a tile (up to 4) 16 x 16 partial sums, 16 weights and 48 floats of softmax state.
inline size_t chunk_scratch_floats(int n_heads, int n_kv) {
  return static_cast<size_t>(n_heads) * (kKeyChunk + 16) + static_cast<size_t>(n_kv) * 4 * 16 * (16 + 1 + 3);
}

}  // namespace kvd::cpu::detail
