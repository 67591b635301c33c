// Session::forward_parts, the batch spanning several sequences that collect's label run uses: one part
// gives forward()'s logits, each part's rows do not depend on the other parts' tokens, and the sequences
// stay apart in the cache. On the default model (skipped when absent).
#include <gtest/gtest.h>

#include <vector>

#include "kv/kv_cache.h"
#include "model/backend.h"
#include "model/forward.h"
#include "test_util.h"

namespace kvd {
namespace {

class ForwardParts : public test::ModelSuite {
 protected:
  KvCacheOptions opts(int n_seqs) {
    KvCacheOptions o;
    o.max_tokens = 64;
    o.n_seqs = n_seqs;
    return o;
  }
  KvLayout layout() const {
    const ModelConfig& c = model_->config();
    return KvLayout{c.n_layers, c.n_kv_heads, c.head_dim, 32};
  }
};

// Token ids of a short sentence, written here.
const std::vector<int32_t> kA = {504, 2365, 6354, 282, 260, 3004, 30, 378, 3221, 314, 1543, 28, 1392, 47};
const std::vector<int32_t> kB = {1078, 3390, 1123, 6059, 2255, 28, 1093, 5276, 253, 3820, 314, 260, 5913, 30};

std::vector<float> slice(const std::vector<float>& v, size_t from, size_t n) {
  return std::vector<float>(v.begin() + static_cast<std::ptrdiff_t>(from),
                            v.begin() + static_cast<std::ptrdiff_t>(from + n));
}

TEST_F(ForwardParts, OnePartEqualsForward) {
  auto be = make_backend("cpu", 1);
  const int vocab = model_->config().vocab;
  for (int n : {3, 14}) {  // both matmul paths (few tokens, GEMM)
    KvCache c1(layout(), opts(1)), c2(layout(), opts(2));
    Session s1(*model_, *be, c1, 0, 64), s2(*model_, *be, c2, 1, 64);
    const std::vector<float> a = s1.forward(kA.data(), n, 0);
    const std::vector<float> b = s2.forward_parts({SeqTokens{1, kA.data(), n, nullptr}});
    ASSERT_EQ(a.size(), static_cast<size_t>(n) * vocab);
    EXPECT_EQ(a, b) << n << " tokens";
    EXPECT_EQ(c2.n_tokens(1), n);
    EXPECT_EQ(c2.n_tokens(0), 0);
  }
}

TEST_F(ForwardParts, RowsDoNotDependOnOtherParts) {
  auto be = make_backend("cpu", 2);
  const int vocab = model_->config().vocab;
  const std::vector<uint8_t> sixteen(16, 16);
  const int w = 7;
  // Sequences 0 and 1 share a 7-token prefix; then part A continues both, and the third part is B or A.
  auto run = [&](const std::vector<int32_t>& third) {
    KvCache cache(layout(), opts(3));
    Session s(*model_, *be, cache, 0, 64);
    s.forward_parts({SeqTokens{0, kA.data(), w, sixteen.data()}, SeqTokens{1, kA.data(), w, sixteen.data()},
                     SeqTokens{2, kB.data(), w, sixteen.data()}});
    const std::vector<float> l = s.forward_parts({SeqTokens{0, kA.data() + w, w, sixteen.data()},
                                                  SeqTokens{1, kA.data() + w, w, sixteen.data()},
                                                  SeqTokens{2, third.data() + w, w, sixteen.data()}});
    EXPECT_EQ(cache.n_tokens(0), 2 * w);
    EXPECT_EQ(cache.n_tokens(2), 2 * w);
    return l;
  };
  const std::vector<float> with_b = run(kB), with_a = run(kA);
  const size_t part = static_cast<size_t>(w) * vocab;
  // Identical parts give identical rows, whatever the third part holds.
  EXPECT_EQ(slice(with_b, 0, part), slice(with_b, part, part));
  EXPECT_EQ(slice(with_b, 0, part), slice(with_a, 0, part));
  // The third sequence's own history matters: its rows differ from the first's.
  EXPECT_NE(slice(with_b, 2 * part, part), slice(with_b, 0, part));
}

}  // namespace
}  // namespace kvd
