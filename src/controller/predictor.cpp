// Controller outputs -> costs and widths.
#include "controller/predictor.h"

#include <algorithm>
#include <cmath>

namespace kvd {

ControllerPredictor::ControllerPredictor(const ControllerModel& m)
    : m_(m), ws_(m.net.workspace()), x_(m.features.size()) {}

int ControllerPredictor::predict(const double* raw) {
  for (size_t i = 0; i < x_.size(); ++i)
    x_[i] = (std::clamp(raw[i], m_.min[i], m_.max[i]) - m_.mean[i]) / m_.std[i];
  const double* out = m_.net.forward(x_.data(), ws_);
  if (m_.is_damage()) {
    int choice = 16;
    for (size_t k = 0; k < kDamageWidths.size(); ++k) {
      log_dmg_[k] = out[k] * m_.target_std[k] + m_.target_mean[k];
      cost_[k] = std::exp(log_dmg_[k]);  // dmg_b + offset: > 0, so 16 bits (0) stays strictly better
    }
    cost_[3] = 0;
    for (size_t k = 0; k < kDamageWidths.size(); ++k)
      if (cost_[k] - kDamageOffset <= m_.tau) {
        choice = kDamageWidths[k];
        break;
      }
    return choice;
  }
  double mx = out[0];
  for (size_t k = 1; k < 4; ++k) mx = std::max(mx, out[k]);
  double s = 0;
  for (size_t k = 0; k < 4; ++k) s += (prob_[k] = std::exp(out[k] - mx));
  size_t best = 0;
  for (size_t k = 0; k < 4; ++k) {
    prob_[k] /= s;
    if (prob_[k] > prob_[best]) best = k;
  }
  double above = 0;  // P(label > class k), from the widest class down
  for (size_t k = 4; k-- > 0;) {
    cost_[k] = above;
    above += prob_[k];
  }
  return kControllerClasses[best];
}

}  // namespace kvd
