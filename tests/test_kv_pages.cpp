// Paged KV bookkeeping (kv/kv_pages.h): pages of one class, block tables, truncation.
#include <gtest/gtest.h>

#include <map>
#include <random>
#include <set>

#include "kv/kv_pages.h"
#include "util/error.h"

using namespace kvd;

namespace {

// A pool that hands out page ids, reuses freed ones per class and checks every free.
struct FakePool : KvPageSource {
  std::map<int, int> live;  // page -> class
  std::map<int, std::vector<int>> free_by_class;
  int next = 0;
  int limit = 1 << 30;
  int alloc_page(int cls) override {
    if (static_cast<int>(live.size()) >= limit) throw Error("out of pages");
    int page;
    if (!free_by_class[cls].empty()) {
      page = free_by_class[cls].back();
      free_by_class[cls].pop_back();
    } else {
      page = next++;
    }
    live[page] = cls;
    return page;
  }
  void free_page(int page) override {
    auto it = live.find(page);
    ASSERT_NE(it, live.end()) << "page " << page << " freed twice or never allocated";
    free_by_class[it->second].push_back(page);
    live.erase(it);
  }
};

}  // namespace

TEST(KvPages, GeometryMatchesTheLayout) {
  const KvLayout lay{30, 3, 64, 32};
  const KvPageGeom g = make_page_geom(lay, 6);
  EXPECT_EQ(g.page_tokens(), 64);
  EXPECT_EQ(g.header_bytes(), 256u);
  for (int c = 0; c < 4; ++c) {
    EXPECT_EQ(g.token_bytes[c], lay.token_bytes(kKvClasses[c]));
    EXPECT_EQ(g.page_bytes(c), 256u + 30u * 64u * lay.token_bytes(kKvClasses[c]));
  }
  EXPECT_EQ(g.record_offset(1, 2, 5), 256u + (2u * 64u + 5u) * lay.token_bytes(4));
  const uint32_t loc = KvPageGeom::location(7, 63, 6);
  EXPECT_EQ(g.page_of(loc), 7);
  EXPECT_EQ(g.slot_of(loc), 63);
}

TEST(KvPages, TokensOfAClassFillItsPagesInOrder) {
  FakePool pool;
  KvSeqPages s(2);  // 4 slots a page
  std::vector<uint32_t> locs;
  const int classes[] = {1, 1, 3, 1, 1, 1, 3, 0};
  for (int c : classes) locs.push_back(s.place(c, pool));
  EXPECT_EQ(s.count(1), 5);
  EXPECT_EQ(s.count(3), 2);
  EXPECT_EQ(s.count(0), 1);
  ASSERT_EQ(s.pages_of(1).size(), 2u);  // 5 tokens at 4 a page
  EXPECT_EQ(s.block_table().size(), 4u);
  EXPECT_TRUE(s.block_changed());
  // Class 1's tokens: slots 0..3 of its first page, then slot 0 of its second.
  EXPECT_EQ(locs[0], KvPageGeom::location(s.pages_of(1)[0], 0, 2));
  EXPECT_EQ(locs[4], KvPageGeom::location(s.pages_of(1)[0], 3, 2));
  EXPECT_EQ(locs[5], KvPageGeom::location(s.pages_of(1)[1], 0, 2));
  EXPECT_EQ(locs[6], KvPageGeom::location(s.pages_of(3)[0], 1, 2));
  std::set<uint32_t> distinct(locs.begin(), locs.end());
  EXPECT_EQ(distinct.size(), locs.size());
  // Every page holds one class only.
  for (int c = 0; c < 4; ++c)
    for (int p : s.pages_of(c)) EXPECT_EQ(pool.live.at(p), c);
  s.mark_uploaded();
  s.place(3, pool);  // fits the open page
  EXPECT_FALSE(s.block_changed());
}

TEST(KvPages, TruncateEmptiesTailSlotsAndFreesPages) {
  FakePool pool;
  KvSeqPages s(2);
  for (int i = 0; i < 10; ++i) s.place(1, pool);  // pages: 4 + 4 + 2
  for (int i = 0; i < 3; ++i) s.place(2, pool);
  ASSERT_EQ(pool.live.size(), 4u);
  s.mark_uploaded();
  const auto emptied = s.truncate({0, 5, 3, 0}, pool);
  EXPECT_EQ(s.count(1), 5);
  EXPECT_EQ(pool.live.size(), 3u);  // class 1's third page is back
  EXPECT_TRUE(s.block_changed());
  ASSERT_EQ(emptied.size(), 1u);  // slots 1..3 of class 1's second page
  EXPECT_EQ(emptied[0].page, s.pages_of(1)[1]);
  EXPECT_EQ(emptied[0].slot0, 1);
  EXPECT_EQ(emptied[0].count, 3);
  // The next token of class 1 reuses the first emptied slot.
  EXPECT_EQ(s.place(1, pool), KvPageGeom::location(s.pages_of(1)[1], 1, 2));
  // A truncation at a page boundary empties nothing but frees the page.
  const auto none = s.truncate({0, 4, 3, 0}, pool);
  EXPECT_TRUE(none.empty());
  EXPECT_EQ(s.pages_of(1).size(), 1u);
  s.clear(pool);
  EXPECT_TRUE(pool.live.empty());
  EXPECT_TRUE(s.block_table().empty());
}

TEST(KvPages, RandomPlacementsAndTruncationsKeepTablesConsistent) {
  FakePool pool;
  KvSeqPages s(3);
  std::mt19937 rng(5);
  std::vector<int> cls_of;  // per position
  std::map<uint32_t, int> owner;
  for (int round = 0; round < 200; ++round) {
    const int add = static_cast<int>(rng() % 40);
    for (int i = 0; i < add; ++i) {
      const int c = static_cast<int>(rng() % 4);
      const uint32_t loc = s.place(c, pool);
      ASSERT_EQ(pool.live.at(static_cast<int>(loc >> 3)), c);
      cls_of.push_back(c);
    }
    const int n = static_cast<int>(rng() % (cls_of.size() + 1));
    std::array<int, 4> keep{};
    for (int p = 0; p < n; ++p) keep[static_cast<size_t>(cls_of[static_cast<size_t>(p)])]++;
    s.truncate(keep, pool);
    cls_of.resize(static_cast<size_t>(n));
    size_t pages = 0;
    for (int c = 0; c < 4; ++c) {
      ASSERT_EQ(s.count(c), keep[static_cast<size_t>(c)]);
      ASSERT_EQ(s.pages_of(c).size(), static_cast<size_t>((keep[static_cast<size_t>(c)] + 7) / 8));
      pages += s.pages_of(c).size();
    }
    ASSERT_EQ(s.block_table().size(), pages);
    ASSERT_EQ(pool.live.size(), pages);
  }
}

TEST(KvPages, PoolOutOfPagesIsAnError) {
  FakePool pool;
  pool.limit = 1;
  KvSeqPages s(1);
  s.place(0, pool);
  s.place(0, pool);
  EXPECT_THROW(s.place(0, pool), Error);
}
