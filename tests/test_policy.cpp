// Policies (spec parsing, rule thresholds) and feature extraction (entropy against a plain double
// computation).
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "policy/features.h"
#include "policy/policy.h"
#include "util/error.h"

namespace kvd {
namespace {

TEST(Policy, ParsesSpecs) {
  EXPECT_EQ(make_policy("static:4")->choose(TokenFeatures{}), 4);
  EXPECT_EQ(make_policy("static:16")->describe(), "static:16");
  EXPECT_FALSE(make_policy("static:2")->needs_features());
  EXPECT_TRUE(make_policy("rule")->needs_features());
  EXPECT_EQ(make_policy("rule:1,2,3")->describe(), "rule:1.00,2.00,3.00");
  EXPECT_EQ(make_policy("rule:1/2/3")->describe(), "rule:1.00,2.00,3.00");
}

TEST(Policy, PatternCyclesByPosition) {
  auto p = make_policy("pattern:2/2/8");
  EXPECT_FALSE(p->needs_features());
  EXPECT_EQ(p->describe(), "pattern:2/2/8");
  const int want[] = {2, 2, 8, 2, 2, 8, 2};
  for (int pos = 0; pos < 7; ++pos) {
    TokenFeatures f;
    f.position = pos;
    f.entropy = 100.0f;  // ignored
    EXPECT_EQ(p->choose(f), want[pos]) << pos;
  }
  TokenFeatures far;
  far.position = 3 * 1000 + 2;
  EXPECT_EQ(p->choose(far), 8);
  EXPECT_EQ(make_policy("pattern:16")->choose(TokenFeatures{}), 16);
}

TEST(Policy, BadSpecsAreErrors) {
  for (const char* spec : {"static:3", "static:", "static", "rule:1,2", "rule:3,2,1", "rule:a,b,c", "bogus",
                           "pattern:", "pattern", "pattern:2//8", "pattern:3/4", "pattern:2,4", "pattern:4/",
                           "learned:/nonexistent/controller.json", ""}) {
    EXPECT_THROW(make_policy(spec), Error) << spec;
  }
}

TEST(Policy, RuleMatchesTheSeedsObservedMapping) {
  auto rule = make_policy("rule");
  auto with_entropy = [](float h) {
    TokenFeatures f;
    f.entropy = h;
    return f;
  };
  // Entropy -> bits pairs from the seed's sample CSV.
  const std::pair<float, int> seed[] = {{7.871669f, 16}, {5.129652f, 8}, {5.238664f, 8}, {2.877511f, 4},
                                        {1.377800f, 2},  {4.657082f, 8}, {3.797291f, 4}, {4.184223f, 8}};
  for (auto [h, bits] : seed) EXPECT_EQ(rule->choose(with_entropy(h)), bits) << h;
}

TEST(Features, EntropyMatchesDoubleComputation) {
  std::mt19937 rng(5);
  for (int n : {1, 7, 16, 100, 49152}) {
    for (float spread : {0.01f, 1.0f, 10.0f}) {
      std::normal_distribution<float> nd(0.0f, spread);
      std::vector<float> logits(n);
      for (auto& x : logits) x = nd(rng);
      double mx = logits[0];
      int best = 0;
      for (int i = 1; i < n; ++i)
        if (logits[i] > mx) {
          mx = logits[i];
          best = i;
        }
      double z = 0, h = 0;
      for (float x : logits) z += std::exp(x - mx);
      for (float x : logits) {
        const double p = std::exp(x - mx) / z;
        if (p > 0) h -= p * std::log(p);
      }
      float entropy, max_prob;
      int32_t argmax;
      logits_summary(logits.data(), n, &entropy, &max_prob, &argmax);
      EXPECT_NEAR(entropy, h, 1e-4 + 1e-5 * h) << n << " " << spread;
      EXPECT_NEAR(max_prob, 1.0 / z, 1e-6);
      EXPECT_EQ(argmax, best);
    }
  }
}

TEST(Features, OneHotHasZeroEntropy) {
  std::vector<float> logits(1000, -1e4f);
  logits[17] = 0;
  float h, p;
  int32_t a;
  logits_summary(logits.data(), 1000, &h, &p, &a);
  EXPECT_NEAR(h, 0.0f, 1e-6f);
  EXPECT_NEAR(p, 1.0f, 1e-6f);
  EXPECT_EQ(a, 17);
}

}  // namespace
}  // namespace kvd
