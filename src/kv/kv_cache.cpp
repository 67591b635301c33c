// Mixed-precision KV cache: staging, decisions, paged arenas and memory accounting.
#include "kv/kv_cache.h"

#include <algorithm>
#include <array>
#include <cstring>
#include <string>

#include "kv/kv_quant.h"
#include "kv/kv_rotate.h"
#include "kv/kv_setting.h"
#include "util/error.h"
#include "util/fp16.h"

namespace kvd {

double KvStats::avg_bits() const {
  if (tokens == 0) return 0;
  double sum = 0;
  for (int b = 0; b <= 16; ++b) sum += static_cast<double>(b) * static_cast<double>(tokens_at_bits[b]);
  return sum / static_cast<double>(tokens);
}

// Host pages of one width class each (kv/kv_pages.h), shared by the cache's sequences.
class KvCache::Pool final : public KvPagePoolBase {
 public:
  explicit Pool(const KvPageGeom& g) : KvPagePoolBase(g) {}
  uint8_t* page(int p) const { return pages_[static_cast<size_t>(p)].get(); }

 private:
  void create_page(int cls) override { pages_.push_back(std::make_unique<uint8_t[]>(geom_.page_bytes(cls))); }
  void empty_header(int p) override {
    std::fill_n(reinterpret_cast<int32_t*>(page(p)), geom_.page_tokens(), KvPageGeom::kEmptySlot);
  }
  std::vector<std::unique_ptr<uint8_t[]>> pages_;
};

KvCache::KvCache(const KvLayout& layout, const KvCacheOptions& options) : layout_(layout), options_(options) {
  if (layout_.group <= 0 || layout_.head_dim % layout_.group != 0 || layout_.group % 4 != 0)
    throw Error("--kv-group " + std::to_string(layout_.group) + " must divide the head dimension (" +
                std::to_string(layout_.head_dim) + ") and be a multiple of 4");
  validate_kv_layout(layout_);
  if (layout_.rotate) {
    if (!kv_rotation_supported(layout_.head_dim))
      throw Error("--kv-rotate 1 needs a power-of-two head dimension of at most 256 (this model's is " +
                  std::to_string(layout_.head_dim) + "): use --kv-rotate 0");
    signs_ = kv_rotation_signs(layout_.n_layers, layout_.n_kv_heads, layout_.head_dim, layout_.rotate_seed);
  }
  if (options_.max_tokens <= 0) throw Error("context size must be positive");
  if (options_.residual < 0) throw Error("--kv-residual must be >= 0");
  KVD_ASSERT(options_.n_seqs >= 1);
  if (options_.page_shift < 0 || options_.page_shift > 12) throw Error("KV pages hold 1 to 4096 tokens");
  rec_stride_ = layout_.max_token_bytes();
  for (int c : kKvClasses) {
    k_bytes_[c] = layout_.k_row_bytes(c);
    tok_bytes_[c] = layout_.token_bytes(c);
  }
  geom_ = make_page_geom(layout_, options_.page_shift);
  pool_ = std::make_unique<Pool>(geom_);
  seqs_.resize(static_cast<size_t>(options_.n_seqs));
  for (auto& s : seqs_) {
    s.pages = KvSeqPages(options_.page_shift);
    s.staged_k.resize(static_cast<size_t>(layout_.n_layers));
    s.staged_v.resize(static_cast<size_t>(layout_.n_layers));
    s.staged_q.resize(static_cast<size_t>(layout_.n_layers));
  }
}

KvCache::~KvCache() = default;

KvCache::Sequence& KvCache::seq_ref(int seq) {
  KVD_ASSERT(seq >= 0 && seq < static_cast<int>(seqs_.size()));
  return seqs_[static_cast<size_t>(seq)];
}
const KvCache::Sequence& KvCache::seq_ref(int seq) const {
  KVD_ASSERT(seq >= 0 && seq < static_cast<int>(seqs_.size()));
  return seqs_[static_cast<size_t>(seq)];
}

int KvCache::n_tokens(int seq) const { return seq_ref(seq).n_tokens; }
int KvCache::n_arena(int seq) const { return seq_ref(seq).n_arena; }

int KvCache::begin_tokens(int seq, int n, const uint8_t* bits) {
  Sequence& s = seq_ref(seq);
  if (n < 0 || s.n_tokens + n > options_.max_tokens)
    throw Error("context full: " + std::to_string(s.n_tokens) + " + " + std::to_string(n) +
                " tokens exceed the context size " + std::to_string(options_.max_tokens) + " (raise -c)");
  const int first = s.n_tokens;
  s.n_tokens += n;
  s.token_bits.resize(static_cast<size_t>(s.n_tokens), 16);
  s.decided.resize(static_cast<size_t>(s.n_tokens), 0);
  s.token_loc.resize(static_cast<size_t>(s.n_tokens), 0);
  if (bits) {
    for (int i = 0; i < n; ++i) {
      if (!kv_bits_valid(bits[i]))
        throw Error("KV bit-width " + std::to_string(bits[i]) + " is not one of 2, 4, 8, 16");
      s.token_bits[first + i] = bits[i];
      s.decided[first + i] = 1;
    }
  }
  const size_t staged = static_cast<size_t>(s.n_tokens - s.n_arena);
  for (int l = 0; l < layout_.n_layers; ++l) {
    s.staged_k[l].resize(staged * layout_.kv_dim());
    s.staged_v[l].resize(staged * layout_.kv_dim());
    s.staged_q[l].resize(staged * rec_stride_);
  }
  return first;
}

void KvCache::write(int seq, int layer, int pos, const float* k, const float* v) {
  Sequence& s = seq_ref(seq);
  KVD_ASSERT(layer >= 0 && layer < layout_.n_layers);
  KVD_ASSERT(pos >= s.n_arena && pos < s.n_tokens);
  const size_t off = static_cast<size_t>(pos - s.n_arena) * layout_.kv_dim();
  uint16_t* dk = s.staged_k[layer].data() + off;
  uint16_t* dv = s.staged_v[layer].data() + off;
  for (int i = 0; i < layout_.kv_dim(); ++i) {
    dk[i] = float_to_fp16(k[i]);
    dv[i] = float_to_fp16(v[i]);
  }
  if (s.decided[pos]) quantize_staged(s, layer, pos);
}

void KvCache::quantize_staged(Sequence& s, int layer, int pos) {
  const int bits = s.token_bits[pos];
  const size_t row = static_cast<size_t>(pos - s.n_arena);
  uint8_t* dst = s.staged_q[layer].data() + row * rec_stride_;
  const float* signs = rotation_signs(layer);
  kv_store_row(layout_, bits, false, s.staged_k[layer].data() + row * layout_.kv_dim(), signs, dst);
  kv_store_row(layout_, bits, true, s.staged_v[layer].data() + row * layout_.kv_dim(), signs,
               dst + layout_.k_row_bytes(bits));
}

void KvCache::decide(int seq, int pos, int bits) {
  Sequence& s = seq_ref(seq);
  if (!kv_bits_valid(bits))
    throw Error("KV bit-width " + std::to_string(bits) + " is not one of 2, 4, 8, 16");
  KVD_ASSERT(pos >= s.n_arena && pos < s.n_tokens);
  if (s.decided[pos] && s.token_bits[pos] == bits) return;
  s.token_bits[pos] = static_cast<uint8_t>(bits);
  s.decided[pos] = 1;
  for (int l = 0; l < layout_.n_layers; ++l) quantize_staged(s, l, pos);
}

void KvCache::flush_window(int seq) {
  // Tokens leave staging in order: the oldest staged token must be decided and out of the window.
  Sequence& s = seq_ref(seq);
  if (options_.stage_only) return;
  int upto = s.n_arena;
  while (upto < s.n_tokens - options_.residual && s.decided[upto]) ++upto;
  if (upto > s.n_arena) move_to_arena(s, upto);
}

void KvCache::move_to_arena(Sequence& s, int upto) {
  const int kv_dim = layout_.kv_dim();
  for (int pos = s.n_arena; pos < upto; ++pos) {
    const int bits = s.token_bits[pos];
    const int c = kv_class_index(bits);
    const uint32_t loc = s.pages.place(c, *pool_);
    uint8_t* page = pool_->page(geom_.page_of(loc));
    const int slot = geom_.slot_of(loc);
    reinterpret_cast<int32_t*>(page)[slot] = pos;
    const size_t staged_row = static_cast<size_t>(pos - s.n_arena);
    for (int l = 0; l < layout_.n_layers; ++l)
      std::memcpy(page + geom_.record_offset(c, l, slot), s.staged_q[l].data() + staged_row * rec_stride_,
                  tok_bytes_[bits]);
    s.token_loc[pos] = loc;
  }
  const size_t drop = static_cast<size_t>(upto - s.n_arena) * kv_dim;
  const size_t drop_q = static_cast<size_t>(upto - s.n_arena) * rec_stride_;
  for (int l = 0; l < layout_.n_layers; ++l) {
    s.staged_q[l].erase(s.staged_q[l].begin(), s.staged_q[l].begin() + static_cast<std::ptrdiff_t>(drop_q));
    s.staged_k[l].erase(s.staged_k[l].begin(), s.staged_k[l].begin() + static_cast<std::ptrdiff_t>(drop));
    s.staged_v[l].erase(s.staged_v[l].begin(), s.staged_v[l].begin() + static_cast<std::ptrdiff_t>(drop));
    // After a long prompt the staging vectors would keep their capacity: give it back.
    const size_t keep = std::max<size_t>(4 * s.staged_k[l].size(), static_cast<size_t>(kv_dim) * 64);
    if (s.staged_k[l].capacity() > keep) {
      s.staged_k[l].shrink_to_fit();
      s.staged_v[l].shrink_to_fit();
      s.staged_q[l].shrink_to_fit();
    }
  }
  s.n_arena = upto;
}

void KvCache::clear(int seq) {
  Sequence& s = seq_ref(seq);
  s.pages.clear(*pool_);
  s.token_loc.clear();
  s.token_bits.clear();
  s.decided.clear();
  s.n_arena = 0;
  s.n_tokens = 0;
  for (int l = 0; l < layout_.n_layers; ++l) {
    s.staged_k[l].clear();
    s.staged_v[l].clear();
    s.staged_q[l].clear();
  }
}

void KvCache::truncate(int seq, int n) {
  Sequence& s = seq_ref(seq);
  KVD_ASSERT(n >= 0);
  if (n >= s.n_tokens) return;
  if (n < s.n_arena) {
    // A class's tokens fill its pages in position order: keep each class's arena tokens below n.
    std::array<int, 4> keep{};
    for (int pos = 0; pos < n; ++pos) keep[static_cast<size_t>(kv_class_index(s.token_bits[pos]))]++;
    for (const KvSeqPages::SlotRange& r : s.pages.truncate(keep, *pool_))
      std::fill_n(reinterpret_cast<int32_t*>(pool_->page(r.page)) + r.slot0, r.count, KvPageGeom::kEmptySlot);
    s.n_arena = n;
  }
  s.n_tokens = n;
  s.token_bits.resize(static_cast<size_t>(n));
  s.decided.resize(static_cast<size_t>(n));
  s.token_loc.resize(static_cast<size_t>(n));
  const size_t staged = static_cast<size_t>(s.n_tokens - s.n_arena);
  for (int l = 0; l < layout_.n_layers; ++l) {
    s.staged_k[l].resize(staged * layout_.kv_dim());
    s.staged_v[l].resize(staged * layout_.kv_dim());
    s.staged_q[l].resize(staged * rec_stride_);
  }
}

KvTokenView KvCache::token(int seq, int layer, int pos, int query_pos) const {
  const Sequence& s = seq_ref(seq);
  KVD_ASSERT(pos >= 0 && pos < s.n_tokens);
  if (pos >= s.n_arena) {
    const size_t row = static_cast<size_t>(pos - s.n_arena);
    if (s.decided[pos] && pos < query_pos - options_.residual) {
      const int bits = s.token_bits[pos];
      const uint8_t* rec = s.staged_q[layer].data() + row * rec_stride_;
      return {bits, rec, rec + k_bytes_[bits]};
    }
    const size_t off = row * layout_.kv_dim();
    return {16, reinterpret_cast<const uint8_t*>(s.staged_k[layer].data() + off),
            reinterpret_cast<const uint8_t*>(s.staged_v[layer].data() + off)};
  }
  const int bits = s.token_bits[pos];
  const uint32_t loc = s.token_loc[pos];
  const uint8_t* base =
      pool_->page(geom_.page_of(loc)) + geom_.record_offset(kv_class_index(bits), layer, geom_.slot_of(loc));
  return {bits, base, base + k_bytes_[bits]};
}

int KvCache::token_bits(int seq, int pos) const {
  const Sequence& s = seq_ref(seq);
  KVD_ASSERT(pos >= 0 && pos < s.n_tokens);
  return s.token_bits[pos];
}

size_t KvCache::pool_bytes() const { return pool_->bytes(); }

const float* KvCache::rotation_signs(int layer) const {
  if (signs_.empty()) return nullptr;
  return signs_.data() + static_cast<size_t>(layer) * layout_.n_kv_heads * layout_.head_dim;
}

const uint16_t* KvCache::staged_k(int seq, int layer) const { return seq_ref(seq).staged_k[layer].data(); }
const uint16_t* KvCache::staged_v(int seq, int layer) const { return seq_ref(seq).staged_v[layer].data(); }

KvStats KvCache::stats(int seq) const {
  const Sequence& s = seq_ref(seq);
  KvStats st;
  st.tokens = s.n_tokens;
  size_t stored = 0;
  for (int pos = 0; pos < s.n_tokens; ++pos) {
    const int bits = pos < s.n_arena ? s.token_bits[pos] : 16;
    st.tokens_at_bits[bits]++;
    stored += layout_.token_bytes(bits) * layout_.n_layers;
  }
  st.bytes_stored = stored;
  size_t alloc = 0;
  for (int c = 0; c < 4; ++c) alloc += s.pages.pages_of(c).size() * geom_.page_bytes(c);
  for (int l = 0; l < layout_.n_layers; ++l)
    alloc +=
        (s.staged_k[l].capacity() + s.staged_v[l].capacity()) * sizeof(uint16_t) + s.staged_q[l].capacity();
  st.bytes_allocated = alloc;
  const double elems = 2.0 * layout_.kv_dim() * layout_.n_layers * static_cast<double>(s.n_tokens);
  st.effective_bits = elems > 0 ? 8.0 * static_cast<double>(stored) / elems : 0;
  return st;
}

}  // namespace kvd
