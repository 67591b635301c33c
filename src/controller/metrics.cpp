// Classification metrics and rank correlation.
#include "controller/metrics.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include "util/error.h"

namespace kvd {

ClassMetrics class_metrics(const std::vector<int>& truth, const std::vector<int>& pred) {
  KVD_ASSERT(truth.size() == pred.size());
  ClassMetrics m;
  m.n = static_cast<int64_t>(truth.size());
  if (m.n == 0) return m;
  constexpr int kWidths[4] = {2, 4, 8, 16};
  int64_t right = 0;
  double width_sum = 0;
  for (size_t i = 0; i < truth.size(); ++i) {
    KVD_ASSERT(truth[i] >= 0 && truth[i] < 4 && pred[i] >= 0 && pred[i] < 4);
    ++m.confusion[static_cast<size_t>(truth[i])][static_cast<size_t>(pred[i])];
    right += truth[i] == pred[i];
    width_sum += kWidths[pred[i]];
  }
  m.accuracy = static_cast<double>(right) / static_cast<double>(m.n);
  m.mean_width = width_sum / static_cast<double>(m.n);
  double f1_sum = 0;
  int present = 0;
  for (size_t c = 0; c < 4; ++c) {
    int64_t tp = m.confusion[c][c], col = 0, row = 0;
    for (size_t k = 0; k < 4; ++k) {
      row += m.confusion[c][k];
      col += m.confusion[k][c];
    }
    m.support[c] = row;
    m.predicted[c] = col;
    m.precision[c] = col ? static_cast<double>(tp) / static_cast<double>(col) : 0.0;
    m.recall[c] = row ? static_cast<double>(tp) / static_cast<double>(row) : 0.0;
    const double pr = m.precision[c] + m.recall[c];
    m.f1[c] = pr > 0 ? 2 * m.precision[c] * m.recall[c] / pr : 0.0;
    if (row || col) {
      f1_sum += m.f1[c];
      ++present;
    }
  }
  m.macro_f1 = present ? f1_sum / present : 0.0;
  return m;
}

namespace {

std::vector<double> average_ranks(const std::vector<double>& v) {
  std::vector<size_t> idx(v.size());
  std::iota(idx.begin(), idx.end(), size_t{0});
  std::stable_sort(idx.begin(), idx.end(), [&](size_t a, size_t b) { return v[a] < v[b]; });
  std::vector<double> r(v.size());
  for (size_t i = 0; i < idx.size();) {
    size_t j = i;
    while (j + 1 < idx.size() && v[idx[j + 1]] == v[idx[i]]) ++j;
    for (size_t k = i; k <= j; ++k) r[idx[k]] = 0.5 * static_cast<double>(i + j) + 1;
    i = j + 1;
  }
  return r;
}

}  // namespace

double rank_correlation(const std::vector<double>& a, const std::vector<double>& b) {
  KVD_ASSERT(a.size() == b.size());
  if (a.size() < 2) return std::numeric_limits<double>::quiet_NaN();
  const std::vector<double> ra = average_ranks(a), rb = average_ranks(b);
  const double mean = 0.5 * static_cast<double>(a.size() + 1);
  double sab = 0, saa = 0, sbb = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    sab += (ra[i] - mean) * (rb[i] - mean);
    saa += (ra[i] - mean) * (ra[i] - mean);
    sbb += (rb[i] - mean) * (rb[i] - mean);
  }
  if (saa <= 0 || sbb <= 0) return std::numeric_limits<double>::quiet_NaN();
  return sab / std::sqrt(saa * sbb);
}

}  // namespace kvd
