// Static and rule-based policies, and the --kv-policy parser.
#include "policy/policy.h"

#include <cstdio>
#include <sstream>
#include <utility>
#include <vector>

#include "kv/kv_layout.h"
#include "policy/budget.h"
#include "policy/learned.h"
#include "util/error.h"

namespace kvd {
namespace {

class StaticPolicy final : public KvPolicy {
 public:
  explicit StaticPolicy(int bits) : bits_(bits) {}
  int choose(const TokenFeatures&) override { return bits_; }
  bool needs_features() const override { return false; }
  std::string describe() const override { return "static:" + std::to_string(bits_); }

 private:
  int bits_;
};

class RulePolicy final : public KvPolicy {
 public:
  RulePolicy(float t1, float t2, float t3) : t1_(t1), t2_(t2), t3_(t3) {}
  int choose(const TokenFeatures& f) override {
    if (f.entropy >= t3_) return 16;
    if (f.entropy >= t2_) return 8;
    if (f.entropy >= t1_) return 4;
    return 2;
  }
  bool needs_features() const override { return true; }
  std::string describe() const override {
    char buf[96];
    std::snprintf(buf, sizeof buf, "rule:%.2f,%.2f,%.2f", t1_, t2_, t3_);
    return buf;
  }

 private:
  float t1_, t2_, t3_;
};

class PatternPolicy final : public KvPolicy {
 public:
  explicit PatternPolicy(std::vector<int> widths) : widths_(std::move(widths)) {}
  int choose(const TokenFeatures& f) override {
    const auto n = static_cast<int32_t>(widths_.size());
    return widths_[static_cast<size_t>(((f.position % n) + n) % n)];
  }
  bool needs_features() const override { return false; }
  std::string describe() const override {
    std::string s = "pattern:";
    for (size_t i = 0; i < widths_.size(); ++i) s += (i ? "/" : "") + std::to_string(widths_[i]);
    return s;
  }

 private:
  std::vector<int> widths_;
};

float parse_float(const std::string& s, const std::string& spec) {
  try {
    size_t used = 0;
    const float v = std::stof(s, &used);
    if (used != s.size()) throw std::invalid_argument(s);
    return v;
  } catch (const std::exception&) {
    throw Error("--kv-policy '" + spec + "': '" + s + "' is not a number");
  }
}

}  // namespace

int width_in_advance(KvPolicy& policy, int32_t position, int32_t token) {
  TokenFeatures f;
  f.position = position;
  f.token = token;
  return policy.choose(f);
}

namespace {

// A spec without its budget suffix; budget <= 0: none. full = the whole spec, for errors.
std::unique_ptr<KvPolicy> make_base_policy(const std::string& spec, const std::string& full, double budget,
                                           const PolicyContext& ctx) {
  const size_t colon = spec.find(':');
  const std::string kind = spec.substr(0, colon);
  const std::string arg = colon == std::string::npos ? "" : spec.substr(colon + 1);
  auto guarded = [&](std::unique_ptr<KvPolicy> p) {
    return budget > 0 ? make_guarded_policy(std::move(p), budget, ctx) : std::move(p);
  };
  if (kind == "static") {
    if (arg == "2" || arg == "4" || arg == "8" || arg == "16")
      return guarded(std::make_unique<StaticPolicy>(std::stoi(arg)));
    throw Error("--kv-policy '" + full + "': static takes 2, 4, 8 or 16 bits (e.g. static:4)");
  }
  if (kind == "rule") {
    std::vector<float> t{2.0f, 4.0f, 6.5f};
    if (!arg.empty()) {
      t.clear();
      std::string norm = arg;  // thresholds may be separated by ',' or '/' (bench lists policies with ',')
      for (char& ch : norm)
        if (ch == '/') ch = ',';
      std::stringstream ss(norm);
      std::string part;
      while (std::getline(ss, part, ',')) t.push_back(parse_float(part, full));
      if (t.size() != 3 || !(t[0] <= t[1] && t[1] <= t[2]))
        throw Error("--kv-policy '" + full +
                    "': rule takes three increasing entropy thresholds, e.g. rule:2.0,4.0,6.5");
    }
    if (budget > 0) return make_rule_budget_policy(t[0], t[1], t[2], budget, ctx);
    return std::make_unique<RulePolicy>(t[0], t[1], t[2]);
  }
  if (kind == "pattern") {
    std::vector<int> widths;
    std::stringstream ss(arg);
    std::string part;
    while (std::getline(ss, part, '/')) {
      if (part != "2" && part != "4" && part != "8" && part != "16")
        throw Error("--kv-policy '" + full +
                    "': pattern widths must be 2, 4, 8 or 16, separated by '/' (e.g. pattern:2/2/8)");
      widths.push_back(std::stoi(part));
    }
    if (widths.empty() || arg.back() == '/' || widths.size() > 4096)
      throw Error("--kv-policy '" + full +
                  "': pattern takes 1 to 4096 widths separated by '/' (e.g. pattern:2/2/8)");
    return guarded(std::make_unique<PatternPolicy>(std::move(widths)));
  }
  if (kind == "learned") {
    if (arg.empty()) throw Error("--kv-policy '" + full + "': learned takes a controller file (learned:FILE)");
    return make_learned_policy(arg, budget, ctx);
  }
  if (kind == "random") {
    if (budget <= 0)
      throw Error("--kv-policy '" + full + "': random mixes the classes at a budget: random@B or random:SEED@B");
    uint64_t seed = 0;
    if (colon != std::string::npos) {
      size_t used = 0;
      try {
        seed = std::stoull(arg, &used);
      } catch (const std::exception&) {
        used = 0;
      }
      if (arg.empty() || used != arg.size() || arg[0] == '-')
        throw Error("--kv-policy '" + full + "': random's seed '" + arg + "' is not a non-negative integer");
    }
    return make_random_budget_policy(seed, budget, ctx);
  }
  throw Error("--kv-policy '" + full +
              "': unknown policy (use static:B, rule[:T1,T2,T3], pattern:W1/W2/..., learned:FILE or random@B; "
              "any with @B for a budget)");
}

}  // namespace

std::unique_ptr<KvPolicy> make_policy(const std::string& spec, const PolicyContext& ctx) {
  for (size_t k = 0; k < ctx.class_bits.size(); ++k)
    if (!(ctx.class_bits[k] > 0) || (k > 0 && ctx.class_bits[k] < ctx.class_bits[k - 1]))
      throw Error("policy context: class bits must be positive and non-decreasing");
  const size_t at = spec.rfind('@');
  if (at == std::string::npos) return make_base_policy(spec, spec, 0, ctx);
  const std::string b = spec.substr(at + 1);
  double budget = 0;
  size_t used = 0;
  try {
    budget = std::stod(b, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (b.empty() || used != b.size())
    throw Error("--kv-policy '" + spec + "': budget '" + b + "' after '@' is not a number of bits (e.g. rule@3.5)");
  check_budget(budget, ctx, spec);
  return make_base_policy(spec.substr(0, at), spec, budget, ctx);
}

std::unique_ptr<KvPolicy> make_policy(const std::string& spec) { return make_policy(spec, PolicyContext{}); }

}  // namespace kvd
