// The SIMD CPU attention (kv/attention_cpu.cpp) against the reference over head sizes, group sizes,
// query heads per kv head and context lengths; its determinism (1 vs 2 threads, batched vs one query at a
// time, bit for bit); its statistics over several key chunks; the scalar fallback; every SIMD target.
#include <gtest/gtest.h>
#include <hwy/targets.h>

#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "kv/attention.h"
#include "kv/attention_cpu_internal.h"
#include "kv/kv_cache.h"
#include "util/thread_pool.h"

namespace kvd {
namespace {

constexpr int kLayers = 2;
// Contexts of a whole key chunk and part of the next (the fast path merges chunks).
constexpr int kTwoChunks = cpu::detail::kKeyChunk + 88;

// A cache of n_ctx decided tokens (widths cycling through `widths`, moved to the arena), then n_q staged
// query tokens decided in advance the same way (or undecided: 16 bits) as during a batch's forward.
struct Fixture {
  KvLayout layout;
  AttnShape shape;
  std::unique_ptr<KvCache> cache;
  int n_ctx = 0, n_q = 0;
  std::vector<float> q;

  Fixture(int head_dim, int group, int nq, int n_kv, int n_ctx_, int n_q_, const std::vector<int>& widths,
          int residual = 0, bool decide_queries = true)
      : layout{kLayers, n_kv, head_dim, group}, shape{nq * n_kv, n_kv, head_dim}, n_ctx(n_ctx_), n_q(n_q_) {
    KvCacheOptions o;
    o.max_tokens = n_ctx + n_q;
    o.residual = residual;
    cache = std::make_unique<KvCache>(layout, o);
    std::mt19937 rng(static_cast<uint32_t>(head_dim * 1000 + group * 10 + nq + n_ctx));
    std::normal_distribution<float> nd;
    std::vector<float> k(layout.kv_dim()), v(layout.kv_dim());
    std::vector<uint8_t> bits(static_cast<size_t>(n_ctx + n_q));
    for (size_t i = 0; i < bits.size(); ++i)
      bits[i] = static_cast<uint8_t>(widths[(i * 7 + i / 3) % widths.size()]);
    auto write = [&](int first, int n) {
      for (int i = 0; i < n; ++i)
        for (int l = 0; l < kLayers; ++l) {
          for (auto& x : k) x = nd(rng) + 0.5f * static_cast<float>(l);
          for (auto& x : v) x = nd(rng);
          cache->write(0, l, first + i, k.data(), v.data());
        }
    };
    for (int b = 0; b < n_ctx; b += 200) {
      const int nb = std::min(200, n_ctx - b);
      write(cache->begin_tokens(0, nb, bits.data() + b), nb);
      cache->flush_window(0);
    }
    if (n_q > 0) write(cache->begin_tokens(0, n_q, decide_queries ? bits.data() + n_ctx : nullptr), n_q);
    q.resize(static_cast<size_t>(n_q) * shape.n_heads * head_dim);
    for (auto& x : q) x = 2.0f * nd(rng);
  }
  size_t stride() const { return static_cast<size_t>(shape.n_heads) * shape.head_dim; }

