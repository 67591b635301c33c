// The budget knob: on long random feature streams (sequences of random lengths), the running average
// of stored bits never exceeds B from the 32nd token of a sequence on, for every budgeted policy; the
// Lagrangian uses the budget (its average ends near B, not far below); bad budgets are one-line errors.
#include <gtest/gtest.h>

#include <memory>
#include <string>
#include <vector>

#include "controller/controller_file.h"
#include "controller/mlp.h"
#include "policy/budget.h"
#include "policy/features.h"
#include "policy/learned.h"
#include "policy/policy.h"
#include "util/error.h"

namespace kvd {
namespace {

ControllerModel random_model(const std::string& target, uint64_t seed) {
  ControllerModel m;
  m.target = target;
  m.features = feature_names();
  const int nf = static_cast<int>(m.features.size());
  m.mean = {3.7, 7.0, 0.03, 0.59, 28.0, 11.4, 0.31, 26.0};
  m.std = {1.4, 1.7, 0.035, 0.12, 3.0, 2.0, 0.2, 23.0};
  m.min = {0.0, 3.4, 0.0, 0.37, 12.0, 3.0, 0.02, 0.0};
  m.max = {7.2, 10.8, 0.18, 1.0, 34.0, 16.0, 1.0, 110.0};
  m.net = Mlp({nf, 32, 16, target == "damage" ? 3 : 4});
  m.net.init(seed);
  if (target == "damage") {
    m.target_mean = {-1.6, -5.5, -11.0};  // the sample's log-damage scale
    m.target_std = {0.7, 1.0, 1.0};
  }
  return m;
}

struct Stream {
  explicit Stream(uint64_t seed) : rng(seed) {}
  TokenFeatures next() {
    if (left == 0) {  // a new sequence of 1..3000 tokens
      left = 1 + static_cast<int>(rng.below(3000));
      pos = 0;
    }
    --left;
    TokenFeatures f;
    f.entropy = static_cast<float>(7 * rng.uniform());
    f.rarity = static_cast<float>(3.4 + 7 * rng.uniform());
    f.attn_var = static_cast<float>(0.18 * rng.uniform());
    f.attn_max = static_cast<float>(0.37 + 0.63 * rng.uniform());
    f.k_norm = static_cast<float>(12 + 22 * rng.uniform());
    f.v_norm = static_cast<float>(3 + 13 * rng.uniform());
    f.max_prob = static_cast<float>(rng.uniform());
    f.position = pos++;
    f.token = static_cast<int32_t>(rng.below(49152));
    return f;
  }
  SplitMix64 rng;
  int left = 0;
  int32_t pos = 0;
};

// Runs n tokens; fails on any step where a sequence's average exceeds b after 32 tokens. Returns the
// average stored bits over all tokens of sequences longer than 500 tokens (what the budget should use).
double run_stream(KvPolicy& p, double b, const PolicyContext& ctx, int n, uint64_t seed) {
  Stream s(seed);
  double sum = 0, long_sum = 0, long_n = 0;
  int64_t count = 0;
  std::vector<double> seq_bits;
  int violations = 0;
  auto close_sequence = [&] {
    if (seq_bits.size() > 500)
      for (double v : seq_bits) {
        long_sum += v;
        ++long_n;
      }
    seq_bits.clear();
  };
  for (int i = 0; i < n; ++i) {
    const TokenFeatures f = s.next();
    if (f.position == 0) {
      close_sequence();
      sum = 0;
      count = 0;
    }
    const int w = p.needs_features() ? p.choose(f) : width_in_advance(p, f.position, f.token);
    const int cls = width_class(w);
    EXPECT_GE(cls, 0) << w;
    if (cls < 0) return 0;
    sum += ctx.class_bits[static_cast<size_t>(cls)];
    seq_bits.push_back(ctx.class_bits[static_cast<size_t>(cls)]);
    ++count;
    if (count >= 32 && sum / static_cast<double>(count) > b + 1e-9 && ++violations <= 5)
      ADD_FAILURE() << p.describe() << ": token " << i << " (position " << f.position << "): average "
                    << sum / count << " > budget " << b;
  }
  close_sequence();
  return long_n ? long_sum / long_n : 0;
}

TEST(ControllerBudget, RunningAverageNeverExceedsTheBudget) {
  const PolicyContext ctx;
  for (double b : {3.0, 3.5, 4.0, 5.0, 7.0, 9.0, 12.0}) {
    std::vector<std::unique_ptr<KvPolicy>> ps;
    ps.push_back(make_learned_policy(random_model("damage", 1), "damage", b, ctx));
    ps.push_back(make_learned_policy(random_model("oracle_bits", 2), "classes", b, ctx));
    char spec[64];
    for (const char* base : {"rule", "rule:0,0,0", "random", "random:7", "static:16", "pattern:16/2/8"}) {
      std::snprintf(spec, sizeof spec, "%s@%g", base, b);
      ps.push_back(make_policy(spec, ctx));
    }
    for (auto& p : ps) {
      const double avg = run_stream(*p, b, ctx, 60000, 42);
      // The Lagrangian policies and random mixing spend their budget (within 10%), not far less.
      const std::string d = p->describe();
      if (d.rfind("learned:", 0) == 0 || d.rfind("random", 0) == 0 || d.rfind("rule", 0) == 0) {
        EXPECT_GT(avg, 0.9 * b) << d << " average " << avg;
      }
    }
  }
}

TEST(ControllerBudget, FirstTokensMayBorrowFromTheFirst32) {
  // A policy that wants 16 bits for every token gets them for its first tokens, as long as the
  // sequence can still be at <= B by token 32 with the cheapest class.
  const PolicyContext ctx;
  auto p = make_policy("static:16@5", ctx);
  int wide = 0;
  double sum = 0;
  for (int32_t pos = 0; pos < 32; ++pos) {
    const int w = width_in_advance(*p, pos, 0);
    wide += w == 16;
    sum += ctx.class_bits[static_cast<size_t>(width_class(w))];
  }
  // 32 * 5 = 160 bits: k tokens at 16 and 32 - k at 3 need 16k + 3(32 - k) <= 160, so k <= 4.
  EXPECT_EQ(wide, 4);
  EXPECT_LE(sum, 160.0);
}

TEST(ControllerBudget, OtherLadderBits) {
  PolicyContext ctx;
  ctx.class_bits = {2.5, 4.5, 8.5, 16.0};  // today's cache at group 64
  auto p = make_policy("rule@2.6", ctx);
  run_stream(*p, 2.6, ctx, 5000, 3);
  EXPECT_THROW(make_policy("rule@2.6"), Error);  // the default ladder's cheapest class stores 3.0
}

TEST(ControllerBudget, RandomIsSeeded) {
  auto a = make_policy("random@4.2"), b = make_policy("random:0@4.2"), c = make_policy("random:5@4.2");
  EXPECT_FALSE(a->needs_features());
  EXPECT_EQ(a->describe(), "random:0@4.20");
  int differ = 0;
  for (int32_t pos = 0; pos < 2000; ++pos) {
    const int wa = width_in_advance(*a, pos, 0);
    EXPECT_EQ(wa, width_in_advance(*b, pos, 0));
    differ += wa != width_in_advance(*c, pos, 0);
    EXPECT_TRUE(wa == 2 || wa == 4) << wa;  // 4.2 lies between the 2-bit (3.0) and 4-bit (5.0) classes
  }
  EXPECT_GT(differ, 100);
}

TEST(ControllerBudget, BadBudgetsAreOneLineErrors) {
  auto message = [](const std::string& spec) {
    try {
      make_policy(spec);
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("accepted");
  };
  EXPECT_EQ(
      message("rule@2.9"),
      "--kv-policy 'rule@2.9': budget 2.9 bits per element is below the cheapest class (2 bits stores 3 "
      "with scales)");
  EXPECT_NE(message("static:4@1").find("below the cheapest class"), std::string::npos);
  EXPECT_NE(message("rule@abc").find("budget 'abc' after '@' is not a number"), std::string::npos);
  EXPECT_NE(message("rule@").find("is not a number"), std::string::npos);
  EXPECT_NE(message("rule@inf").find("not a finite number"), std::string::npos);
  EXPECT_NE(message("random").find("random mixes the classes at a budget"), std::string::npos);
  EXPECT_NE(message("random:x@4").find("seed 'x'"), std::string::npos);
  EXPECT_NE(message("bogus@4").find("unknown policy"), std::string::npos);
  EXPECT_EQ(make_policy("rule@3.5")->describe(), "rule:2.00,4.00,6.50@3.50");
  EXPECT_EQ(make_policy("static:4@5")->describe(), "static:4@5.00");
  EXPECT_EQ(make_policy("static:4@5")->choose(TokenFeatures{}), 4);
}

TEST(ControllerBudget, LagrangianPrefersLowDamageAtEqualBits) {
  // Costs that make 8 bits nearly free and 2 bits very costly: at a budget of 9 bits the chooser stores 8
  // (not 16: 7 more bits for 1e-6 less damage), at a tight one it mixes down but stays within budget.
  LagrangianChooser loose(9.0, {3.0, 5.0, 9.0, 16.0}, 1e-3);
  for (int32_t pos = 0; pos < 200; ++pos) EXPECT_EQ(loose.choose({0.5, 0.01, 1e-6, 0.0}, pos), 8) << pos;
  LagrangianChooser tight(4.0, {3.0, 5.0, 9.0, 16.0}, 1e-3);
  double sum = 0;
  for (int32_t pos = 0; pos < 2000; ++pos) {
    const int w = tight.choose({0.5, 0.01, 1e-6, 0.0}, pos);
    sum += std::array<double, 4>{3.0, 5.0, 9.0, 16.0}[static_cast<size_t>(width_class(w))];
    if (pos >= 31) {
      EXPECT_LE(sum / (pos + 1), 4.0 + 1e-9);
    }
  }
  EXPECT_GT(sum / 2000, 3.8);
}

}  // namespace
}  // namespace kvd
