// learned:FILE[@B]: the trained controller of a file (docs/controller.md) as a KvPolicy. Each token's
// features go through the MLP (plain C++ forward, buffers allocated once); without a budget the
// controller's own choice is taken, with one the per-class costs go through a LagrangianChooser
// (policy/budget.h). Its decision time is counted (KvPolicy::decision_cost).
#pragma once
#include <memory>
#include <string>

#include "controller/controller_file.h"
#include "policy/policy.h"

namespace kvd {

// budget <= 0: no budget. name: what describe() shows after "learned:" (the file's path).
std::unique_ptr<KvPolicy> make_learned_policy(ControllerModel model, const std::string& name, double budget,
                                              const PolicyContext& ctx);
std::unique_ptr<KvPolicy> make_learned_policy(const std::string& path, double budget,
                                              const PolicyContext& ctx);

}  // namespace kvd
