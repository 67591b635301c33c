// The learned controller as a KvPolicy.
#include "policy/learned.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <optional>
#include <utility>

#include "controller/predictor.h"
#include "policy/budget.h"
#include "policy/features.h"

namespace kvd {
namespace {

class LearnedPolicy final : public KvPolicy {
 public:
  LearnedPolicy(ControllerModel model, std::string name, double budget, const PolicyContext& ctx)
      : model_(std::move(model)), name_(std::move(name)), predictor_(model_), raw_(model_.features.size()) {
    const auto& names = feature_names();
    for (const std::string& f : model_.features)  // the loader checked that every name is known
      index_.push_back(static_cast<size_t>(std::find(names.begin(), names.end(), f) - names.begin()));
    // lambda starts where the training split met this budget (the file's table) and adapts online.
    if (budget > 0) chooser_.emplace(budget, ctx.class_bits, initial_lambda(model_, budget));
  }

  int choose(const TokenFeatures& f) override {
    const auto t0 = std::chrono::steady_clock::now();
    for (size_t i = 0; i < index_.size(); ++i) raw_[i] = feature_at(f, index_[i]);
    int width = predictor_.predict(raw_.data());
    if (chooser_) width = chooser_->choose(predictor_.cost(), f.position);
    cost_.ns +=
        std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - t0).count();
    ++cost_.calls;
    return width;
  }
  bool needs_features() const override { return true; }
  std::string describe() const override {
    std::string s = "learned:" + name_;
    if (chooser_) {
      char buf[32];
      std::snprintf(buf, sizeof buf, "@%.2f", chooser_->guard().budget());
      s += buf;
    }
    return s;
  }
  DecisionCost decision_cost() const override { return cost_; }

 private:
  ControllerModel model_;
  std::string name_;
  ControllerPredictor predictor_;  // refers to model_ (declared before it)
  std::vector<size_t> index_;      // feature_names() index of each input
  std::vector<double> raw_;
  std::optional<LagrangianChooser> chooser_;
  DecisionCost cost_;
};

}  // namespace

std::unique_ptr<KvPolicy> make_learned_policy(ControllerModel model, const std::string& name, double budget,
                                              const PolicyContext& ctx) {
  return std::make_unique<LearnedPolicy>(std::move(model), name, budget, ctx);
}

std::unique_ptr<KvPolicy> make_learned_policy(const std::string& path, double budget,
                                              const PolicyContext& ctx) {
  return make_learned_policy(load_controller(path, ctx.quantizer), path, budget, ctx);
}

}  // namespace kvd
