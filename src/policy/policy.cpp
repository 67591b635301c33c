// Static and rule-based policies, and the --kv-policy parser.
#include "policy/policy.h"

#include <cstdio>
#include <sstream>
#include <utility>
#include <vector>

#include "kv/kv_layout.h"
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

std::unique_ptr<KvPolicy> make_policy(const std::string& spec) {
  const size_t colon = spec.find(':');
  const std::string kind = spec.substr(0, colon);
  const std::string arg = colon == std::string::npos ? "" : spec.substr(colon + 1);
  if (kind == "static") {
    if (arg == "2" || arg == "4" || arg == "8" || arg == "16")
      return std::make_unique<StaticPolicy>(std::stoi(arg));
    throw Error("--kv-policy '" + spec + "': static takes 2, 4, 8 or 16 bits (e.g. static:4)");
  }
  if (kind == "rule") {
    if (arg.empty()) return std::make_unique<RulePolicy>(2.0f, 4.0f, 6.5f);
    std::vector<float> t;
    std::string norm = arg;  // thresholds may be separated by ',' or '/' (bench lists policies with ',')
    for (char& ch : norm)
      if (ch == '/') ch = ',';
    std::stringstream ss(norm);
    std::string part;
    while (std::getline(ss, part, ',')) t.push_back(parse_float(part, spec));
    if (t.size() != 3 || !(t[0] <= t[1] && t[1] <= t[2]))
      throw Error("--kv-policy '" + spec +
                  "': rule takes three increasing entropy thresholds, e.g. rule:2.0,4.0,6.5");
    return std::make_unique<RulePolicy>(t[0], t[1], t[2]);
  }
  if (kind == "pattern") {
    std::vector<int> widths;
    std::stringstream ss(arg);
    std::string part;
    while (std::getline(ss, part, '/')) {
      if (part != "2" && part != "4" && part != "8" && part != "16")
        throw Error("--kv-policy '" + spec +
                    "': pattern widths must be 2, 4, 8 or 16, separated by '/' (e.g. pattern:2/2/8)");
      widths.push_back(std::stoi(part));
    }
    if (widths.empty() || arg.back() == '/' || widths.size() > 4096)
      throw Error("--kv-policy '" + spec +
                  "': pattern takes 1 to 4096 widths separated by '/' (e.g. pattern:2/2/8)");
    return std::make_unique<PatternPolicy>(std::move(widths));
  }
  if (kind == "learned") {
    throw Error("--kv-policy '" + spec +
                "': learned controllers are not available yet (the controller issue adds them)");
  }
  throw Error("--kv-policy '" + spec +
              "': unknown policy (use static:B, rule[:T1,T2,T3], pattern:W1/W2/... or learned:FILE)");
}

}  // namespace kvd
