// Host bookkeeping of paged KV storage (kv/kv_pages.h).
#include "kv/kv_pages.h"

#include <algorithm>

#include "util/error.h"

namespace kvd {

KvPageGeom make_page_geom(const KvLayout& layout, int page_shift) {
  KVD_ASSERT(page_shift >= 0 && page_shift <= 16);
  KvPageGeom g;
  g.page_shift = page_shift;
  g.n_layers = layout.n_layers;
  for (int c = 0; c < 4; ++c) g.token_bytes[c] = static_cast<uint32_t>(layout.token_bytes(kKvClasses[c]));
  return g;
}

int KvPagePoolBase::alloc_page(int cls) {
  KVD_ASSERT(cls >= 0 && cls < 4);
  std::vector<int>& free = free_[static_cast<size_t>(cls)];
  int p;
  if (!free.empty()) {
    p = free.back();
    free.pop_back();
  } else {
    create_page(cls);  // throws when out of memory, before any bookkeeping changes
    p = n_pages();
    cls_.push_back(cls);
    bytes_ += geom_.page_bytes(cls);
  }
  empty_header(p);
  return p;
}

void KvPagePoolBase::free_page(int page) {
  KVD_ASSERT(page >= 0 && page < n_pages());
  free_[static_cast<size_t>(page_class(page))].push_back(page);
}

uint32_t KvSeqPages::place(int cls, KvPageSource& src) {
  KVD_ASSERT(cls >= 0 && cls < 4);
  std::vector<int>& pages = by_class_[static_cast<size_t>(cls)];
  int& n = count_[static_cast<size_t>(cls)];
  const int slot = n & ((1 << shift_) - 1);
  if (slot == 0 && static_cast<size_t>(n >> shift_) == pages.size()) {
    const int page = src.alloc_page(cls);
    pages.push_back(page);
    block_.push_back(page);
    changed_ = true;
  }
  const int page = pages[static_cast<size_t>(n >> shift_)];
  ++n;
  return KvPageGeom::location(page, slot, shift_);
}

std::vector<KvSeqPages::SlotRange> KvSeqPages::truncate(const std::array<int, 4>& keep, KvPageSource& src) {
  std::vector<SlotRange> emptied;
  const int P = 1 << shift_;
  for (size_t c = 0; c < 4; ++c) {
    KVD_ASSERT(keep[c] >= 0);
    if (keep[c] >= count_[c]) continue;
    std::vector<int>& pages = by_class_[c];
    const size_t keep_pages = static_cast<size_t>((keep[c] + P - 1) / P);
    if (keep[c] % P != 0) {  // the kept partial page loses its tail
      const int end = std::min(count_[c], static_cast<int>(keep_pages) * P);
      emptied.push_back({pages[keep_pages - 1], keep[c] % P, end - keep[c]});
    }
    for (size_t p = keep_pages; p < pages.size(); ++p) {
      block_.erase(std::find(block_.begin(), block_.end(), pages[p]));
      src.free_page(pages[p]);
      changed_ = true;
    }
    pages.resize(keep_pages);
    count_[c] = keep[c];
  }
  return emptied;
}

void KvSeqPages::clear(KvPageSource& src) {
  for (int page : block_) src.free_page(page);
  for (auto& p : by_class_) p.clear();
  count_ = {};
  block_.clear();
  changed_ = true;
}

}  // namespace kvd
