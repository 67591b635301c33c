// A controller's decision for one token: the MLP's forward on standardised features, turned into a cost
// per width class (what the budget trades against bits) and the width the controller picks on its own.
// Shared by the training report and the learned policy, so the report measures what the engine runs.
// No allocation after construction.
#pragma once
#include <array>
#include <vector>

#include "controller/controller_file.h"

namespace kvd {

class ControllerPredictor {
 public:
  explicit ControllerPredictor(const ControllerModel& m);  // keeps a reference: m must outlive it

  // raw: the features in m.features order (clamped to the training range, then standardised). Returns the
  // width (2, 4, 8 or 16) chosen without a budget:
  //   classes: the most probable class (ties to the narrower);
  //   damage:  the smallest b in 2, 4, 8 whose predicted damage is <= tau, else 16 (the labels' rule).
  int predict(const double* raw);

  // After predict, per class (2, 4, 8, 16), the cost a budget trades against stored bits:
  //   damage:  the predicted damage plus the regression's offset, dmg_b + 1e-6 (16 bits: 0; the offset
  //            keeps a width whose predicted damage underflows from tying with 16 bits);
  //   classes: P(label > b), the probability that b bits are too few (16 bits: 0).
  const std::array<double, 4>& cost() const { return cost_; }
  const std::array<double, 4>& probabilities() const { return prob_; }  // classes only
  const std::array<double, 3>& log_damage() const { return log_dmg_; }  // damage only: log(dmg_b + 1e-6)

 private:
  const ControllerModel& m_;
  Mlp::Workspace ws_;
  std::vector<double> x_;
  std::array<double, 4> cost_{}, prob_{};
  std::array<double, 3> log_dmg_{};
};

}  // namespace kvd
