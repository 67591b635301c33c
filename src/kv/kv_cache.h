// The mixed-precision KV cache: every token of a sequence is stored at its own bit-width (2, 4, 8
// or 16; one width per token for all layers), in the byte layout of kv/kv_layout.h.
//
// Life of a token: the forward pass writes its K and V (fp16) into the sequence's staging area.
// Its bit-width is decided either before the forward (static policies: begin_tokens with bits) or
// after it, from its features (decide()); it is then quantized once, into a staged record. A query at
// position p reads key t quantized when t is decided and t < p - residual, else at fp16: so a token
// always sees its own key at fp16, and the newest `residual` tokens stay at 16 bits. Decided tokens
// older than the window move, record unchanged, into pages of their width class (kv/kv_pages.h: the same
// layout as the GPU cache), taken from a pool that all sequences of the cache share: a sequence that is
// cleared or rewound gives its pages back for any sequence to reuse.
#pragma once
#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "kv/kv_layout.h"
#include "kv/kv_pages.h"

namespace kvd {

struct KvCacheOptions {
  int max_tokens = 4096;  // per sequence
  int residual = 0;       // newest tokens kept at 16 bits regardless of their decided width
  int n_seqs = 1;
  int page_shift = 6;  // 2^page_shift token slots a page
  // Tokens never leave staging: each keeps its fp16 row beside its quantized record, so its width
  // can be changed later (decide() again) and the sequence rewound (truncate). For measuring what a
  // width costs (collect's sensitivity labels); uses more memory.
  bool stage_only = false;
};

// A stored token's K and V of one layer, as attention reads them.
struct KvTokenView {
  int bits;
  const uint8_t* k;  // layout.k_row_bytes(bits) bytes
  const uint8_t* v;  // layout.v_row_bytes(bits) bytes
};

struct KvStats {
  int64_t tokens = 0;
  std::array<int64_t, 17> tokens_at_bits{};  // index by bit-width; undecided/staged tokens count at 16
  size_t bytes_stored = 0;     // K+V bytes of all layers as the layout says (staged tokens as fp16)
  size_t bytes_allocated = 0;  // pages + staging actually allocated
  double avg_bits() const;     // mean nominal bit-width over tokens
  double effective_bits = 0;   // stored bits per K/V element, scales included
};

class KvCache {
 public:
  KvCache(const KvLayout& layout, const KvCacheOptions& options);
  ~KvCache();
  KvCache(const KvCache&) = delete;
  KvCache& operator=(const KvCache&) = delete;

  const KvLayout& layout() const { return layout_; }
  const KvCacheOptions& options() const { return options_; }

  // Number of tokens (positions) of a sequence: arena + staged.
  int n_tokens(int seq) const;
  // Reserves positions [n_tokens, n_tokens + n) in staging; the forward pass then writes each layer.
  // bits, when non-null, holds the n tokens' widths decided in advance. Returns the first position.
  // Throws kvd::Error when the sequence would exceed max_tokens.
  int begin_tokens(int seq, int n, const uint8_t* bits = nullptr);
  // Writes K and V (kv_dim floats each, RoPE applied) of a reserved position, as fp16.
  void write(int seq, int layer, int pos, const float* k, const float* v);
  // Sets the bit-width of a staged token and quantizes it (once) into its staged record.
  void decide(int seq, int pos, int bits);
  // Moves decided tokens older than the residual window into the arena; call after a step's decisions.
  void flush_window(int seq);
  // Forgets the sequence's tokens; pages are kept for reuse.
  void clear(int seq);
  // Forgets tokens at positions >= n (benchmarks rewind to a fixed depth this way).
  void truncate(int seq, int n);

  // Key/value of token t of one layer as the query at position query_pos reads it (see above).
  KvTokenView token(int seq, int layer, int t, int query_pos) const;
  // Decided bit-width of a token (16 while undecided).
  int token_bits(int seq, int pos) const;
  // Arena tokens are [0, n_arena); staged ones [n_arena, n_tokens).
  int n_arena(int seq) const;
  // Staged (fp16) K/V of one layer: contiguous rows of kv_dim fp16 values for positions n_arena...
  const uint16_t* staged_k(int seq, int layer) const;
  const uint16_t* staged_v(int seq, int layer) const;

  KvStats stats(int seq) const;
  // The page geometry of the arena, and the bytes the shared pool holds (in use or free for reuse).
  const KvPageGeom& page_geom() const { return geom_; }
  size_t pool_bytes() const;
  // The rotation signs of one layer (n_kv_heads x head_dim), nullptr when the layout does not rotate.
  const float* rotation_signs(int layer) const;

 private:
  class Pool;
  struct Sequence {
    // Arena: the sequence's pages (one class each); token_loc[pos] = page << page_shift | slot, the
    // same in every layer since every layer stores the token at the same width.
    KvSeqPages pages{6};
    std::vector<uint32_t> token_loc;
    std::vector<uint8_t> token_bits;  // [pos], for arena and staged tokens (16 until decided)
    std::vector<uint8_t> decided;     // [pos]
    int n_arena = 0;
    int n_tokens = 0;
    // Staging: per layer fp16 rows for positions [n_arena, n_tokens), and for decided tokens their
    // quantized record (stride max_token_bytes(), the largest record).
    std::vector<std::vector<uint16_t>> staged_k, staged_v;
    std::vector<std::vector<uint8_t>> staged_q;
  };

  Sequence& seq_ref(int seq);
  const Sequence& seq_ref(int seq) const;
  void move_to_arena(Sequence& s, int upto);
  void quantize_staged(Sequence& s, int layer, int pos);

  KvLayout layout_;
  KvCacheOptions options_;
  KvPageGeom geom_;
  std::unique_ptr<Pool> pool_;
  std::vector<Sequence> seqs_;
  std::vector<float> signs_;
  size_t rec_stride_ = 0;                         // staged record stride: the largest record
  size_t k_bytes_[17] = {}, tok_bytes_[17] = {};  // by width class  // [layer][kvh][i] when layout_.rotate
};

}  // namespace kvd
