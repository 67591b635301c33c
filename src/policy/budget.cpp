// Budget guard, Lagrangian chooser and the budgeted rule, random and guarded policies.
#include "policy/budget.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <utility>

#include "controller/mlp.h"
#include "util/error.h"

namespace kvd {
namespace {

constexpr std::array<int, 4> kWidths{2, 4, 8, 16};
constexpr double kSlack = 1e-9;  // float sums of the ladder's bits (3.0, 5.0, ...) are exact; this is margin

std::string fmt_budget(double b) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "@%.2f", b);
  return buf;
}

class GuardedPolicy final : public KvPolicy {
 public:
  GuardedPolicy(std::unique_ptr<KvPolicy> inner, double budget, const PolicyContext& ctx)
      : inner_(std::move(inner)), guard_(budget, ctx.class_bits) {}
  int choose(const TokenFeatures& f) override {
    guard_.observe(f.position);
    const int cls = guard_.clamp(width_class(inner_->choose(f)));
    guard_.commit(cls);
    return kWidths[static_cast<size_t>(cls)];
  }
  bool needs_features() const override { return inner_->needs_features(); }
  std::string describe() const override { return inner_->describe() + fmt_budget(guard_.budget()); }

 private:
  std::unique_ptr<KvPolicy> inner_;
  BudgetGuard guard_;
};

class RuleBudgetPolicy final : public KvPolicy {
 public:
  RuleBudgetPolicy(float t1, float t2, float t3, double budget, const PolicyContext& ctx)
      : t_{t1, t2, t3}, guard_(budget, ctx.class_bits) {}
  int choose(const TokenFeatures& f) override {
    guard_.observe(f.position);
    const double h = f.entropy;
    int cls = 0;
    for (int k = 0; k < 3; ++k)
      if (h >= t_[static_cast<size_t>(k)] + delta_) cls = k + 1;
    cls = guard_.clamp(cls);
    guard_.commit(cls);
    const double b = guard_.budget();
    delta_ = std::clamp(delta_ + 0.05 * (guard_.class_bits()[static_cast<size_t>(cls)] - b) / b, -50.0, 50.0);
    return kWidths[static_cast<size_t>(cls)];
  }
  bool needs_features() const override { return true; }
  std::string describe() const override {
    char buf[96];
    std::snprintf(buf, sizeof buf, "rule:%.2f,%.2f,%.2f", t_[0], t_[1], t_[2]);
    return buf + fmt_budget(guard_.budget());
  }

 private:
  std::array<float, 3> t_;
  BudgetGuard guard_;
  double delta_ = 0;  // nats added to every threshold
};

class RandomBudgetPolicy final : public KvPolicy {
 public:
  RandomBudgetPolicy(uint64_t seed, double budget, const PolicyContext& ctx)
      : seed_(seed), guard_(budget, ctx.class_bits) {
    const auto& bits = ctx.class_bits;
    if (budget >= bits[3]) {
      lo_ = hi_ = 3;
      return;
    }
    for (int k = 0; k < 3; ++k)
      if (budget >= bits[static_cast<size_t>(k)] && budget < bits[static_cast<size_t>(k) + 1]) {
        lo_ = k;
        hi_ = k + 1;
        p_hi_ = (budget - bits[static_cast<size_t>(k)]) /
                (bits[static_cast<size_t>(k) + 1] - bits[static_cast<size_t>(k)]);
      }
  }
  int choose(const TokenFeatures& f) override {
    guard_.observe(f.position);
    SplitMix64 rng(seed_ * 0x9E3779B97F4A7C15ull + static_cast<uint64_t>(static_cast<uint32_t>(f.position)));
    const int want = rng.uniform() < p_hi_ ? hi_ : lo_;
    const int cls = guard_.clamp(want);
    guard_.commit(cls);
    return kWidths[static_cast<size_t>(cls)];
  }
  bool needs_features() const override { return false; }
  std::string describe() const override {
    return "random:" + std::to_string(seed_) + fmt_budget(guard_.budget());
  }

