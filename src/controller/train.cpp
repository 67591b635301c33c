// Training a controller from CSVs, and its report.
#include "controller/train.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <memory>
#include <sstream>

#include "controller/metrics.h"
#include "controller/predictor.h"
#include "eval/collect.h"
#include "policy/budget.h"
#include "policy/features.h"
#include "util/error.h"

namespace kvd {
namespace {

using nlohmann::json;

constexpr const char* kSplitNames[3] = {"train", "val", "test"};
constexpr int kWidths[4] = {2, 4, 8, 16};

struct Data {
  std::vector<std::string> features;
  size_t n = 0;
  std::vector<double> x;   // n x features, raw
  std::vector<int> split;  // 0 train, 1 val, 2 test
  std::vector<int> label;  // class index of the evaluation label (see below)
  std::vector<int> kv;     // class index of kv_bits (the rule that ran)
  bool has_dmg = false, has_proxy = false, has_recv = false;
  std::vector<std::array<double, 3>> dmg, proxy;
  std::vector<double> recv;
  std::string label_desc;
  double tau = 0;
  std::string quantizer;
  std::vector<TrainingCsv> csvs;
};

std::string fmt(const char* f, double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, f, v);
  return buf;
}

std::string f4(double v) { return std::isnan(v) ? "n/a" : fmt("%.4f", v); }

int oracle_class(const std::array<double, 3>& dmg, double tau) {
  for (int k = 0; k < 3; ++k)
    if (dmg[static_cast<size_t>(k)] <= tau) return k;
  return 3;
}

// The sidecar's quantizer settings ("unknown" without one) and tau (0 without one).
void read_sidecar(const std::string& csv, std::string* quantizer, double* tau) {
  *quantizer = "unknown";
  *tau = 0;
  const std::string path = csv + ".json";
  std::ifstream in(path, std::ios::binary);
  if (!in) return;
  json j;
  try {
    j = json::parse(in);
  } catch (const json::exception&) {
    throw Error(path + ": the CSV's sidecar is not valid JSON");
  }
  if (!j.is_object()) throw Error(path + ": the CSV's sidecar is not a JSON object");
  const json* params = j.contains("params") && j["params"].is_object() ? &j["params"] : nullptr;
  for (const json* o : {static_cast<const json*>(&j), params}) {
    if (!o) continue;
    if (o->contains("quantizer") && (*o)["quantizer"].is_string() && *quantizer == "unknown")
      *quantizer = (*o)["quantizer"].get<std::string>();
    if (o->contains("tau") && (*o)["tau"].is_number() && *tau == 0) *tau = (*o)["tau"].get<double>();
  }
}

Data load(const TrainOptions& o, bool need_oracle, bool need_dmg, bool label_is_kv, std::FILE* log) {
  Data d;
  d.features = o.features.empty() ? default_controller_features() : o.features;
  const auto& known = feature_names();
  for (const std::string& f : d.features) {
    if (std::find(known.begin(), known.end(), f) == known.end()) {
      std::string list;
      for (const std::string& k : known) list += (list.empty() ? "" : ", ") + k;
      throw Error("--features: '" + f + "' is not a feature the engine computes at generation time (" + list +
                  ")");
    }
    if (std::count(d.features.begin(), d.features.end(), f) > 1)
      throw Error("--features: '" + f + "' appears twice");
  }
  if (o.csvs.empty()) throw Error("train: no --csv given");
  double sidecar_tau = 0;
  for (size_t ci = 0; ci < o.csvs.size(); ++ci) {
    const std::string& path = o.csvs[ci];
    const CsvTable t = read_csv_table(path);
    auto col = [&](const std::string& name) {
      const int c = t.column(name);
      if (c < 0) throw Error(path + ": the CSV lacks the column '" + name + "'");
      return static_cast<size_t>(c);
    };
    const size_t split_col = col("split");
    (void)split_col;
    std::vector<size_t> fcols;
    for (const std::string& f : d.features) fcols.push_back(col(f));
    const size_t kv_col = col("kv_bits");
    const int oracle_col = t.column("oracle_bits");
    if (need_oracle && oracle_col < 0 && !need_dmg && t.column("dmg2") < 0)
      throw Error(path + ": the CSV lacks the column 'oracle_bits'");
    const bool dmg_here = t.column("dmg2") >= 0 && t.column("dmg4") >= 0 && t.column("dmg8") >= 0;
    if (need_dmg && !dmg_here) {
      for (const char* c : {"dmg2", "dmg4", "dmg8"}) col(c);  // names the missing one
    }
    const bool proxy_here = t.column("proxy2") >= 0 && t.column("proxy4") >= 0 && t.column("proxy8") >= 0;
    const bool recv_here = t.column("recv") >= 0;
    if (ci == 0) {
      d.has_dmg = dmg_here;
      d.has_proxy = proxy_here;
      d.has_recv = recv_here;
    } else {
      d.has_dmg = d.has_dmg && dmg_here;
      d.has_proxy = d.has_proxy && proxy_here;
      d.has_recv = d.has_recv && recv_here;
    }
    std::string q;
    double tau = 0;
    read_sidecar(path, &q, &tau);
    if (ci == 0) {
      d.quantizer = q;
      sidecar_tau = tau;
    } else {
      if (q != d.quantizer)
        throw Error(path + ": labels made with quantizer '" + q + "', " + o.csvs[0] + "'s with '" +
                    d.quantizer + "'");
      if (tau != sidecar_tau && o.tau == 0)
        throw Error(path + ": its sidecar's tau " + fmt("%g", tau) + " differs from " + o.csvs[0] +
                    "'s; give --tau");
    }
    for (size_t r = 0; r < t.rows(); ++r) {
      const std::string& s = t.split[r];
      int sp = -1;
      for (int k = 0; k < 3; ++k)
        if (s == kSplitNames[k]) sp = k;
      if (sp < 0)
        throw Error(path + ": row " + std::to_string(r + 1) + ": split '" + s +
                    "' is not train, val or test");
      d.split.push_back(sp);
      for (size_t c : fcols) d.x.push_back(t.values[c][r]);
      auto cls = [&](size_t c, const char* name) {
        const double v = t.values[c][r];
        const int k = v == std::floor(v) && std::abs(v) < 1e6 ? width_class(static_cast<int>(v)) : -1;
        if (k < 0)
          throw Error(path + ": row " + std::to_string(r + 1) + ": " + name + " = " + fmt("%g", v) +
                      " is not a width class (2, 4, 8, 16)");
        return k;
      };
      d.kv.push_back(cls(kv_col, "kv_bits"));
      if (oracle_col >= 0) d.label.push_back(cls(static_cast<size_t>(oracle_col), "oracle_bits"));
      if (dmg_here) {
        std::array<double, 3> g{};
        for (int k = 0; k < 3; ++k) {
          g[static_cast<size_t>(k)] = t.values[col("dmg" + std::to_string(kWidths[k]))][r];
          if (g[static_cast<size_t>(k)] < 0)
            throw Error(path + ": row " + std::to_string(r + 1) + ": dmg" + std::to_string(kWidths[k]) +
                        " is negative (a KL divergence is not)");
        }
        d.dmg.push_back(g);
      }
      if (proxy_here) {
        std::array<double, 3> g{};
        for (int k = 0; k < 3; ++k)
          g[static_cast<size_t>(k)] = t.values[col("proxy" + std::to_string(kWidths[k]))][r];
        d.proxy.push_back(g);
      }
      if (recv_here) d.recv.push_back(t.values[col("recv")][r]);
    }
    if (oracle_col < 0) d.label.resize(d.split.size(), -1);
    if (!dmg_here) d.dmg.resize(d.split.size());
    if (!proxy_here) d.proxy.resize(d.split.size());
    if (!recv_here) d.recv.resize(d.split.size());
    d.csvs.push_back({path, sha256_file(path), static_cast<int64_t>(t.rows())});
  }
  d.n = d.split.size();
  d.tau = o.tau > 0 ? o.tau : (sidecar_tau > 0 ? sidecar_tau : 0.004);
  if (label_is_kv) {
    d.label = d.kv;
    d.label_desc = "kv_bits (the width the collecting policy chose)";
  } else if (d.has_dmg) {
    // The labels at tau, from the measured damage: equal to collect's oracle_bits at its own tau.
    int64_t differ = 0;
    bool had_column = !d.label.empty() && d.label[0] >= 0;
    for (size_t i = 0; i < d.n; ++i) {
      const int c = oracle_class(d.dmg[i], d.tau);
      if (had_column && d.label[i] != c) ++differ;
      d.label[i] = c;
    }
    d.label_desc =
        "oracle at tau = " + fmt("%g", d.tau) + " (smallest b in 2, 4, 8 with dmg_b <= tau, else 16)";
    if (had_column && differ && log && (sidecar_tau == 0 || d.tau == sidecar_tau))
      std::fprintf(log, "train: note: %lld rows' oracle_bits differ from the label recomputed at tau %g\n",
                   static_cast<long long>(differ), d.tau);
  } else {
    d.label_desc = "the oracle_bits column";
  }
  if (!label_is_kv && !d.label.empty() && d.label[0] < 0)
    throw Error(o.csvs[0] + ": the CSV lacks the column 'oracle_bits'");
  for (int sp = 0; sp < 2; ++sp)
    if (std::count(d.split.begin(), d.split.end(), sp) == 0)
      throw Error(o.csvs[0] + (o.csvs.size() > 1 ? " (and the other CSVs)" : "") + ": no rows in the '" +
                  kSplitNames[sp] + "' split");
  return d;
}

struct Candidate {
  std::string target;
  ControllerModel model;
  FitResult fit;
  std::array<std::vector<int>, 3> truth, pred;                          // per split, class indices
  std::array<std::vector<std::array<double, 3>>, 3> log_dmg, meas_dmg;  // damage: per split
  std::array<ClassMetrics, 3> metrics;
};

std::vector<size_t> rows_of(const Data& d, int sp) {
  std::vector<size_t> r;
  for (size_t i = 0; i < d.n; ++i)
    if (d.split[i] == sp) r.push_back(i);
  return r;
}

Candidate train_target(const Data& d, const std::string& target, const TrainOptions& o, std::FILE* log) {
  Candidate c;
  c.target = target;
  ControllerModel& m = c.model;
  m.target = target;
  m.features = d.features;
  m.tau = d.tau;
  m.quantizer = d.quantizer;
  m.csvs = d.csvs;
  const size_t nf = d.features.size();
  const std::vector<size_t> tr = rows_of(d, 0);
  // Feature normalisation: training-split mean and (population) standard deviation; 1 when constant.
  m.mean.assign(nf, 0.0);
  m.std.assign(nf, 0.0);
  for (size_t i : tr)
    for (size_t f = 0; f < nf; ++f) m.mean[f] += d.x[i * nf + f];
  for (double& v : m.mean) v /= static_cast<double>(tr.size());
  for (size_t i : tr)
    for (size_t f = 0; f < nf; ++f) m.std[f] += (d.x[i * nf + f] - m.mean[f]) * (d.x[i * nf + f] - m.mean[f]);
  for (double& v : m.std) v = v > 0 ? std::sqrt(v / static_cast<double>(tr.size())) : 1.0;
  m.min.assign(nf, std::numeric_limits<double>::infinity());
  m.max.assign(nf, -std::numeric_limits<double>::infinity());
  for (size_t i : tr)
    for (size_t f = 0; f < nf; ++f) {
      m.min[f] = std::min(m.min[f], d.x[i * nf + f]);
      m.max[f] = std::max(m.max[f], d.x[i * nf + f]);
    }
  const bool damage = target == "damage";
  auto log_dmg = [&](size_t i, size_t k) { return std::log(d.dmg[i][k] + kDamageOffset); };
  if (damage) {
    m.target_mean.assign(3, 0.0);
    m.target_std.assign(3, 0.0);
    for (size_t i : tr)
      for (size_t k = 0; k < 3; ++k) m.target_mean[k] += log_dmg(i, k);
    for (double& v : m.target_mean) v /= static_cast<double>(tr.size());
    for (size_t i : tr)
      for (size_t k = 0; k < 3; ++k)
        m.target_std[k] += (log_dmg(i, k) - m.target_mean[k]) * (log_dmg(i, k) - m.target_mean[k]);
    for (double& v : m.target_std) v = v > 0 ? std::sqrt(v / static_cast<double>(tr.size())) : 1.0;
    round_for_file(m);  // the targets are standardised with the statistics the file stores
  }
  auto dataset = [&](int sp) {
    Dataset ds;
    ds.n_in = static_cast<int>(nf);
    ds.n_targets = damage ? 3 : 0;
    for (size_t i : rows_of(d, sp)) {
      for (size_t f = 0; f < nf; ++f)
        ds.x.push_back((std::clamp(d.x[i * nf + f], m.min[f], m.max[f]) - m.mean[f]) / m.std[f]);
      if (damage) {
        for (size_t k = 0; k < 3; ++k) ds.y.push_back((log_dmg(i, k) - m.target_mean[k]) / m.target_std[k]);
      } else {
        ds.label.push_back(target == "kv_bits" ? d.kv[i] : d.label[i]);
      }
    }
    return ds;
  };
  if (!damage) round_for_file(m);
  const Dataset train = dataset(0), val = dataset(1);
  std::vector<int> sizes{static_cast<int>(nf)};
  for (int h : o.hidden) sizes.push_back(h);
  sizes.push_back(damage ? 3 : 4);
  m.net = Mlp(sizes);
  const std::array<std::vector<size_t>, 3> split_rows{rows_of(d, 0), rows_of(d, 1), rows_of(d, 2)};
  // Per epoch: the implied class's accuracy on train and val, and val macro-F1 (the curve's extra columns).
  auto eval_split = [&](const ControllerModel& cm, int sp, std::vector<int>* pred) {
    ControllerPredictor p(cm);
    std::vector<int> truth;
    pred->clear();
    for (size_t i : split_rows[static_cast<size_t>(sp)]) {
      pred->push_back(width_class(p.predict(d.x.data() + i * nf)));
      truth.push_back(d.label[i]);
    }
    return class_metrics(truth, *pred);
  };
  auto epoch_metrics = [&](const Mlp& net) {
    ControllerModel cm = m;
    cm.net = net;
    std::vector<int> pred;
    const ClassMetrics a = eval_split(cm, 0, &pred);
    const ClassMetrics b = eval_split(cm, 1, &pred);
    return std::vector<double>{a.accuracy, b.accuracy, b.macro_f1};
  };
  if (log)
    std::fprintf(log, "train: target %s, %zu train / %zu val rows, net", target.c_str(), train.rows(),
                 val.rows());
  if (log)
    for (size_t k = 0; k < sizes.size(); ++k) std::fprintf(log, "%s%d", k ? "-" : " ", sizes[k]);
  if (log) std::fprintf(log, "\n");
  c.fit = fit(m.net, damage ? Loss::kMse : Loss::kCrossEntropy, train, val, o.fit, epoch_metrics);
  round_for_file(m);
  for (int sp = 0; sp < 3; ++sp) {
    const size_t s = static_cast<size_t>(sp);
    ControllerPredictor p(m);
    for (size_t i : split_rows[s]) {
      c.pred[s].push_back(width_class(p.predict(d.x.data() + i * nf)));
      c.truth[s].push_back(d.label[i]);
      if (damage) {
        c.log_dmg[s].push_back(p.log_damage());
        c.meas_dmg[s].push_back(d.dmg[i]);
      }
    }
    c.metrics[s] = class_metrics(c.truth[s], c.pred[s]);
  }
  if (log)
    std::fprintf(log, "train: %s: best epoch %d of %d, val loss %.5f, val accuracy %.4f, macro-F1 %.4f\n",
                 target.c_str(), c.fit.best_epoch, c.fit.epochs_run, c.fit.best_val_loss,
                 c.metrics[1].accuracy, c.metrics[1].macro_f1);
  return c;
}

json metrics_json(const ClassMetrics& m) {
  json j;
  j["rows"] = m.n;
  j["accuracy"] = round9(m.accuracy);
  j["macro_f1"] = round9(m.macro_f1);
  j["mean_width"] = round9(m.mean_width);
  json per = json::object();
  for (size_t c = 0; c < 4; ++c)
    per[std::to_string(kWidths[c])] = {{"support", m.support[c]},
                                       {"predicted", m.predicted[c]},
                                       {"precision", round9(m.precision[c])},
                                       {"recall", round9(m.recall[c])},
                                       {"f1", round9(m.f1[c])}};
  j["per_class"] = per;
  j["confusion"] = m.confusion;
  return j;
}

std::string per_class_md(const ClassMetrics& m) {
  std::ostringstream s;
  s << "| class | support | predicted | precision | recall | F1 |\n| ---: | ---: | ---: | ---: | ---: | ---: "
       "|\n";
  for (size_t c = 0; c < 4; ++c)
    s << "| " << kWidths[c] << " | " << m.support[c] << " | " << m.predicted[c] << " | " << f4(m.precision[c])
      << " | " << f4(m.recall[c]) << " | " << f4(m.f1[c]) << " |\n";
  s << "\nconfusion (rows: label, columns: predicted)\n\n| label \\ pred | 2 | 4 | 8 | 16 |\n| ---: | ---: | "
       "---: | ---: | ---: |\n";
  for (size_t c = 0; c < 4; ++c) {
    s << "| " << kWidths[c];
    for (size_t k = 0; k < 4; ++k) s << " | " << m.confusion[c][k];
    s << " |\n";
  }
  return s.str();
}

std::vector<double> column(const std::vector<std::array<double, 3>>& v, size_t k, bool log_it = false) {
  std::vector<double> out;
  for (const auto& a : v) out.push_back(log_it ? std::log(a[k] + kDamageOffset) : a[k]);
  return out;
}

constexpr std::array<double, 4> kLadderBits{3.0, 5.0, 9.0, 16.0};

// Per-class costs (ControllerPredictor::cost) of the rows of one split.
std::vector<std::array<double, 4>> split_costs(const ControllerModel& m, const Data& d, int sp) {
  std::vector<std::array<double, 4>> costs;
  ControllerPredictor p(m);
  for (size_t i = 0; i < d.n; ++i)
    if (d.split[i] == sp) {
      p.predict(d.x.data() + i * m.features.size());
      costs.push_back(p.cost());
    }
  return costs;
}

size_t lagrangian_class(const std::array<double, 4>& c, double lambda) {
  size_t best = 0;
  for (size_t k = 1; k < 4; ++k)
    if (c[k] + lambda * kLadderBits[k] < c[best] + lambda * kLadderBits[best]) best = k;
  return best;
}

// The smallest lambda (bisection on log lambda) at which argmin_c cost_c + lambda * bits_c averages <= B
// over the rows (the mean falls as lambda grows).
double lambda_for_budget(const std::vector<std::array<double, 4>>& costs, double b) {
  auto mean_bits = [&](double lambda) {
    double s = 0;
    for (const auto& c : costs) s += kLadderBits[lagrangian_class(c, lambda)];
    return s / static_cast<double>(costs.size());
  };
  double lo = std::log(1e-12), hi = std::log(1e6);
  for (int it = 0; it < 60; ++it) {
    const double mid = 0.5 * (lo + hi);
    (mean_bits(std::exp(mid)) <= b ? hi : lo) = mid;
  }
  return std::exp(hi);
}

// For budgets 3.0, 3.25, ..., 16 (the default ladder's bits), the lambda that meets B on the training rows.
std::vector<std::pair<double, double>> fit_lambda_table(const ControllerModel& m, const Data& d) {
  const std::vector<std::array<double, 4>> costs = split_costs(m, d, 0);
  std::vector<std::pair<double, double>> table;
  for (int q = 12; q <= 64; ++q) table.emplace_back(q * 0.25, lambda_for_budget(costs, q * 0.25));
  return table;
}

// Budgets at which --target auto compares the candidates, and the measured damage a candidate's
// Lagrangian choice costs on the validation rows at each (lambda fitted on those rows: the ranking's
// quality at exactly B, bits as the default ladder counts them). Damage of 16 bits: 0.
constexpr double kAutoBudgets[4] = {3.5, 4.0, 5.0, 6.0};

struct BudgetScore {
  double bits = 0, damage = 0;
};

BudgetScore budget_score(const ControllerModel& m, const Data& d, int sp, double b) {
  const std::vector<std::array<double, 4>> costs = split_costs(m, d, sp);
  const double lambda = lambda_for_budget(costs, b);
  BudgetScore s;
  size_t j = 0;
  for (size_t i = 0; i < d.n; ++i)
    if (d.split[i] == sp) {
      const size_t k = lagrangian_class(costs[j++], lambda);
      s.bits += kLadderBits[k];
      s.damage += k < 3 ? d.dmg[i][k] : 0.0;
    }
  s.bits /= static_cast<double>(costs.size());
  s.damage /= static_cast<double>(costs.size());
  return s;
}

// Random mixing of the two ladder classes around B (the baseline): its expected damage on the rows.
BudgetScore random_score(const Data& d, int sp, double b) {
  size_t lo = 0;
  while (lo + 1 < 3 && kLadderBits[lo + 1] <= b) ++lo;
  const double p = std::min(1.0, (b - kLadderBits[lo]) / (kLadderBits[lo + 1] - kLadderBits[lo]));
  BudgetScore s;
  int64_t n = 0;
  for (size_t i = 0; i < d.n; ++i)
    if (d.split[i] == sp) {
      const double hi_dmg = lo + 1 < 3 ? d.dmg[i][lo + 1] : 0.0;
      s.damage += (1 - p) * d.dmg[i][lo] + p * hi_dmg;
      ++n;
    }
  s.bits = b;
  s.damage /= static_cast<double>(n);
  return s;
}

}  // namespace

