// The v2 KV quantizer: K/V widths 2-8 in low/high planes, ladders of (K, V, group) settings, the
// randomized Hadamard rotation and the MSE clip; the SIMD attention against the reference for every
// (K, V) pair and mixtures.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "kv/attention.h"
#include "kv/attention_cpu_internal.h"
#include "kv/kv_cache.h"
#include "kv/kv_config.h"
#include "kv/kv_quant.h"
#include "kv/kv_rotate.h"
#include "kv/kv_setting.h"
#include "util/error.h"
#include "util/fp16.h"
#include "util/thread_pool.h"

namespace kvd {
namespace {

TEST(KvSetting, ParsesAndFormats) {
  EXPECT_EQ(format_kv_setting(parse_kv_setting("K5V4g64", 32)), "K5V4g64");
  EXPECT_EQ(format_kv_setting(parse_kv_setting("4", 32)), "K4V4g32");
  EXPECT_EQ(format_kv_setting(parse_kv_setting("k3v2", 64)), "K3V2g64");
  EXPECT_EQ(format_kv_setting(parse_kv_setting("F16", 32)), "F16");
  EXPECT_EQ(format_kv_setting(parse_kv_setting("K3g64V2g32", 32)), "K3g64V2g32");
  for (const char* bad : {"", "K7V4", "K5", "K5V", "K5V4g", "K5V4g48", "X5V4", "K5V4g64x", "9"})
    EXPECT_THROW(parse_kv_setting(bad, 32), Error) << bad;
  KvLayout l{30, 3, 64, 32};
  parse_kv_ladder(kDefaultKvLadder, 32, l);
  EXPECT_EQ(format_kv_ladder(l), "2=K3V2g64,4=K5V4g64,8=K8V8g32,16=F16");
  EXPECT_DOUBLE_EQ(l.effective_bits(2), 3.0);
  EXPECT_DOUBLE_EQ(l.effective_bits(4), 5.0);
  EXPECT_DOUBLE_EQ(l.effective_bits(8), 9.0);
  EXPECT_DOUBLE_EQ(l.effective_bits(16), 16.0);
  EXPECT_DOUBLE_EQ(l.k_effective_bits(2), 3.5);
  EXPECT_DOUBLE_EQ(l.v_effective_bits(2), 2.5);
  for (const char* bad : {"2=K3V2g64", "2=K3V2g64,4=5,8=8,16=16,2=4", "3=4,4=4,8=8,16=16", "2=K3V2g64;4=4"})
    EXPECT_THROW(parse_kv_ladder(bad, 32, l), Error) << bad;
}

TEST(KvRotate, IsOrthogonalAndInvertible) {
  const auto signs = kv_rotation_signs(2, 3, 64, 7);
  std::mt19937 rng(1);
  std::normal_distribution<float> nd;
  std::vector<float> a(64), b(64);
  for (auto& x : a) x = nd(rng);
  for (auto& x : b) x = nd(rng);
  double dot = 0, norm = 0;
  for (int i = 0; i < 64; ++i) dot += a[i] * b[i], norm += a[i] * a[i];
  std::vector<float> ra = a, rb = b;
  kv_rotate(ra.data(), signs.data() + 64, 64);
  kv_rotate(rb.data(), signs.data() + 64, 64);
  double rdot = 0, rnorm = 0;
  for (int i = 0; i < 64; ++i) rdot += ra[i] * rb[i], rnorm += ra[i] * ra[i];
  EXPECT_NEAR(rdot, dot, 1e-4 * std::abs(norm));
  EXPECT_NEAR(rnorm, norm, 1e-4 * norm);
  kv_unrotate(ra.data(), signs.data() + 64, 64);
  for (int i = 0; i < 64; ++i) EXPECT_NEAR(ra[i], a[i], 1e-5f);
  // The signs are a fixed draw (same seed, same signs) and not all equal.
  EXPECT_EQ(signs, kv_rotation_signs(2, 3, 64, 7));
  int neg = 0;
  for (float s : signs) neg += s < 0;
  EXPECT_GT(neg, 100);
  EXPECT_LT(neg, 284);
}

// The clip search with the candidates in lanes stores the bytes of the plain one: heavy tails, constant
// groups, tiny and huge ranges, every width and group.
TEST(KvQuantV2, FastClipSearchStoresPlainBytes) {
  std::mt19937 rng(11);
  std::student_t_distribution<float> heavy(2.0f);
  std::uniform_real_distribution<float> mag(-12.0f, 12.0f);
  for (int trial = 0; trial < 300; ++trial)
    for (int bits : {2, 3, 4, 5, 6, 8})
      for (int group : {16, 32, 64}) {
        std::vector<float> x(128);
        const float scale = std::exp2(mag(rng)), offset = trial % 5 == 0 ? 100.0f : 0.0f;
        for (auto& v : x) v = trial % 37 == 0 ? 1.5f : offset + scale * heavy(rng);
        const size_t bytes = 128 / group * KvLayout::group_bytes_of(bits, group);
        std::vector<uint8_t> fast(bytes), plain(bytes);
        kv_encode(x.data(), 128, bits, group, true, fast.data());
        kv_encode_plain(x.data(), 128, bits, group, true, plain.data());
        ASSERT_EQ(fast, plain) << "bits " << bits << " group " << group << " trial " << trial;
      }
}

// Every width and group: inside the coded range each element is within half a step; with the clip the
// group's squared error never exceeds the unclipped quantizer's.
TEST(KvQuantV2, ErrorBoundEveryWidth) {
  std::mt19937 rng(3);
  std::student_t_distribution<float> heavy(3.0f);
  for (int bits : {2, 3, 4, 5, 6, 8})
    for (int group : {16, 32, 64}) {
      std::vector<float> x(256);
      for (auto& v : x) v = heavy(rng);
      std::vector<uint8_t> plain(256 * 2), clipped(256 * 2);
      kv_encode(x.data(), 256, bits, group, false, plain.data());
      kv_encode(x.data(), 256, bits, group, true, clipped.data());
      std::vector<float> yp(256), yc(256);
      kv_decode(plain.data(), 256, bits, group, yp.data());
      kv_decode(clipped.data(), 256, bits, group, yc.data());
      for (int g = 0; g < 256 / group; ++g) {
        const size_t gb = KvLayout::group_bytes_of(bits, group);
        uint16_t sh, mh;
        std::memcpy(&sh, plain.data() + g * gb, 2);
        std::memcpy(&mh, plain.data() + g * gb + 2, 2);
        const float s = fp16_to_float(sh);
        double ep = 0, ec = 0;
        for (int i = g * group; i < (g + 1) * group; ++i) {
          EXPECT_LE(std::abs(yp[i] - x[i]), 0.5f * s * (1 + 1e-5f) + 1e-7f) << bits << " g" << group;
          ep += (yp[i] - x[i]) * (yp[i] - x[i]);
          ec += (yc[i] - x[i]) * (yc[i] - x[i]);
        }
        EXPECT_LE(ec, ep * (1 + 1e-9) + 1e-12) << bits << " g" << group;
        // Clipped: elements inside the clipped range within half its step.
        std::memcpy(&sh, clipped.data() + g * gb, 2);
        std::memcpy(&mh, clipped.data() + g * gb + 2, 2);
        const float cs = fp16_to_float(sh), cm = fp16_to_float(mh);
        const float top = cm + cs * static_cast<float>((1 << bits) - 1);
        for (int i = g * group; i < (g + 1) * group; ++i) {
          if (x[i] >= cm && x[i] <= top) {
            EXPECT_LE(std::abs(yc[i] - x[i]), 0.5f * cs * (1 + 1e-5f) + 1e-7f);
          }
        }
      }
    }
}

// A cache under a ladder, n_ctx decided tokens cycling through classes, then n_q staged queries.
struct LadderFixture {
  KvLayout layout;
  AttnShape shape;
  std::unique_ptr<KvCache> cache;
  int n_ctx, n_q;
  std::vector<float> q;
  LadderFixture(const std::string& ladder, bool rotate, int head_dim, int nq, int n_kv, int n_ctx_, int n_q_,
                const std::vector<int>& classes, int residual = 0)
      : layout{2, n_kv, head_dim, 32}, shape{nq * n_kv, n_kv, head_dim}, n_ctx(n_ctx_), n_q(n_q_) {
    parse_kv_ladder(ladder, 32, layout);
    layout.rotate = rotate;
    layout.clip = rotate;
    KvCacheOptions o;
    o.max_tokens = n_ctx + n_q;
    o.residual = residual;
    cache = std::make_unique<KvCache>(layout, o);
    std::mt19937 rng(static_cast<uint32_t>(head_dim + nq * 7 + n_ctx));
    std::normal_distribution<float> nd;
    std::vector<float> k(layout.kv_dim()), v(layout.kv_dim());
    std::vector<uint8_t> bits(static_cast<size_t>(n_ctx + n_q));
    for (size_t i = 0; i < bits.size(); ++i)
      bits[i] = static_cast<uint8_t>(classes[(i * 7 + i / 3) % classes.size()]);
    auto write = [&](int first, int n) {
      for (int i = 0; i < n; ++i)
        for (int l = 0; l < 2; ++l) {
          for (int e = 0; e < layout.kv_dim(); ++e)
            k[e] = nd(rng) + (e % 17 == 3 ? 6.0f : 0.0f);  // outlier channels
          for (auto& x : v) x = nd(rng);
          cache->write(0, l, first + i, k.data(), v.data());
        }
    };
    for (int b = 0; b < n_ctx; b += 200) {
      const int nb = std::min(200, n_ctx - b);
      write(cache->begin_tokens(0, nb, bits.data() + b), nb);
      cache->flush_window(0);
    }
    if (n_q > 0) write(cache->begin_tokens(0, n_q, bits.data() + n_ctx), n_q);
    q.resize(static_cast<size_t>(n_q) * shape.n_heads * head_dim);
    for (auto& x : q) x = 0.5f * nd(rng);
  }
  size_t stride() const { return static_cast<size_t>(shape.n_heads) * shape.head_dim; }
};

void expect_close(const float* fast, const float* ref, size_t n, const std::string& what) {
  for (size_t i = 0; i < n; ++i)
    ASSERT_NEAR(fast[i], ref[i], 3e-5f + 3e-5f * std::abs(ref[i])) << what << " element " << i;
}

class LadderAttention : public ::testing::TestWithParam<std::tuple<std::string, bool>> {};

TEST_P(LadderAttention, FastMatchesReference) {
  const auto [ladder, rotate] = GetParam();
  ThreadPool pool(2);
  for (int hd : {64, 128})
    for (const std::vector<int>& classes :
         std::vector<std::vector<int>>{{16, 2, 4, 8, 4, 2, 2}, {2}, {4}, {8}}) {
      const LadderFixture s(ladder, rotate, hd, 3, 2, cpu::detail::kKeyChunk + 41, 3, classes);
      ASSERT_TRUE(cpu::detail::simd_supported(s.layout, s.shape)) << ladder;
      for (int l = 0; l < 2; ++l) {
        std::vector<float> batch(3 * s.stride());
        cpu::attend(*s.cache, 0, l, s.shape, s.q.data(), s.n_ctx, 3, batch.data(), nullptr, pool);
        for (int i = 0; i < 3; ++i) {
          std::vector<float> ref(s.stride()), one(s.stride());
          ref::attend(*s.cache, 0, l, s.shape, s.q.data() + i * s.stride(), s.n_ctx + i, ref.data(), nullptr);
          cpu::attend(*s.cache, 0, l, s.shape, s.q.data() + i * s.stride(), s.n_ctx + i, 1, one.data(),
                      nullptr, pool);
          const std::string what = ladder + (rotate ? " rotated" : "") + " hd " + std::to_string(hd) +
                                   " classes[0] " + std::to_string(classes[0]) + " query " +
                                   std::to_string(i);
          expect_close(batch.data() + i * s.stride(), ref.data(), s.stride(), what + " batched");
          expect_close(one.data(), ref.data(), s.stride(), what + " single");
        }
      }
    }
}

// A prefill-sized batch (whole queries per work item) over decided staged tokens.
TEST_P(LadderAttention, BatchMatchesReference) {
  const auto [ladder, rotate] = GetParam();
  ThreadPool pool(2);
  const LadderFixture s(ladder, rotate, 64, 3, 3, 100, 40, {16, 2, 4, 8, 4, 2, 2});
  for (int l = 0; l < 2; ++l) {
    std::vector<float> batch(40 * s.stride());
    cpu::attend(*s.cache, 0, l, s.shape, s.q.data(), s.n_ctx, 40, batch.data(), nullptr, pool);
    for (int i = 0; i < 40; i += 7) {
      std::vector<float> ref(s.stride());
      ref::attend(*s.cache, 0, l, s.shape, s.q.data() + i * s.stride(), s.n_ctx + i, ref.data(), nullptr);
      expect_close(batch.data() + i * s.stride(), ref.data(), s.stride(),
                   ladder + " batch query " + std::to_string(i));
    }
  }
}

INSTANTIATE_TEST_SUITE_P(
    Ladders, LadderAttention,
    ::testing::Values(std::make_tuple(std::string(kDefaultKvLadder), true),
                      std::make_tuple(std::string(kDefaultKvLadder), false),
                      std::make_tuple(std::string("2=K2V2g32,4=K4V4g32,8=K8V8g32,16=F16"), true),
                      std::make_tuple(std::string("2=K3V3g32,4=K4V3g64,8=K6V5g32,16=F16"), true),
                      std::make_tuple(std::string("2=K4V2g64,4=K6V4g16,8=K16V4g64,16=F16"), false),
                      std::make_tuple(std::string("2=K2V3g16,4=K3V5g16,8=K5V3g32,16=F16"), true)));

// Rotation is exact at fp16: with every class at fp16 the rotation flag changes nothing.
TEST(KvQuantV2, RotationInvisibleAtFp16) {
  ThreadPool pool(2);
  const LadderFixture a("2=F16,4=F16,8=F16,16=F16", true, 64, 3, 2, 300, 1, {2, 4, 8, 16});
  const LadderFixture b("2=F16,4=F16,8=F16,16=F16", false, 64, 3, 2, 300, 1, {2, 4, 8, 16});
  std::vector<float> oa(a.stride()), ob(b.stride());
  cpu::attend(*a.cache, 0, 1, a.shape, a.q.data(), a.n_ctx, 1, oa.data(), nullptr, pool);
  cpu::attend(*b.cache, 0, 1, b.shape, b.q.data(), b.n_ctx, 1, ob.data(), nullptr, pool);
  EXPECT_EQ(0, std::memcmp(oa.data(), ob.data(), oa.size() * sizeof(float)));
}

// Rotation lowers the error of quantized attention on keys with outlier channels (what it is for).
TEST(KvQuantV2, RotationHelpsOutlierKeys) {
  ThreadPool pool(2);
  auto err = [&](bool rotate) {
    const LadderFixture s("2=K2V2g32,4=K2V2g32,8=K2V2g32,16=F16", rotate, 64, 3, 2, 400, 1, {2});
    const LadderFixture f("2=F16,4=F16,8=F16,16=F16", false, 64, 3, 2, 400, 1, {2});
    std::vector<float> o(s.stride()), r(f.stride());
    cpu::attend(*s.cache, 0, 0, s.shape, s.q.data(), s.n_ctx, 1, o.data(), nullptr, pool);
    cpu::attend(*f.cache, 0, 0, f.shape, f.q.data(), f.n_ctx, 1, r.data(), nullptr, pool);
    double e = 0;
    for (size_t i = 0; i < o.size(); ++i) e += (o[i] - r[i]) * (o[i] - r[i]);
    return e;
  };
  EXPECT_LT(err(true), err(false));
}

TEST(KvConfig, StaticSettingsAndErrors) {
  KvQuantOptions q;
  KvPlan p = make_kv_plan(30, 3, 64, q, "static:K5V4g64");
  EXPECT_EQ(p.policy_spec, "static:4");
  EXPECT_DOUBLE_EQ(p.layout.effective_bits(4), 5.0);
  EXPECT_TRUE(p.layout.rotate);
  p = make_kv_plan(30, 3, 64, q, "static:4");
  EXPECT_EQ(format_kv_setting(p.layout.setting(4)), "K4V4g32");
  p = make_kv_plan(30, 3, 64, q, "rule");
  EXPECT_EQ(format_kv_ladder(p.layout), "2=K3V2g64,4=K5V4g64,8=K8V8g32,16=F16");
  q.rotate = 0;
  p = make_kv_plan(30, 3, 64, q, "static:2");
  EXPECT_FALSE(p.layout.rotate);
  EXPECT_FALSE(p.layout.clip);
  EXPECT_THROW(make_kv_plan(30, 3, 48, KvQuantOptions{}, "static:4"), Error);  // rotation needs 2^k
  KvQuantOptions bad;
  bad.ladder = "2=K3V2g64,4=K5V4g64,8=K8V8g32,16=K8V8g32";
  EXPECT_THROW(make_kv_plan(30, 3, 64, bad, "rule"), Error);  // class 16 must be fp16
  EXPECT_THROW(make_kv_plan(30, 3, 64, KvQuantOptions{}, "static:K9V4"), Error);
}

// Memory: after 4096 tokens, every v2 setting stores exactly its nominal bytes (bits per element, scales
// included, times the elements) and allocates less than one page per layer beyond them.
TEST(KvQuantV2, BytesAt4096EqualNominal) {
  for (const char* spec : {"static:K5V4g64", "static:K4V3g64", "static:K4V2g64", "static:K3V2g64"}) {
    const KvPlan p = make_kv_plan(2, 3, 64, KvQuantOptions{}, spec);
    KvCacheOptions o;
    o.max_tokens = 4096;
    KvCache cache(p.layout, o);
    const int n = 4096;
    const int first = cache.begin_tokens(0, n);
    std::mt19937 rng(11);
    std::normal_distribution<float> nd;
    std::vector<float> k(p.layout.kv_dim()), v(p.layout.kv_dim());
    for (int i = 0; i < n; ++i)
      for (int layer = 0; layer < p.layout.n_layers; ++layer) {
        for (auto& x : k) x = nd(rng);
        for (auto& x : v) x = nd(rng);
        cache.write(0, layer, first + i, k.data(), v.data());
      }
    for (int i = 0; i < n; ++i) cache.decide(0, first + i, 4);  // static:SETTING stores class 4
    cache.flush_window(0);
    const KvStats s = cache.stats(0);
    const double elements = 2.0 * n * p.layout.n_layers * p.layout.kv_dim();  // K and V
    EXPECT_EQ(static_cast<double>(s.bytes_stored), elements * p.layout.effective_bits(4) / 8) << spec;
    EXPECT_DOUBLE_EQ(s.effective_bits, p.layout.effective_bits(4)) << spec;
    EXPECT_LT(s.bytes_allocated, s.bytes_stored + cache.page_geom().page_bytes(1) + 4096) << spec;
  }
}

}  // namespace
}  // namespace kvd
