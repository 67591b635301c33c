// The budget knob (spec suffix @B, or --kv-budget B): B = stored bits per element, scales included,
// whose running average over a sequence's tokens stays <= B at every step from the 32nd token on.
//
// BudgetGuard is the hard limit every budgeted policy goes through: a class is allowed only if, after it,
// the sequence can still meet the budget with the cheapest class (before token 32 the guard lends the
// sequence its first 32 tokens' budget, so a first token may be stored wide). LagrangianChooser turns
// per-class costs (predicted damage, or the risk of too few bits) into widths: argmin cost + lambda * bits
// over the allowed classes, lambda adjusted online so the running average holds B. docs/policies.md.
#pragma once
#include <array>
#include <cstdint>
#include <memory>

#include "policy/policy.h"

namespace kvd {

// Index of a width in the classes 2, 4, 8, 16 (-1 for anything else).
int width_class(int width);

class BudgetGuard {
 public:
  static constexpr int kWarmup = 32;
  BudgetGuard(double budget, const std::array<double, 4>& class_bits);

  // Call before deciding each token: position 0 starts a new sequence (the sums restart).
  void observe(int32_t position);
  bool allows(int cls) const;
  // The widest allowed class not wider than cls (the cheapest class is always allowed).
  int clamp(int cls) const;
  void commit(int cls);

  double budget() const { return budget_; }
  const std::array<double, 4>& class_bits() const { return bits_; }
  int64_t tokens() const { return n_; }
  double average() const { return n_ ? sum_ / static_cast<double>(n_) : 0.0; }

 private:
  double budget_;
  std::array<double, 4> bits_;
  double sum_ = 0;
  int64_t n_ = 0;
};

class LagrangianChooser {
 public:
  // eta: step of log(lambda) per token, times (bits chosen - B) / B. lambda persists across sequences.
  LagrangianChooser(double budget, const std::array<double, 4>& class_bits, double lambda0, double eta = 0.1);
  // cost: per class (2, 4, 8, 16). Returns the width.
  int choose(const std::array<double, 4>& cost, int32_t position);
  double lambda() const;
  const BudgetGuard& guard() const { return guard_; }

 private:
  BudgetGuard guard_;
  double log_lambda_;
  double eta_;
};

// Checks a budget against the context's classes: throws kvd::Error "--kv-policy 'SPEC': ..." when it is
// not a finite number or below the cheapest class.
void check_budget(double budget, const PolicyContext& ctx, const std::string& spec);

// spec@B for policies without a cost model of their own (static, pattern): their width, clamped by the
// guard (the widest allowed class not wider than the policy's).
std::unique_ptr<KvPolicy> make_guarded_policy(std::unique_ptr<KvPolicy> inner, double budget,
                                              const PolicyContext& ctx);
// rule@B: the rule with its three thresholds shifted by delta nats, delta adjusted online (+0.05 nats
// times (bits - B) / B per token) so the running average holds B, then the guard.
std::unique_ptr<KvPolicy> make_rule_budget_policy(float t1, float t2, float t3, double budget,
                                                  const PolicyContext& ctx);
// random[:SEED]@B: each position draws (splitmix64 of seed and position) between the two classes around
// B with the probabilities that average B, then the guard. The baseline a controller must beat.
std::unique_ptr<KvPolicy> make_random_budget_policy(uint64_t seed, double budget, const PolicyContext& ctx);

}  // namespace kvd