std::vector<std::string> default_controller_features() { return feature_names(); }

TrainResult train_controller(const TrainOptions& o, std::FILE* log) {
  const std::string& tg = o.target;
  if (tg != "auto" && tg != "oracle_bits" && tg != "kv_bits" && tg != "damage")
    throw Error("--target '" + tg + "': use oracle_bits, kv_bits, damage or auto");
  for (int h : o.hidden)
    if (h < 1 || h > 4096) throw Error("--hidden: layer sizes must be 1..4096");
  const bool need_dmg = tg == "damage" || tg == "auto";
  const Data d = load(o, tg != "kv_bits", need_dmg, tg == "kv_bits", log);

  std::vector<Candidate> cands;
  if (tg == "auto") {
    cands.push_back(train_target(d, "damage", o, log));
    cands.push_back(train_target(d, "oracle_bits", o, log));
  } else {
    cands.push_back(train_target(d, tg, o, log));
  }
  // auto: the candidate whose budgeted choice costs less measured damage on the validation rows wins,
  // by the mean over the budgets kAutoBudgets of log(damage): in the engine the controller's costs are
  // traded against bits, so the ranking of its costs is what matters. A tie goes to damage.
  size_t win = 0;
  std::string note = "target " + cands[0].target;
  std::vector<std::vector<BudgetScore>> scores(cands.size());
  if (d.has_dmg)
    for (size_t k = 0; k < cands.size(); ++k)
      for (double b : kAutoBudgets) scores[k].push_back(budget_score(cands[k].model, d, 1, b));
  if (cands.size() == 2) {
    double log_ratio = 0;  // mean log(damage of oracle_bits / damage of damage)
    for (size_t i = 0; i < scores[0].size(); ++i)
      log_ratio += std::log(std::max(scores[1][i].damage, 1e-300) / std::max(scores[0][i].damage, 1e-300));
    log_ratio /= static_cast<double>(scores[0].size());
    win = log_ratio < 0 ? 1 : 0;
    note = "auto: " + cands[win].target +
           " won (validation damage at equal budgets 3.5, 4, 5, 6 bits: oracle_bits / damage = " +
           fmt("%.3f", std::exp(log_ratio)) + " in geometric mean, the lower wins, a tie goes to damage; " +
           "validation macro-F1 without a budget: damage " + f4(cands[0].metrics[1].macro_f1) + ", oracle_bits " +
           f4(cands[1].metrics[1].macro_f1) + ")";
  }
  Candidate& c = cands[win];
  TrainResult r;
  r.note = note;

  // Baselines: the majority class of the training labels, and the rule (the kv_bits column).
  std::array<int64_t, 4> counts{};
  for (size_t i = 0; i < d.n; ++i)
    if (d.split[i] == 0) ++counts[static_cast<size_t>(d.label[i])];
  const int majority = static_cast<int>(std::max_element(counts.begin(), counts.end()) - counts.begin());
  std::array<ClassMetrics, 3> maj, rule, label_as_pred;
  for (int sp = 0; sp < 3; ++sp) {
    std::vector<int> truth, mp, rp;
    for (size_t i = 0; i < d.n; ++i)
      if (d.split[i] == sp) {
        truth.push_back(d.label[i]);
        mp.push_back(majority);
        rp.push_back(d.kv[i]);
      }
    maj[static_cast<size_t>(sp)] = class_metrics(truth, mp);
    rule[static_cast<size_t>(sp)] = class_metrics(truth, rp);
    label_as_pred[static_cast<size_t>(sp)] = class_metrics(truth, truth);
  }

  // Report.
  const ControllerModel& m = c.model;
  size_t n_params = m.net.params().size();
  std::ostringstream md;
  md << "# Controller training report\n\n";
  md << "- target: **" << c.target << "**" << (cands.size() == 2 ? " (" + note + ")" : "") << "\n";
  md << "- labels: " << d.label_desc << "\n";
  md << "- features:";
  for (size_t k = 0; k < m.features.size(); ++k) md << (k ? ", " : " ") << m.features[k];
  md << "\n- net:";
  for (size_t k = 0; k < m.net.sizes().size(); ++k) md << (k ? "-" : " ") << m.net.sizes()[k];
  md << " (ReLU), " << n_params << " parameters; Adam lr " << fmt("%g", o.fit.lr) << ", batch " << o.fit.batch
     << ", seed " << o.fit.seed << "; best epoch " << c.fit.best_epoch << " of " << c.fit.epochs_run
     << " (early stopping on the validation loss, patience " << o.fit.patience << ", at most " << o.fit.epochs
     << " epochs)\n";
  md << "- quantizer of the labels: " << m.quantizer << "\n- data:";
  for (const TrainingCsv& t : d.csvs)
    md << " " << t.path << " (" << t.rows << " rows, sha256 " << t.sha256 << ")";
  md << "\n\n## Summary\n\n";
  md << "Model = the controller's own choice (no budget). Majority = the training split's most common label ("
     << kWidths[majority] << "). Rule = the kv_bits column (the policy that ran during collect).\n\n";
  md << "| split | rows | model acc | model macro-F1 | model mean width | majority acc | majority macro-F1 "
        "| rule acc | rule macro-F1 | rule mean width | label mean width |\n";
  md << "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n";
  for (size_t sp = 0; sp < 3; ++sp)
    md << "| " << kSplitNames[sp] << " | " << c.metrics[sp].n << " | " << f4(c.metrics[sp].accuracy) << " | "
       << f4(c.metrics[sp].macro_f1) << " | " << fmt("%.3f", c.metrics[sp].mean_width) << " | "
       << f4(maj[sp].accuracy) << " | " << f4(maj[sp].macro_f1) << " | " << f4(rule[sp].accuracy) << " | "
       << f4(rule[sp].macro_f1) << " | " << fmt("%.3f", rule[sp].mean_width) << " | "
       << fmt("%.3f", label_as_pred[sp].mean_width) << " |\n";
  if (cands.size() == 2) {
    md << "\nBoth candidates of `--target auto`:\n\n| target | val acc | val macro-F1 | test acc | test "
          "macro-F1 | best epoch |\n"
          "| --- | ---: | ---: | ---: | ---: | ---: |\n";
    for (const Candidate& k : cands)
      md << "| " << k.target << " | " << f4(k.metrics[1].accuracy) << " | " << f4(k.metrics[1].macro_f1)
         << " | " << f4(k.metrics[2].accuracy) << " | " << f4(k.metrics[2].macro_f1) << " | "
         << k.fit.best_epoch << " |\n";
  }
  json rep;
  rep["target"] = c.target;
  rep["note"] = note;
  rep["labels"] = d.label_desc;
  rep["majority_class"] = kWidths[majority];
  if (d.has_dmg) {
    md << "\n## Damage at a budget\n\nMean measured damage (nats, dmg of the chosen width, 0 at 16 bits) when each "
          "candidate's costs go through the Lagrangian at exactly B stored bits per element (lambda fitted on the "
          "split's rows, ladder 3 / 5 / 9 / 16), against random mixing of the two classes around B (its expected "
          "damage). `auto` decides on the validation rows.\n\n| split | B |";
    for (const Candidate& k : cands) md << " " << k.target << " |";
    md << " random |\n| --- | ---: |";
    for (size_t k = 0; k <= cands.size(); ++k) md << " ---: |";
    md << "\n";
    for (int sp = 1; sp <= 2; ++sp)
      for (size_t i = 0; i < std::size(kAutoBudgets); ++i) {
        if (sp == 2 && std::count(d.split.begin(), d.split.end(), 2) == 0) break;
        md << "| " << kSplitNames[sp] << " | " << fmt("%g", kAutoBudgets[i]) << " |";
        for (size_t k = 0; k < cands.size(); ++k) {
          const BudgetScore bs = sp == 1 ? scores[k][i] : budget_score(cands[k].model, d, 2, kAutoBudgets[i]);
          md << " " << fmt("%.5f", bs.damage) << " (" << fmt("%.2f", bs.bits) << " bits) |";
          rep["budget_damage"][kSplitNames[sp]][fmt("%g", kAutoBudgets[i])][cands[k].target] = round9(bs.damage);
        }
        const double rnd = random_score(d, sp, kAutoBudgets[i]).damage;
        md << " " << fmt("%.5f", rnd) << " |\n";
        rep["budget_damage"][kSplitNames[sp]][fmt("%g", kAutoBudgets[i])]["random"] = round9(rnd);
      }
  }
  for (size_t sp = 0; sp < 3; ++sp) {
    json s;
    s["model"] = metrics_json(c.metrics[sp]);
    s["majority"] = metrics_json(maj[sp]);
    s["rule"] = metrics_json(rule[sp]);
    rep["splits"][kSplitNames[sp]] = s;
  }
  for (const Candidate& k : cands)
    rep["candidates"][k.target] = {{"val", metrics_json(k.metrics[1])},
                                   {"test", metrics_json(k.metrics[2])},
                                   {"best_epoch", k.fit.best_epoch},
                                   {"epochs_run", k.fit.epochs_run},
                                   {"best_val_loss", round9(k.fit.best_val_loss)}};
  for (size_t sp = 0; sp < 3; ++sp) {
    md << "\n## " << kSplitNames[sp] << "\n\nmodel: accuracy " << f4(c.metrics[sp].accuracy) << ", macro-F1 "
       << f4(c.metrics[sp].macro_f1) << "\n\n"
       << per_class_md(c.metrics[sp]);
    md << "\nrule (kv_bits): accuracy " << f4(rule[sp].accuracy) << ", macro-F1 " << f4(rule[sp].macro_f1)
       << "\n\n"
       << per_class_md(rule[sp]);
  }
  // Damage: rank correlation of the predicted and the measured damage per width, against the proxies.
  if (c.target == "damage" || d.has_dmg) {
    const Candidate* dc = nullptr;
    for (const Candidate& k : cands)
      if (k.target == "damage") dc = &k;
    if (dc) {
      md << "\n## Damage: Spearman rank correlation with the measured dmg_b\n\n"
            "| split | width | model | proxy_b (collect) | recv |\n| --- | ---: | ---: | ---: | ---: |\n";
      for (size_t sp = 0; sp < 3; ++sp) {
        std::vector<std::array<double, 3>> prox, meas;
        std::vector<double> rv;
        for (size_t i = 0; i < d.n; ++i)
          if (d.split[i] == static_cast<int>(sp)) {
            prox.push_back(d.proxy[i]);
            meas.push_back(d.dmg[i]);
            rv.push_back(d.recv[i]);
          }
        for (size_t k = 0; k < 3; ++k) {
          const std::vector<double> mk = column(meas, k);
          const double model = rank_correlation(column(dc->log_dmg[sp], k), mk);
          const double proxy = d.has_proxy ? rank_correlation(column(prox, k), mk) : std::nan("");
          const double recv = d.has_recv ? rank_correlation(rv, mk) : std::nan("");
          md << "| " << kSplitNames[sp] << " | " << kWidths[k] << " | " << f4(model) << " | " << f4(proxy)
             << " | " << f4(recv) << " |\n";
          auto num = [](double v) { return std::isnan(v) ? json(nullptr) : json(round9(v)); };
          rep["damage_spearman"][kSplitNames[sp]][std::to_string(kWidths[k])] = {
              {"model", num(model)}, {"proxy", num(proxy)}, {"recv", num(recv)}};
        }
      }
    }
  }
  r.report_md = md.str();
  r.report = rep;

  std::ostringstream curve;
  curve << "epoch,train_loss,val_loss,train_accuracy,val_accuracy,val_macro_f1\n";
  for (const EpochRecord& e : c.fit.curve) {
    curve << e.epoch << ',' << fmt("%.9g", e.train_loss) << ',' << fmt("%.9g", e.val_loss);
    for (double v : e.extra) curve << ',' << fmt("%.9g", v);
    curve << '\n';
  }
  r.curve_csv = curve.str();

  r.model = c.model;
  r.model.lambda_table = fit_lambda_table(r.model, d);
  round_for_file(r.model);
  json tr;
  tr["command"] = o.command;
  tr["target_requested"] = tg;
  tr["hidden"] = o.hidden;
  tr["epochs"] = o.fit.epochs;
  tr["patience"] = o.fit.patience;
  tr["batch"] = o.fit.batch;
  tr["lr"] = o.fit.lr;
  tr["seed"] = o.fit.seed;
  tr["labels"] = d.label_desc;
  tr["best_epoch"] = c.fit.best_epoch;
  tr["epochs_run"] = c.fit.epochs_run;
  r.model.training = tr;
  json met;
  met["note"] = note;
  for (size_t sp = 0; sp < 3; ++sp)
    met[kSplitNames[sp]] = {{"rows", c.metrics[sp].n},
                            {"accuracy", round9(c.metrics[sp].accuracy)},
                            {"macro_f1", round9(c.metrics[sp].macro_f1)},
                            {"mean_width", round9(c.metrics[sp].mean_width)},
                            {"majority_accuracy", round9(maj[sp].accuracy)},
                            {"rule_accuracy", round9(rule[sp].accuracy)},
                            {"rule_macro_f1", round9(rule[sp].macro_f1)}};
  r.model.metrics = met;
  return r;
}

void write_training_outputs(const TrainResult& r, const std::string& out) {
  save_controller(r.model, out);
  auto write = [](const std::string& path, const std::string& text) {
    std::ofstream f(path, std::ios::binary | std::ios::trunc);
    if (!f) throw Error(path + ": cannot create file");
    f << text;
    if (!f) throw Error(path + ": write failed");
  };
  write(out + ".report.md", r.report_md);
  write(out + ".report.json", r.report.dump(1) + "\n");
  write(out + ".curve.csv", r.curve_csv);
}

}  // namespace kvd