 private:
  uint64_t seed_;
  BudgetGuard guard_;
  int lo_ = 0, hi_ = 0;
  double p_hi_ = 0;
};

}  // namespace

int width_class(int width) {
  for (size_t k = 0; k < kWidths.size(); ++k)
    if (kWidths[k] == width) return static_cast<int>(k);
  return -1;
}

BudgetGuard::BudgetGuard(double budget, const std::array<double, 4>& class_bits)
    : budget_(budget), bits_(class_bits) {
  KVD_ASSERT(budget >= class_bits[0]);
}

void BudgetGuard::observe(int32_t position) {
  if (position == 0) {
    sum_ = 0;
    n_ = 0;
  }
}

bool BudgetGuard::allows(int cls) const {
  const int64_t after = n_ + 1;
  // After this token the sequence must still be able to reach token kWarmup at the cheapest class.
  const double reserve = bits_[0] * static_cast<double>(std::max<int64_t>(0, kWarmup - after));
  const double cap = budget_ * static_cast<double>(std::max<int64_t>(after, kWarmup));
  return sum_ + bits_[static_cast<size_t>(cls)] + reserve <= cap + kSlack;
}

int BudgetGuard::clamp(int cls) const {
  for (int k = cls; k > 0; --k)
    if (allows(k)) return k;
  return 0;
}

void BudgetGuard::commit(int cls) {
  sum_ += bits_[static_cast<size_t>(cls)];
  ++n_;
}

LagrangianChooser::LagrangianChooser(double budget, const std::array<double, 4>& class_bits, double lambda0,
                                     double eta)
    : guard_(budget, class_bits), log_lambda_(std::log(lambda0)), eta_(eta) {}

double LagrangianChooser::lambda() const { return std::exp(log_lambda_); }

int LagrangianChooser::choose(const std::array<double, 4>& cost, int32_t position) {
  guard_.observe(position);
  const double lambda = std::exp(log_lambda_);
  int best = 0;
  double best_v = 0;
  for (int k = 0; k < 4; ++k) {
    if (!guard_.allows(k)) continue;  // allowed classes are a prefix (bits increase)
    const double v = cost[static_cast<size_t>(k)] + lambda * guard_.class_bits()[static_cast<size_t>(k)];
    if (k == 0 || v < best_v) {
      best = k;
      best_v = v;
    }
  }
  guard_.commit(best);
  const double b = guard_.budget();
  log_lambda_ = std::clamp(log_lambda_ + eta_ * (guard_.class_bits()[static_cast<size_t>(best)] - b) / b,
                           std::log(1e-12), std::log(1e6));
  return kWidths[static_cast<size_t>(best)];
}

void check_budget(double budget, const PolicyContext& ctx, const std::string& spec) {
  if (!std::isfinite(budget))
    throw Error("--kv-policy '" + spec + "': the budget is not a finite number of bits");
  if (budget < ctx.class_bits[0]) {
    char buf[160];
    std::snprintf(
        buf, sizeof buf,
        "': budget %.3g bits per element is below the cheapest class (2 bits stores %.3g with scales)",
        budget, ctx.class_bits[0]);
    throw Error("--kv-policy '" + spec + buf);
  }
}

std::unique_ptr<KvPolicy> make_guarded_policy(std::unique_ptr<KvPolicy> inner, double budget,
                                              const PolicyContext& ctx) {
  return std::make_unique<GuardedPolicy>(std::move(inner), budget, ctx);
}

std::unique_ptr<KvPolicy> make_rule_budget_policy(float t1, float t2, float t3, double budget,
                                                  const PolicyContext& ctx) {
  return std::make_unique<RuleBudgetPolicy>(t1, t2, t3, budget, ctx);
}

std::unique_ptr<KvPolicy> make_random_budget_policy(uint64_t seed, double budget, const PolicyContext& ctx) {
  return std::make_unique<RandomBudgetPolicy>(seed, budget, ctx);
}

}  // namespace kvd
