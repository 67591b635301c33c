// The summary kvdial stats prints of a collect CSV, and the correlations it (and kvdial train) use.
#pragma once
#include <string>
#include <vector>

#include "eval/csv.h"

namespace kvd {

// What kvdial stats prints: per-column mean; std, min, max; the correlation matrix; the distribution
// of kv_bits and oracle_bits; the correlation of oracle_bits with kv_bits and each feature.
std::string csv_stats_report(const CsvTable& t);

// Pearson and Spearman (average ranks for ties) correlation; NaN when a side is constant.
double pearson(const std::vector<double>& a, const std::vector<double>& b);
double spearman(const std::vector<double>& a, const std::vector<double>& b);

}  // namespace kvd