  // cpu::attend for query tokens [i0, i0 + n) of the batch.
  std::vector<float> fast(int layer, int i0, int n, ThreadPool& pool, AttnStats* stats = nullptr) const {
    std::vector<float> out(static_cast<size_t>(n) * stride());
    cpu::attend(*cache, 0, layer, shape, q.data() + i0 * stride(), n_ctx + i0, n, out.data(), stats, pool);
    return out;
  }
  std::vector<float> reference(int layer, int i, AttnStats* stats = nullptr) const {
    std::vector<float> out(stride());
    ref::attend(*cache, 0, layer, shape, q.data() + i * stride(), n_ctx + i, out.data(), stats);
    return out;
  }
};

void expect_close(const std::vector<float>& fast, const std::vector<float>& ref, const std::string& what) {
  ASSERT_EQ(fast.size(), ref.size());
  for (size_t i = 0; i < ref.size(); ++i)
    ASSERT_NEAR(fast[i], ref[i], 2e-5f + 2e-5f * std::abs(ref[i])) << what << " element " << i;
}

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

// ---------------------------------------------------------------------------------------------------
// Against the reference: head_dim x group x query heads per kv head, 1- and 600-token contexts.

class AttentionShapes : public ::testing::TestWithParam<std::tuple<int, int, int>> {};

TEST_P(AttentionShapes, MatchesReference) {
  const auto [head_dim, group, nq] = GetParam();
  ThreadPool pool(2);
  const std::vector<int> mixed{16, 2, 4, 8, 4, 2, 2};
  // 1 token: the query attends to itself (at fp16).
  {
    const Fixture s(head_dim, group, nq, 2, 0, 1, mixed);
    EXPECT_TRUE(cpu::detail::simd_supported(s.layout, s.shape));
    for (int l = 0; l < kLayers; ++l)
      expect_close(s.fast(l, 0, 1, pool), s.reference(l, 0), "1-token context");
  }
  // Two key chunks of mixed widths, then each width alone; 3 queries in one call and alone.
  for (const std::vector<int>& widths : {mixed, {16}, {8}, {4}, {2}}) {
    const Fixture s(head_dim, group, nq, 2, kTwoChunks - 3, 3, widths);
    const std::string what = std::to_string(kTwoChunks) + " tokens, widths[0] " + std::to_string(widths[0]) +
                             " of " + std::to_string(widths.size());
    for (int l = 0; l < kLayers; ++l) {
      const auto batch = s.fast(l, 0, 3, pool);
      for (int i = 0; i < 3; ++i) {
        const auto ref = s.reference(l, i);
        expect_close(std::vector<float>(batch.begin() + i * s.stride(), batch.begin() + (i + 1) * s.stride()),
                     ref, what + " batched");
        expect_close(s.fast(l, i, 1, pool), ref, what + " single");
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(HeadGroupQ, AttentionShapes,
                         ::testing::Combine(::testing::Values(64, 128), ::testing::Values(16, 32, 64),
                                            ::testing::Range(1, 9)),
                         [](const auto& info) {
                           return "hd" + std::to_string(std::get<0>(info.param)) + "_g" +
                                  std::to_string(std::get<1>(info.param)) + "_nq" +
                                  std::to_string(std::get<2>(info.param));
                         });

// ---------------------------------------------------------------------------------------------------
// Determinism.

// 1 and 2 threads give the same bits, at all-16 and at mixed widths, for a decode step (one query: its
// key chunks spread over the threads) and batches of 5 (chunks spread with 2 threads, whole queries per
// item with 1) and 20 queries.
TEST(AttentionDeterminism, OneAndTwoThreadsBitIdentical) {
  ThreadPool one(1), two(2);
  for (const std::vector<int>& widths : {std::vector<int>{16}, std::vector<int>{16, 8, 4, 2, 2, 4}}) {
    for (int hd : {64, 128}) {
      const Fixture s(hd, 32, 3, 3, kTwoChunks, 20, widths);
      for (int l = 0; l < kLayers; ++l)
        for (const auto& [i0, n] : {std::pair{19, 1}, std::pair{0, 5}, std::pair{0, 20}}) {
          EXPECT_TRUE(same_bits(s.fast(l, i0, n, one), s.fast(l, i0, n, two)))
              << "widths " << widths.size() << " hd " << hd << " layer " << l << " n " << n;
        }
    }
  }
}

// A batch of queries gives, for each, the same bits as that query alone (all-16 as the forward-pass tests
// need, and mixed widths with a residual window, where a batch sees its own keys at fp16 or quantized
// depending on the query).
TEST(AttentionDeterminism, BatchedEqualsSingleBitIdentical) {
  ThreadPool pool(2);
  for (const std::vector<int>& widths : {std::vector<int>{16}, std::vector<int>{4, 16, 2, 8}}) {
    for (int residual : {0, 3}) {
      const Fixture s(64, 32, 3, 3, kTwoChunks, 40, widths, residual);
      for (int l = 0; l < kLayers; ++l) {
        const auto batch = s.fast(l, 0, 40, pool);
        for (int i = 0; i < 40; ++i) {
          const auto single = s.fast(l, i, 1, pool);
          ASSERT_EQ(0, std::memcmp(batch.data() + i * s.stride(), single.data(), s.stride() * sizeof(float)))
              << "widths " << widths.size() << " residual " << residual << " layer " << l << " query " << i;
        }
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------------
// Statistics over several chunks, with one received-attention vector shared by the batch (as the forward
// pass does), against the reference.

TEST(AttentionStats, MatchReferenceOverChunks) {
  for (int threads : {1, 2}) {
    ThreadPool pool(threads);
    const Fixture s(64, 32, 3, 3, kTwoChunks, 6, {16, 4, 2, 8});
    for (int l = 0; l < kLayers; ++l) {
      std::vector<AttnStats> st_fast(6), st_ref(6);
      std::vector<float> recv_fast(kTwoChunks + 6, 0.0f), recv_ref(kTwoChunks + 6, 0.0f);
      for (int i = 0; i < 6; ++i) {
        st_fast[i].received = &recv_fast;
        st_ref[i].received = &recv_ref;
        s.reference(l, i, &st_ref[i]);
      }
      // Two calls (a decode-size one and a batch) accumulate like the reference's six.
      s.fast(l, 0, 1, pool, st_fast.data());
      s.fast(l, 1, 5, pool, st_fast.data() + 1);
      for (int i = 0; i < 6; ++i) {
        EXPECT_NEAR(st_fast[i].var_sum, st_ref[i].var_sum, 1e-6 + 1e-4 * st_ref[i].var_sum) << i;
        EXPECT_NEAR(st_fast[i].max_weight_sum, st_ref[i].max_weight_sum, 1e-5 * s.shape.n_heads) << i;
        EXPECT_EQ(st_fast[i].var_count, st_ref[i].var_count) << i;
      }
      for (int t = 0; t < kTwoChunks + 6; ++t)
        EXPECT_NEAR(recv_fast[t], recv_ref[t], 1e-5f) << "position " << t;
    }
  }
}

// ---------------------------------------------------------------------------------------------------
// Shapes the SIMD kernels do not cover take the scalar path, with the same results.

TEST(AttentionFallback, UnsupportedShapesMatchReference) {
  ThreadPool pool(2);
  for (const auto& [hd, group] : {std::pair{64, 8}, std::pair{80, 16}, std::pair{64, 4}}) {
    const Fixture s(hd, group, 2, 2, 300, 2, {16, 8, 4, 2});
    EXPECT_FALSE(cpu::detail::simd_supported(s.layout, s.shape)) << hd << " " << group;
    for (int l = 0; l < kLayers; ++l) {
      const auto batch = s.fast(l, 0, 2, pool);
      for (int i = 0; i < 2; ++i)
        expect_close(std::vector<float>(batch.begin() + i * s.stride(), batch.begin() + (i + 1) * s.stride()),
                     s.reference(l, i),
                     "fallback hd " + std::to_string(hd) + " group " + std::to_string(group));
    }
  }
}

// ---------------------------------------------------------------------------------------------------
// Every Highway target compiled in and supported by this CPU (256- and 128-bit kernels, the scalar
// fallback) against the reference.

TEST(AttentionTargets, EveryTargetMatchesReference) {
  ThreadPool pool(2);
  const Fixture s64(64, 32, 3, 3, kTwoChunks, 2, {16, 8, 4, 2, 4}),
      s128(128, 16, 2, 2, 300, 2, {2, 4, 8, 16});
  for (const int64_t target : hwy::SupportedAndGeneratedTargets()) {
    hwy::SetSupportedTargetsForTest(target);
    for (const Fixture* s : {&s64, &s128}) {
      const auto batch = s->fast(0, 0, 2, pool);
      for (int i = 0; i < 2; ++i)
        expect_close(
            std::vector<float>(batch.begin() + i * s->stride(), batch.begin() + (i + 1) * s->stride()),
            s->reference(0, i), std::string("target ") + hwy::TargetName(target));
    }
  }
  hwy::SetSupportedTargetsForTest(0);
}

}  // namespace
}  // namespace kvd
