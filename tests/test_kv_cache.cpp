// KV cache: layout sizes, quantization error bound per bit-width, staging/arena life cycle, and the
// fast attention (packed reads) against the reference (dequantize, plain attention).
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "kv/attention.h"
#include "kv/kv_cache.h"
#include "kv/kv_quant.h"
#include "util/error.h"
#include "util/fp16.h"
#include "util/thread_pool.h"

namespace kvd {
namespace {

KvLayout small_layout(int group = 32) { return KvLayout{3, 2, 64, group}; }

TEST(KvLayout, BytesFollowTheLayout) {
  const KvLayout l{30, 3, 64, 32};  // SmolLM2-135M: kv_dim 192
  EXPECT_EQ(l.row_bytes(16), 384u);
  EXPECT_EQ(l.row_bytes(8), 6u * (4 + 32));
  EXPECT_EQ(l.row_bytes(4), 6u * (4 + 16));
  EXPECT_EQ(l.row_bytes(2), 6u * (4 + 8));
  EXPECT_DOUBLE_EQ(l.effective_bits(16), 16.0);
  EXPECT_DOUBLE_EQ(l.effective_bits(8), 9.0);
  EXPECT_DOUBLE_EQ(l.effective_bits(4), 5.0);
  EXPECT_DOUBLE_EQ(l.effective_bits(2), 3.0);
  EXPECT_LE(l.token_bytes(4) / static_cast<double>(l.token_bytes(16)), 0.32);
  EXPECT_LE(l.token_bytes(2) / static_cast<double>(l.token_bytes(16)), 0.20);
}

class KvQuantBits : public ::testing::TestWithParam<int> {};

TEST_P(KvQuantBits, ErrorWithinHalfStep) {
  const int bits = GetParam();
  for (int group : {8, 16, 32, 64}) {
    const KvLayout l = small_layout(group);
    std::mt19937 rng(bits * 100 + group);
    std::vector<float> x(l.kv_dim()), y(l.kv_dim());
    std::vector<uint8_t> buf(l.row_bytes(bits));
    for (int trial = 0; trial < 50; ++trial) {
      const float spread = std::pow(10.0f, static_cast<float>(trial % 7) - 3.0f);
      std::normal_distribution<float> nd(trial % 3 - 1.0f, spread);
      for (auto& v : x) v = nd(rng);
      if (trial % 5 == 0) x[3] = 40.0f * spread;  // an outlier
      kv_quantize_row(l, bits, x.data(), buf.data());
      kv_dequantize_row(l, bits, buf.data(), y.data());
      for (int g = 0; g < l.groups_per_row(); ++g) {
        uint16_t scale_h;
        std::memcpy(&scale_h, buf.data() + g * l.group_bytes(bits), 2);
        const float half_step = fp16_to_float(scale_h) / 2;
        for (int i = g * group; i < (g + 1) * group; ++i) {
          // Half a step, plus float rounding of code * scale + min.
          const float tol = half_step * (1 + 1e-5f) + 1e-6f * std::abs(x[i]) + 1e-30f;
          ASSERT_LE(std::abs(x[i] - y[i]), tol) << "bits " << bits << " group " << group << " i " << i;
        }
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Bits, KvQuantBits, ::testing::Values(2, 4, 8));

TEST(KvQuant, SixteenBitsIsFp16RoundTrip) {
  const KvLayout l = small_layout();
  std::vector<float> x(l.kv_dim()), y(l.kv_dim());
  std::vector<uint8_t> buf(l.row_bytes(16));
  for (int i = 0; i < l.kv_dim(); ++i) x[i] = std::sin(static_cast<float>(i)) * 3.0f;
  kv_quantize_row(l, 16, x.data(), buf.data());
  kv_dequantize_row(l, 16, buf.data(), y.data());
  for (int i = 0; i < l.kv_dim(); ++i) EXPECT_EQ(y[i], fp16_to_float(float_to_fp16(x[i])));
}

TEST(KvQuant, ConstantGroupIsExact) {
  const KvLayout l = small_layout();
  std::vector<float> x(l.kv_dim(), 0.5f), y(l.kv_dim());
  for (int bits : {2, 4, 8}) {
    std::vector<uint8_t> buf(l.row_bytes(bits));
    kv_quantize_row(l, bits, x.data(), buf.data());
    kv_dequantize_row(l, bits, buf.data(), y.data());
    for (float v : y) EXPECT_EQ(v, 0.5f);
  }
}

// Fills a cache with n random tokens at the given widths (decided after writing, as a policy would).
void fill(KvCache& cache, int n, const std::vector<int>& widths, uint32_t seed) {
  const KvLayout& l = cache.layout();
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> k(l.kv_dim()), v(l.kv_dim());
  const int first = cache.begin_tokens(0, n);
  for (int i = 0; i < n; ++i)
    for (int layer = 0; layer < l.n_layers; ++layer) {
      for (auto& x : k) x = nd(rng);
      for (auto& x : v) x = nd(rng);
      cache.write(0, layer, first + i, k.data(), v.data());
    }
  for (int i = 0; i < n; ++i) cache.decide(0, first + i, widths[(first + i) % widths.size()]);
  cache.flush_window(0);
}

TEST(KvCache, BytesStoredMatchLayoutAndStats) {
  const KvLayout l = small_layout();
  KvCacheOptions o;
  o.max_tokens = 1000;
  KvCache cache(l, o);
  fill(cache, 100, {2, 4, 8, 16}, 1);
  const KvStats s = cache.stats(0);
  EXPECT_EQ(s.tokens, 100);
  EXPECT_EQ(s.tokens_at_bits[2], 25);
  EXPECT_EQ(s.tokens_at_bits[16], 25);
  EXPECT_EQ(s.bytes_stored,
            25 * l.n_layers * (l.token_bytes(2) + l.token_bytes(4) + l.token_bytes(8) + l.token_bytes(16)));
  EXPECT_DOUBLE_EQ(s.avg_bits(), 7.5);
  EXPECT_EQ(cache.n_arena(0), 100);
  // Allocation is what is stored plus at most one partly filled page per width class used.
  size_t partial = 0;
  for (int c = 0; c < 4; ++c) partial += cache.page_geom().page_bytes(c);
  EXPECT_LT(s.bytes_allocated, s.bytes_stored + partial + 4096);
  EXPECT_EQ(cache.pool_bytes(), partial);  // 25 tokens a class: one page each
}

TEST(KvCache, SequencesShareThePagePool) {
  // A cleared or rewound sequence gives its pages back; another sequence reuses them, and the records
  // read back are the new sequence's.
  const KvLayout l = small_layout();
  KvCacheOptions o;
  o.max_tokens = 1000;
  o.n_seqs = 2;
  KvCache cache(l, o);
  fill(cache, 300, {4, 4, 2, 16}, 1);  // sequence 0
  const size_t pool = cache.pool_bytes();
  EXPECT_GE(cache.stats(0).bytes_allocated, pool);  // its pages and its staging
  cache.clear(0);
  KvCache ref(l, KvCacheOptions{1000, 0, 1});
  for (KvCache* c : {&cache, &ref}) {
    const int seq = c == &cache ? 1 : 0;
    std::mt19937 rng(9);
    std::normal_distribution<float> nd(0.0f, 1.0f);
    std::vector<float> k(l.kv_dim()), v(l.kv_dim());
    const std::vector<uint8_t> bits(300, 4);
    c->begin_tokens(seq, 300, bits.data());
    for (int t = 0; t < 300; ++t)
      for (int layer = 0; layer < l.n_layers; ++layer) {
        for (auto& x : k) x = nd(rng);
        for (auto& x : v) x = nd(rng);
        c->write(seq, layer, t, k.data(), v.data());
      }
    c->flush_window(seq);
  }
  // 300 tokens at 4 bits fit in the pages sequence 0 had for its 150 4-bit tokens plus new ones; no
  // other class's page was taken.
  EXPECT_GT(cache.pool_bytes(), pool);
  for (int t = 0; t < 300; t += 7)
    for (int layer = 0; layer < l.n_layers; ++layer) {
      const KvTokenView a = cache.token(1, layer, t, 400), b = ref.token(0, layer, t, 400);
      ASSERT_EQ(a.bits, 4);
      ASSERT_EQ(0, std::memcmp(a.k, b.k, l.token_bytes(4))) << "token " << t << " layer " << layer;
    }
  // Rewinding sequence 1 and filling sequence 0 again needs no new page.
  cache.truncate(1, 0);
  const size_t before = cache.pool_bytes();
  fill(cache, 300, {4, 4, 2, 16}, 2);
  EXPECT_EQ(cache.pool_bytes(), before);
}

TEST(KvCache, ResidualWindowKeepsNewestAtSixteen) {
  const KvLayout l = small_layout();
  KvCacheOptions o;
  o.residual = 8;
  KvCache cache(l, o);
  fill(cache, 20, {2}, 2);
  EXPECT_EQ(cache.n_arena(0), 12);
  // The query at position 20 reads keys 12..19 at fp16, older ones at 2 bits.
  EXPECT_EQ(cache.token(0, 0, 11, 20).bits, 2);
  EXPECT_EQ(cache.token(0, 0, 12, 20).bits, 16);
  EXPECT_EQ(cache.token(0, 0, 19, 20).bits, 16);
}

TEST(KvCache, ContextFullIsAnError) {
  KvCacheOptions o;
  o.max_tokens = 10;
  KvCache cache(small_layout(), o);
  cache.begin_tokens(0, 10);
  EXPECT_THROW(cache.begin_tokens(0, 1), Error);
}

TEST(KvCache, BadGroupIsAnError) {
  EXPECT_THROW(KvCache(small_layout(24), KvCacheOptions{}), Error);
  EXPECT_THROW(KvCache(small_layout(128), KvCacheOptions{}), Error);
}

TEST(KvCache, DecidedInAdvanceEqualsDecidedAfter) {
  const KvLayout l = small_layout();
  KvCache a(l, KvCacheOptions{}), b(l, KvCacheOptions{});
  std::mt19937 rng(3);
  std::normal_distribution<float> nd;
  std::vector<float> k(l.kv_dim()), v(l.kv_dim());
  const uint8_t widths[5] = {4, 2, 8, 16, 4};
  a.begin_tokens(0, 5, widths);
  b.begin_tokens(0, 5);
  for (int i = 0; i < 5; ++i)
    for (int layer = 0; layer < l.n_layers; ++layer) {
      for (auto& x : k) x = nd(rng);
      for (auto& x : v) x = nd(rng);
      a.write(0, layer, i, k.data(), v.data());
      b.write(0, layer, i, k.data(), v.data());
    }
  for (int i = 0; i < 5; ++i) b.decide(0, i, widths[i]);
  a.flush_window(0);
  b.flush_window(0);
  for (int i = 0; i < 5; ++i)
    for (int layer = 0; layer < l.n_layers; ++layer) {
      const KvTokenView ta = a.token(0, layer, i, 5), tb = b.token(0, layer, i, 5);
      ASSERT_EQ(ta.bits, tb.bits);
      EXPECT_EQ(0, std::memcmp(ta.k, tb.k, l.row_bytes(ta.bits)));
      EXPECT_EQ(0, std::memcmp(ta.v, tb.v, l.row_bytes(ta.bits)));
    }
}

// Fast attention vs reference for every width and for mixtures, several queries, 1 and 2 threads.
class AttentionMix : public ::testing::TestWithParam<std::vector<int>> {};

TEST_P(AttentionMix, FastMatchesReference) {
  const KvLayout l = small_layout();
  const AttnShape shape{6, 2, 64};
  KvCacheOptions o;
  o.residual = 3;
  KvCache cache(l, o);
  fill(cache, 77, GetParam(), 7);
  // Three more tokens staged (undecided) as in a batch.
  std::mt19937 rng(11);
  std::normal_distribution<float> nd;
  std::vector<float> k(l.kv_dim()), v(l.kv_dim());
  const int first = cache.begin_tokens(0, 3);
  for (int i = 0; i < 3; ++i)
    for (int layer = 0; layer < l.n_layers; ++layer) {
      for (auto& x : k) x = nd(rng);
      for (auto& x : v) x = nd(rng);
      cache.write(0, layer, first + i, k.data(), v.data());
    }
  const int stride = shape.n_heads * shape.head_dim;
  std::vector<float> q(3 * stride), out_ref(3 * stride), out_fast(3 * stride);
  for (auto& x : q) x = nd(rng);
  for (int threads : {1, 2}) {
    ThreadPool pool(threads);
    for (int layer = 0; layer < l.n_layers; ++layer) {
      std::vector<AttnStats> st_ref(3), st_fast(3);
      std::vector<float> recv_ref(80, 0.0f), recv_fast(80, 0.0f);
      for (int i = 0; i < 3; ++i) {
        st_ref[i].received = &recv_ref;
        st_fast[i].received = &recv_fast;
        ref::attend(cache, 0, layer, shape, q.data() + i * stride, first + i, out_ref.data() + i * stride,
                    &st_ref[i]);
      }
      cpu::attend(cache, 0, layer, shape, q.data(), first, 3, out_fast.data(), st_fast.data(), pool);
      for (int i = 0; i < 3 * stride; ++i)
        ASSERT_NEAR(out_fast[i], out_ref[i], 2e-5f + 2e-5f * std::abs(out_ref[i]));
      for (int i = 0; i < 3; ++i) {
        EXPECT_NEAR(st_fast[i].var_sum, st_ref[i].var_sum, 1e-6 + 1e-4 * st_ref[i].var_sum);
        EXPECT_EQ(st_fast[i].var_count, st_ref[i].var_count);
      }
      for (int t = 0; t < 80; ++t) EXPECT_NEAR(recv_fast[t], recv_ref[t], 1e-5f);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Widths, AttentionMix,
                         ::testing::Values(std::vector<int>{16}, std::vector<int>{8}, std::vector<int>{4},
                                           std::vector<int>{2}, std::vector<int>{2, 4, 8, 16},
                                           std::vector<int>{16, 2, 2, 4, 2, 8}));

}  // namespace
}  // namespace kvd
