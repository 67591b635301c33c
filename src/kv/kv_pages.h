// Paged KV storage, as FlashInfer describes it: a pool of pages shared by sequences, each sequence with
// a block table of its pages. Here every page holds the tokens of one width class, so a kernel reads a
// page with one unpacking routine and no per-token branch; a token goes to the open page of its class
// (attention does not depend on key order once RoPE is applied; the page header keeps each slot's
// position for causal masks and residual windows).
//
// One page of class c, P = 2^page_shift slots, L layers (bytes; records as kv/kv_layout.h describes):
//   [int32 position of each slot, kEmptySlot when the slot holds no token]  P * 4
//   [layer 0: P records of token_bytes(c)] ... [layer L-1: P records]     L * P * token_bytes(c)
// A token's location is page << page_shift | slot. KvPageGeom is plain data with no pointers, usable in
// host and device code alike; KvSeqPages (host) decides which page and slot each token gets.
#pragma once
#include <array>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "kv/kv_layout.h"

#if defined(__CUDACC__)
#define KVD_HOST_DEVICE __host__ __device__
#else
#define KVD_HOST_DEVICE
#endif

namespace kvd {

struct KvPageGeom {
  static constexpr int32_t kEmptySlot = 0x7f7f7f7f;  // what memset(0x7f) leaves: above every position
  int page_shift = 6;
  int n_layers = 0;
  uint32_t token_bytes[4] = {};  // one token's record (K row + V row) in one layer, by class index

  KVD_HOST_DEVICE int page_tokens() const { return 1 << page_shift; }
  KVD_HOST_DEVICE uint32_t header_bytes() const { return 4u << page_shift; }
  KVD_HOST_DEVICE size_t page_bytes(int c) const {
    return header_bytes() + static_cast<size_t>(n_layers) * page_tokens() * token_bytes[c];
  }
  // Byte offset of a slot's record in one layer of a page of class c.
  KVD_HOST_DEVICE size_t record_offset(int c, int layer, int slot) const {
    return header_bytes() + (static_cast<size_t>(layer) * page_tokens() + slot) * token_bytes[c];
  }
  KVD_HOST_DEVICE static uint32_t location(int page, int slot, int shift) {
    return static_cast<uint32_t>(page) << shift | static_cast<uint32_t>(slot);
  }
  KVD_HOST_DEVICE int page_of(uint32_t loc) const { return static_cast<int>(loc >> page_shift); }
  KVD_HOST_DEVICE int slot_of(uint32_t loc) const { return static_cast<int>(loc & ((1u << page_shift) - 1)); }
};

// The geometry of a layout's four width classes (kKvClasses order) at 2^page_shift slots a page.
KvPageGeom make_page_geom(const KvLayout& layout, int page_shift);

// Where pages come from: the pool shared by sequences (device memory on the GPU; a fake in tests).
class KvPageSource {
 public:
  virtual ~KvPageSource() = default;
  // A page for class c (every slot's header kEmptySlot); throws kvd::Error when memory is out.
  virtual int alloc_page(int cls) = 0;
  virtual void free_page(int page) = 0;
};

// The bookkeeping every pool shares: a page's class, and per class a list of freed pages that only that
// class reuses (a class's pages have their own size). A pool supplies the storage: create_page gives
// page n_pages() storage of geom.page_bytes(cls) bytes, empty_header fills a page's header with
// kEmptySlot (on every allocation, fresh or reused).
class KvPagePoolBase : public KvPageSource {
 public:
  int alloc_page(int cls) final;
  void free_page(int page) final;
  int page_class(int page) const { return cls_[static_cast<size_t>(page)]; }
  int n_pages() const { return static_cast<int>(cls_.size()); }
  size_t bytes() const { return bytes_; }  // all pages, in use or free

 protected:
  explicit KvPagePoolBase(const KvPageGeom& geom) : geom_(geom) {}
  virtual void create_page(int cls) = 0;
  virtual void empty_header(int page) = 0;
  const KvPageGeom geom_;

 private:
  std::vector<int> cls_;
  std::array<std::vector<int>, 4> free_;
  size_t bytes_ = 0;
};

// A sequence's pages: per class the pages in fill order (all full but the last), and the block table
// (every page of the sequence in allocation order) that kernels walk.
class KvSeqPages {
 public:
  explicit KvSeqPages(int page_shift) : shift_(page_shift) {}
  // The location of the next token of class c; takes a page from src when the class's page is full
  // (then block_changed() is true until mark_uploaded()).
  uint32_t place(int cls, KvPageSource& src);
  // Slots emptied by truncate that stay in kept pages: their headers must become kEmptySlot.
  struct SlotRange {
    int page, slot0, count;
  };
  // Keeps the first keep[c] tokens of each class (in placement order), returns pages past them to src.
  std::vector<SlotRange> truncate(const std::array<int, 4>& keep, KvPageSource& src);
  void clear(KvPageSource& src);

  const std::vector<int>& block_table() const { return block_; }
  const std::vector<int>& pages_of(int cls) const { return by_class_[static_cast<size_t>(cls)]; }
  int count(int cls) const { return count_[static_cast<size_t>(cls)]; }
  bool block_changed() const { return changed_; }
  void mark_uploaded() { changed_ = false; }

 private:
  int shift_;
  std::array<std::vector<int>, 4> by_class_;
  std::array<int, 4> count_{};
  std::vector<int> block_;
  bool changed_ = false;
};

}  // namespace kvd
