// kvdial stats: the seed's summary of a collect CSV (means, spread, correlations, distributions).
#include "eval/csv_stats.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <map>
#include <numeric>
#include <sstream>

namespace kvd {

namespace {

double mean_of(const std::vector<double>& v) {
  double s = 0;
  for (double x : v) s += x;
  return v.empty() ? 0 : s / static_cast<double>(v.size());
}

double std_of(const std::vector<double>& v) {  // sample standard deviation (ddof 1), as pandas
  if (v.size() < 2) return std::numeric_limits<double>::quiet_NaN();
  const double m = mean_of(v);
  double s = 0;
  for (double x : v) s += (x - m) * (x - m);
  return std::sqrt(s / static_cast<double>(v.size() - 1));
}

std::vector<double> ranks(const std::vector<double>& v) {
  std::vector<size_t> idx(v.size());
  std::iota(idx.begin(), idx.end(), 0);
  std::stable_sort(idx.begin(), idx.end(), [&](size_t a, size_t b) { return v[a] < v[b]; });
  std::vector<double> r(v.size());
  for (size_t i = 0; i < idx.size();) {
    size_t j = i;
    while (j + 1 < idx.size() && v[idx[j + 1]] == v[idx[i]]) ++j;
    const double avg = 0.5 * static_cast<double>(i + j) + 1;
    for (size_t k = i; k <= j; ++k) r[idx[k]] = avg;
    i = j + 1;
  }
  return r;
}

std::string cell(double v, int width, int prec = 6) {
  char buf[64];
  if (std::isnan(v))
    std::snprintf(buf, sizeof buf, "%*s", width, "NaN");
  else if (v != 0 && (std::abs(v) < 1e-3 || std::abs(v) >= 1e6))
    std::snprintf(buf, sizeof buf, "%*.*e", width, prec - 2, v);
  else
    std::snprintf(buf, sizeof buf, "%*.*f", width, prec, v);
  return buf;
}

std::string pad(const std::string& s, size_t width) {
  return s.size() >= width ? s : s + std::string(width - s.size(), ' ');
}

// Identifier columns: summarised, but left out of the correlations (their values are labels, not sizes).
bool is_id_column(const std::string& c) {
  return c == "example" || c == "ind" || c == "token" || c == "argmax";
}

}  // namespace

double pearson(const std::vector<double>& a, const std::vector<double>& b) {
  const double ma = mean_of(a), mb = mean_of(b);
  double sab = 0, saa = 0, sbb = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    sab += (a[i] - ma) * (b[i] - mb);
    saa += (a[i] - ma) * (a[i] - ma);
    sbb += (b[i] - mb) * (b[i] - mb);
  }
  if (saa <= 0 || sbb <= 0) return std::numeric_limits<double>::quiet_NaN();
  return sab / std::sqrt(saa * sbb);
}

double spearman(const std::vector<double>& a, const std::vector<double>& b) {
  return pearson(ranks(a), ranks(b));
}

