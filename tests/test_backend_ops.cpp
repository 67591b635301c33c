// The small ops Session::forward calls through the backend (embedding, bias and residual adds, RoPE with and
// without frequency scaling, KV writes, row norms): the fast CPU backend against the reference one, op by op,
// on odd shapes, as llama.cpp's test-backend-ops checks its backends against the CPU.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "kv/kv_cache.h"
#include "model/backend.h"
#include "model/rope_scaling.h"

namespace kvd {
namespace {

std::vector<float> random_vec(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> v(n);
  for (auto& x : v) x = nd(rng);
  return v;
}

struct Backends {
  std::unique_ptr<Backend> ref = make_backend("ref", 1), cpu = make_backend("cpu", 2);
};

TEST(BackendOps, EmbedAddBiasAddAndNormsMatchReference) {
  Backends b;
  const int rows = 37, cols = 67, n = 13;
  std::vector<float> table = random_vec(static_cast<size_t>(rows) * cols, 1);
  WeightView w;
  w.type = gguf::TensorType::F32;
  w.data = reinterpret_cast<const uint8_t*>(table.data());
  w.rows = rows;
  w.cols = cols;
  w.row_bytes = cols * sizeof(float);
  const std::vector<int32_t> tokens = {0, 36, 5, 5, 17, 1, 2, 3, 30, 31, 8, 9, 36};
  std::vector<float> xr(static_cast<size_t>(n) * cols), xc(xr.size());
  b.ref->embed(w, tokens.data(), n, xr.data());
  b.cpu->embed(w, tokens.data(), n, xc.data());
  EXPECT_EQ(xr, xc);
  for (int i = 0; i < n; ++i)
    EXPECT_EQ(0, std::memcmp(xr.data() + static_cast<size_t>(i) * cols, table.data() + tokens[i] * cols,
                             cols * sizeof(float)))
        << "row " << i;
  const std::vector<float> bias = random_vec(cols, 2);
  b.ref->add_bias(xr.data(), bias.data(), n, cols);
  b.cpu->add_bias(xc.data(), bias.data(), n, cols);
  EXPECT_EQ(xr, xc);
  EXPECT_FLOAT_EQ(xr[static_cast<size_t>(cols) + 3], table[36 * cols + 3] + bias[3]);
  // The residual add, below and above the size the CPU backend splits over threads.
  for (size_t count : {size_t{1001}, size_t{300001}}) {
    const std::vector<float> a = random_vec(count, 3);
    std::vector<float> yr = random_vec(count, 4), yc = yr, y0 = yr;
    b.ref->add(a.data(), yr.data(), count);
    b.cpu->add(a.data(), yc.data(), count);
    EXPECT_EQ(yr, yc);
    EXPECT_FLOAT_EQ(yr[count - 1], y0[count - 1] + a[count - 1]);
  }
  std::vector<float> nr(n), nc(n);
  b.ref->row_norms(xr.data(), n, cols, nr.data());
  b.cpu->row_norms(xc.data(), n, cols, nc.data());
  EXPECT_EQ(nr, nc);
  double ss = 0;
  for (int j = 0; j < cols; ++j) ss += static_cast<double>(xr[j]) * xr[j];
  EXPECT_NEAR(nr[0], std::sqrt(ss), 1e-4);
}

TEST(BackendOps, RopeWithAndWithoutScalingMatchesReference) {
  Backends b;
  const int n = 9, n_heads = 3, hd = 64, pos0 = 1000;
  RopeScaling none;
  RopeScaling lin;
  lin.type = "linear";
  lin.factor = 4.0f;
  for (int i = 0; i < hd / 2; ++i) lin.freq.push_back(std::pow(10000.0, -2.0 * i / hd) / 4.0);
  for (const RopeScaling* rs : {&none, &lin})
    for (RopeStyle style : {RopeStyle::Adjacent, RopeStyle::Halves}) {
      std::vector<float> xr = random_vec(static_cast<size_t>(n) * n_heads * hd, 5), xc = xr, x0 = xr;
      b.ref->rope(xr.data(), n, n_heads, hd, hd, pos0, 10000.0f, style, *rs);
      b.cpu->rope(xc.data(), n, n_heads, hd, hd, pos0, 10000.0f, style, *rs);
      EXPECT_EQ(xr, xc) << rs->type;
      EXPECT_NE(xr, x0) << rs->type;
    }
  // Linear scaling at factor 4 is the plain rotation at a quarter of the position.
  std::vector<float> a = random_vec(static_cast<size_t>(n_heads) * hd, 6), c = a;
  b.ref->rope(a.data(), 1, n_heads, hd, hd, 4000, 10000.0f, RopeStyle::Halves, lin);
  b.ref->rope(c.data(), 1, n_heads, hd, hd, 1000, 10000.0f, RopeStyle::Halves, none);
  for (size_t j = 0; j < a.size(); ++j) EXPECT_NEAR(a[j], c[j], 1e-4) << j;
}

TEST(BackendOps, KvWriteMatchesReference) {
  Backends b;
  const KvLayout lay{2, 3, 64, 32};
  KvCacheOptions o;
  o.max_tokens = 64;
  KvCache cr(lay, o), cc(lay, o);
  const int n = 11;
  const std::vector<uint8_t> bits = {16, 4, 2, 8, 16, 4, 4, 2, 8, 16, 2};
  const std::vector<float> k = random_vec(static_cast<size_t>(n) * lay.kv_dim(), 7),
                           v = random_vec(k.size(), 8);
  for (KvCache* c : {&cr, &cc}) c->begin_tokens(0, n, bits.data());
  for (int l = 0; l < lay.n_layers; ++l) {
    b.ref->kv_write(cr, 0, l, 0, n, k.data(), v.data());
    b.cpu->kv_write(cc, 0, l, 0, n, k.data(), v.data());
  }
  cr.flush_window(0);
  cc.flush_window(0);
  for (int l = 0; l < lay.n_layers; ++l)
    for (int t = 0; t < n; ++t) {
      const KvTokenView a = cr.token(0, l, t, n + 1), c = cc.token(0, l, t, n + 1);
      ASSERT_EQ(a.bits, bits[static_cast<size_t>(t)]);
      ASSERT_EQ(a.bits, c.bits);
      EXPECT_EQ(0, std::memcmp(a.k, c.k, lay.k_row_bytes(a.bits))) << "K of token " << t << " layer " << l;
      EXPECT_EQ(0, std::memcmp(a.v, c.v, lay.v_row_bytes(a.bits))) << "V of token " << t << " layer " << l;
    }
  EXPECT_EQ(cr.stats(0).bytes_stored, cc.stats(0).bytes_stored);
}

}  // namespace
}  // namespace kvd
