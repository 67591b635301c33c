// Metrics of the training report: classification over the width classes 2, 4, 8, 16 (accuracy, macro-F1,
// per-class precision and recall, confusion matrix) and Spearman's rank correlation for damage.
#pragma once
#include <array>
#include <cstdint>
#include <string>
#include <vector>

namespace kvd {

struct ClassMetrics {
  int64_t n = 0;
  double accuracy = 0;
  // Mean of the per-class F1 over the classes present in the truth or the predictions (as scikit-learn's
  // f1_score(average="macro") with its default labels; a class never predicted has precision 0).
  double macro_f1 = 0;
  std::array<double, 4> precision{}, recall{}, f1{};
  std::array<int64_t, 4> support{}, predicted{};
  std::array<std::array<int64_t, 4>, 4> confusion{};  // [true class][predicted class]
  double mean_width = 0;                              // of the predictions
};

// truth and pred hold class indices 0..3 (widths 2, 4, 8, 16).
ClassMetrics class_metrics(const std::vector<int>& truth, const std::vector<int>& pred);

// Spearman's rank correlation (average ranks for ties); NaN when a side is constant or n < 2.
double rank_correlation(const std::vector<double>& a, const std::vector<double>& b);

}  // namespace kvd