std::string csv_stats_report(const CsvTable& t) {
  std::ostringstream out;
  std::vector<int> num;  // numeric columns
  for (size_t c = 0; c < t.columns.size(); ++c)
    if (t.columns[c] != "split") num.push_back(static_cast<int>(c));
  size_t name_w = 8;
  for (int c : num) name_w = std::max(name_w, t.columns[c].size() + 1);
  out << t.path << ": " << t.rows() << " rows, " << t.columns.size() << " columns\n";

  out << "\n=== Overall Summary (mean) ===\n";
  for (int c : num) out << pad(t.columns[c], name_w) << cell(mean_of(t.values[c]), 14) << "\n";

  out << "\n=== Distribution Stats (std, min, max) ===\n"
      << pad("", name_w) << "           std            min            max\n";
  for (int c : num) {
    const auto& v = t.values[c];
    out << pad(t.columns[c], name_w) << cell(std_of(v), 14) << " "
        << cell(*std::min_element(v.begin(), v.end()), 14) << " "
        << cell(*std::max_element(v.begin(), v.end()), 14) << "\n";
  }

  std::vector<int> corr;
  for (int c : num)
    if (!is_id_column(t.columns[c])) corr.push_back(c);
  out << "\n=== Feature Correlations (Pearson; id columns example, ind, token, argmax left out) ===\n";
  out << pad("", name_w);
  for (int c : corr)
    out << std::string(t.columns[c].size() < 9 ? 10 - t.columns[c].size() : 1, ' ') << t.columns[c];
  out << "\n";
  for (int r : corr) {
    out << pad(t.columns[r], name_w);
    for (int c : corr) {
      const size_t w = std::max<size_t>(10, t.columns[c].size() + 1);
      char buf[32];
      const double v = r == c ? 1.0 : pearson(t.values[r], t.values[c]);
      if (std::isnan(v))
        std::snprintf(buf, sizeof buf, "%*s", static_cast<int>(w), "NaN");
      else
        std::snprintf(buf, sizeof buf, "%*.4f", static_cast<int>(w), v);
      out << buf;
    }
    out << "\n";
  }

  auto distribution = [&](const char* name) {
    const int c = t.column(name);
    if (c < 0) return;
    std::map<double, int64_t> counts;
    for (double v : t.values[c]) counts[v]++;
    out << "\n=== " << name << " distribution ===\n";
    for (const auto& [v, n] : counts) {
      char buf[96];
      std::snprintf(buf, sizeof buf, "%6g: %7lld  (%5.1f%%)\n", v, static_cast<long long>(n),
                    100.0 * static_cast<double>(n) / static_cast<double>(t.rows()));
      out << buf;
    }
    out << "  mean " << cell(mean_of(t.values[c]), 0, 4) << " bits\n";
  };
  distribution("kv_bits");
  distribution("oracle_bits");

  if (!t.split.empty()) {
    std::map<std::string, int64_t> rows;
    std::map<std::string, std::vector<double>> examples;
    const int ex = t.column("example");
    for (size_t i = 0; i < t.split.size(); ++i) {
      rows[t.split[i]]++;
      if (ex >= 0) examples[t.split[i]].push_back(t.values[ex][i]);
    }
    out << "\n=== split ===\n";
    for (const auto& [s, n] : rows) {
      auto& e = examples[s];
      std::sort(e.begin(), e.end());
      const auto distinct = std::unique(e.begin(), e.end()) - e.begin();
      out << pad(s, 8) << n << " rows" << (ex >= 0 ? ", " + std::to_string(distinct) + " examples" : "")
          << "\n";
    }
  }

  const int ob = t.column("oracle_bits");
  if (ob >= 0) {
    out << "\n=== Correlation of oracle_bits with kv_bits and each feature ===\n";
    out << pad("", name_w) << "   Pearson   Spearman\n";
    for (int c : corr) {
      if (c == ob) continue;
      char buf[64];
      const double p = pearson(t.values[ob], t.values[c]), s = spearman(t.values[ob], t.values[c]);
      std::snprintf(buf, sizeof buf, "%10.4f %10.4f\n", p, s);
      out << pad(t.columns[c], name_w) << buf;
    }
  }
  // The proxy against the damage it stands for, when both are present.
  bool head = false;
  for (const char* b : {"2", "4", "8"}) {
    const int d = t.column(std::string("dmg") + b), p = t.column(std::string("proxy") + b);
    if (d < 0 || p < 0) continue;
    if (!head) out << "\n=== proxy vs measured damage (Spearman rank correlation) ===\n";
    head = true;
    char buf[96];
    std::snprintf(buf, sizeof buf, "proxy%s ~ dmg%s: %.4f   (recv ~ dmg%s: %.4f)\n", b, b,
                  spearman(t.values[p], t.values[d]), b,
                  t.column("recv") >= 0 ? spearman(t.values[t.column("recv")], t.values[d]) : NAN);
    out << buf;
  }
  return out.str();
}

}  // namespace kvd
