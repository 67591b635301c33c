// Writing and checking controller files.
#include "controller/controller_file.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>

#include "policy/features.h"
#include "util/error.h"

namespace kvd {
namespace {

using nlohmann::json;

constexpr const char* kFormat = "kvdial-controller";
constexpr int kMaxLayers = 8;
constexpr int kMaxUnits = 4096;

json vec(const std::vector<double>& v) {
  json a = json::array();
  for (double x : v) a.push_back(x);
  return a;
}

// Checks on a parsed document; every failure names the file.
class Checker {
 public:
  explicit Checker(std::string name) : name_(std::move(name)) {}
  [[noreturn]] void fail(const std::string& what) const { throw Error(name_ + ": " + what); }

  const json& member(const json& obj, const char* key, const std::string& where) const {
    if (!obj.is_object()) fail(where + " is not an object");
    const auto it = obj.find(key);
    if (it == obj.end()) fail(where + " lacks \"" + key + "\"");
    return *it;
  }
  std::string string(const json& obj, const char* key, const std::string& where) const {
    const json& v = member(obj, key, where);
    if (!v.is_string()) fail(where + "." + key + " is not a string");
    return v.get<std::string>();
  }
  int64_t integer(const json& obj, const char* key, const std::string& where, int64_t lo, int64_t hi) const {
    const json& v = member(obj, key, where);
    if (!v.is_number_integer()) fail(where + "." + key + " is not an integer");
    const int64_t x = v.is_number_unsigned() && v.get<uint64_t>() > static_cast<uint64_t>(INT64_MAX)
                          ? INT64_MAX
                          : v.get<int64_t>();
    if (x < lo || x > hi)
      fail(where + "." + key + " = " + std::to_string(x) + " is outside " + std::to_string(lo) + ".." +
           std::to_string(hi));
    return x;
  }
  double number(const json& v, const std::string& where) const {
    if (!v.is_number()) fail(where + " is not a number");
    const double x = v.get<double>();
    if (!std::isfinite(x)) fail(where + " is not finite");
    return x;
  }
  double number(const json& obj, const char* key, const std::string& where) const {
    return number(member(obj, key, where), where + "." + key);
  }
  std::vector<double> numbers(const json& obj, const char* key, const std::string& where, size_t n) const {
    const json& v = member(obj, key, where);
    const std::string w = where + "." + key;
    if (!v.is_array()) fail(w + " is not an array");
    if (v.size() != n)
      fail(w + " has " + std::to_string(v.size()) + " values, expected " + std::to_string(n));
    std::vector<double> out;
    out.reserve(n);
    for (size_t i = 0; i < n; ++i) out.push_back(number(v[i], w + "[" + std::to_string(i) + "]"));
    return out;
  }

 private:
  std::string name_;
};

}  // namespace

double round9(double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.9g", v);
  return std::strtod(buf, nullptr);
}

void round_for_file(ControllerModel& m) {
  for (double& x : m.mean) x = round9(x);
  for (double& x : m.std) x = round9(x);
  for (double& x : m.min) x = round9(x);
  for (double& x : m.max) x = round9(x);
  for (double& x : m.target_mean) x = round9(x);
  for (double& x : m.target_std) x = round9(x);
  for (double& x : m.net.params()) x = round9(x);
  m.tau = round9(m.tau);
  for (auto& [b, l] : m.lambda_table) {
    b = round9(b);
    l = round9(l);
  }
}

double initial_lambda(const ControllerModel& m, double budget) {
  const auto& t = m.lambda_table;
  if (t.empty()) return m.is_damage() ? 1e-3 : 0.02;
  if (budget <= t.front().first) return t.front().second;
  if (budget >= t.back().first) return t.back().second;
  for (size_t i = 1; i < t.size(); ++i)
    if (budget <= t[i].first) {
      const double f = (budget - t[i - 1].first) / (t[i].first - t[i - 1].first);
      return std::exp((1 - f) * std::log(t[i - 1].second) + f * std::log(t[i].second));
    }
  return t.back().second;
}

std::string controller_to_json(const ControllerModel& m) {
  json j;
  j["format"] = kFormat;
  j["version"] = kControllerVersion;
  j["target"] = m.target;
  j["classes"] = kControllerClasses;
  j["features"] = m.features;
  j["normalization"] = {{"mean", vec(m.mean)}, {"std", vec(m.std)}, {"min", vec(m.min)}, {"max", vec(m.max)}};
  if (m.is_damage()) {
    j["output"] = {{"kind", "log_damage"},       {"widths", kDamageWidths},  {"offset", kDamageOffset},
                   {"mean", vec(m.target_mean)}, {"std", vec(m.target_std)}, {"tau", m.tau}};
  } else {
    j["output"] = {{"kind", "class_logits"}};
  }
  json layers = json::array();
  for (int l = 0; l < m.net.layers(); ++l) {
    const int in = m.net.sizes()[static_cast<size_t>(l)], out = m.net.sizes()[static_cast<size_t>(l) + 1];
    const double* w = m.net.weight(l);
    const double* b = m.net.bias(l);
    layers.push_back({{"in", in},
                      {"out", out},
                      {"activation", l + 1 < m.net.layers() ? "relu" : "linear"},
                      {"weights", vec(std::vector<double>(w, w + static_cast<size_t>(in) * out))},
                      {"bias", vec(std::vector<double>(b, b + out))}});
  }
  j["layers"] = layers;
  json lt = json::array();
  for (const auto& [b, l] : m.lambda_table) lt.push_back({b, l});
  j["lambda_table"] = lt;
  j["quantizer"] = m.quantizer;
  json data = json::array();
  for (const TrainingCsv& c : m.csvs)
    data.push_back({{"path", c.path}, {"sha256", c.sha256}, {"rows", c.rows}});
  j["training_data"] = data;
  j["training"] = m.training;
  j["metrics"] = m.metrics;
  return j.dump(1) + "\n";
}

void save_controller(const ControllerModel& m, const std::string& path) {
  const std::string text = controller_to_json(m);
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) throw Error(path + ": cannot create file");
  out << text;
  out.close();
  if (!out) throw Error(path + ": write failed");
}

ControllerModel parse_controller(const std::string& text, const std::string& name,
                                 const std::string& quantizer) {
  const Checker c(name);
  json j;
  try {
    j = json::parse(text);
  } catch (const json::exception& e) {
    std::string what = e.what();
    std::replace(what.begin(), what.end(), '\n', ' ');
    c.fail("not valid JSON (" + what + ")");
  }
  try {
    if (!j.is_object()) c.fail("not a JSON object");
    if (c.string(j, "format", "file") != kFormat)
      c.fail("\"format\" is not \"" + std::string(kFormat) + "\"");
    const int64_t version = c.integer(j, "version", "file", INT64_MIN, INT64_MAX);
    if (version != kControllerVersion)
      c.fail("unknown format version " + std::to_string(version) + " (this kvdial reads version " +
             std::to_string(kControllerVersion) + ")");
    ControllerModel m;
    m.target = c.string(j, "target", "file");
    if (m.target != "oracle_bits" && m.target != "kv_bits" && m.target != "damage")
      c.fail("unknown target '" + m.target + "' (oracle_bits, kv_bits or damage)");
    const json& classes = c.member(j, "classes", "file");
    if (classes != json(kControllerClasses)) c.fail("\"classes\" must be [2, 4, 8, 16]");

    const json& feats = c.member(j, "features", "file");
    if (!feats.is_array() || feats.empty()) c.fail("\"features\" is not a non-empty array of names");
    for (const json& f : feats) {
      if (!f.is_string()) c.fail("\"features\" holds a value that is not a string");
      const std::string s = f.get<std::string>();
      const auto& known = feature_names();
      if (std::find(known.begin(), known.end(), s) == known.end())
        c.fail("feature '" + s + "' is not one the engine computes at generation time");
      if (std::find(m.features.begin(), m.features.end(), s) != m.features.end())
        c.fail("feature '" + s + "' appears twice");
      m.features.push_back(s);
    }
    const size_t nf = m.features.size();
    const json& norm = c.member(j, "normalization", "file");
    m.mean = c.numbers(norm, "mean", "normalization", nf);
    m.std = c.numbers(norm, "std", "normalization", nf);
    m.min = c.numbers(norm, "min", "normalization", nf);
    m.max = c.numbers(norm, "max", "normalization", nf);
    for (size_t i = 0; i < nf; ++i) {
      if (!(m.std[i] > 0)) c.fail("normalization.std[" + std::to_string(i) + "] is not positive");
      if (!(m.min[i] <= m.max[i]))
        c.fail("normalization.min[" + std::to_string(i) + "] is above normalization.max[" +
               std::to_string(i) + "]");
    }

    const json& out = c.member(j, "output", "file");
    const std::string kind = c.string(out, "kind", "output");
    size_t n_out = kControllerClasses.size();
    if (m.is_damage()) {
      if (kind != "log_damage") c.fail("output.kind must be \"log_damage\" for target damage");
      if (c.member(out, "widths", "output") != json(kDamageWidths)) c.fail("output.widths must be [2, 4, 8]");
      if (c.number(out, "offset", "output") != kDamageOffset) c.fail("output.offset must be 1e-06");
      n_out = kDamageWidths.size();
      m.target_mean = c.numbers(out, "mean", "output", n_out);
      m.target_std = c.numbers(out, "std", "output", n_out);
      for (size_t i = 0; i < n_out; ++i)
        if (!(m.target_std[i] > 0)) c.fail("output.std[" + std::to_string(i) + "] is not positive");
      m.tau = c.number(out, "tau", "output");
      if (!(m.tau > 0)) c.fail("output.tau is not positive");
    } else if (kind != "class_logits") {
      c.fail("output.kind must be \"class_logits\" for target " + m.target);
    }

    const json& layers = c.member(j, "layers", "file");
    if (!layers.is_array() || layers.empty() || layers.size() > kMaxLayers)
      c.fail("\"layers\" must be an array of 1 to " + std::to_string(kMaxLayers) + " layers");
    std::vector<int> sizes{static_cast<int>(nf)};
    for (size_t l = 0; l < layers.size(); ++l) {
      const std::string w = "layers[" + std::to_string(l) + "]";
      const int64_t in = c.integer(layers[l], "in", w, 1, kMaxUnits);
      const int64_t o = c.integer(layers[l], "out", w, 1, kMaxUnits);
      if (in != sizes.back())
        c.fail(w + ".in = " + std::to_string(in) + " but the layer before gives " +
               std::to_string(sizes.back()) + (l == 0 ? " (the number of features)" : ""));
      const std::string act = c.string(layers[l], "activation", w);
      const bool last = l + 1 == layers.size();
      if (act != (last ? "linear" : "relu"))
        c.fail(w + ".activation must be \"" + std::string(last ? "linear" : "relu") + "\"");
      sizes.push_back(static_cast<int>(o));
    }
    if (static_cast<size_t>(sizes.back()) != n_out)
      c.fail("the last layer has " + std::to_string(sizes.back()) + " outputs, target " + m.target +
             " needs " + std::to_string(n_out));
    for (size_t l = 0; l < layers.size(); ++l) {  // sizes first: no allocation beyond what the file holds
      const std::string w = "layers[" + std::to_string(l) + "]";
      const json& wj = c.member(layers[l], "weights", w);
      const size_t nw = static_cast<size_t>(sizes[l]) * static_cast<size_t>(sizes[l + 1]);
      if (!wj.is_array() || wj.size() != nw)
        c.fail(w + ".weights must be an array of in x out = " + std::to_string(nw) + " numbers");
    }
    m.net = Mlp(sizes);
    for (size_t l = 0; l < layers.size(); ++l) {
      const std::string w = "layers[" + std::to_string(l) + "]";
      const size_t nw = static_cast<size_t>(sizes[l]) * static_cast<size_t>(sizes[l + 1]);
      const std::vector<double> wv = c.numbers(layers[l], "weights", w, nw);
      const std::vector<double> bv = c.numbers(layers[l], "bias", w, static_cast<size_t>(sizes[l + 1]));
      std::copy(wv.begin(), wv.end(), m.net.weight(static_cast<int>(l)));
      std::copy(bv.begin(), bv.end(), m.net.bias(static_cast<int>(l)));
    }

    if (j.contains("lambda_table")) {
      const json& lt = j["lambda_table"];
      if (!lt.is_array() || lt.size() > 256) c.fail("\"lambda_table\" must be an array of at most 256 pairs");
      for (size_t i = 0; i < lt.size(); ++i) {
        const std::string w = "lambda_table[" + std::to_string(i) + "]";
        if (!lt[i].is_array() || lt[i].size() != 2) c.fail(w + " is not a pair [budget, lambda]");
        const double b = c.number(lt[i][0], w + "[0]"), l = c.number(lt[i][1], w + "[1]");
        if (!(l > 0)) c.fail(w + ": lambda is not positive");
        if (i > 0 && !(b > m.lambda_table.back().first)) c.fail(w + ": budgets must increase");
        m.lambda_table.emplace_back(b, l);
      }
    }
    m.quantizer = c.string(j, "quantizer", "file");
    if (!quantizer.empty() && m.quantizer != "unknown" && m.quantizer != quantizer)
      c.fail("trained on labels made with quantizer '" + m.quantizer + "', the cache runs '" + quantizer +
             "'");
    const json& data = c.member(j, "training_data", "file");
    if (!data.is_array()) c.fail("\"training_data\" is not an array");
    for (size_t i = 0; i < data.size(); ++i) {
      const std::string w = "training_data[" + std::to_string(i) + "]";
      TrainingCsv t;
      t.path = c.string(data[i], "path", w);
      t.sha256 = c.string(data[i], "sha256", w);
      t.rows = c.integer(data[i], "rows", w, 0, INT64_MAX);
      m.csvs.push_back(t);
    }
    m.training = c.member(j, "training", "file");
    m.metrics = c.member(j, "metrics", "file");
    if (!m.training.is_object()) c.fail("\"training\" is not an object");
    if (!m.metrics.is_object()) c.fail("\"metrics\" is not an object");
    return m;
  } catch (const json::exception& e) {  // a type mismatch the checks above did not foresee
    std::string what = e.what();
    std::replace(what.begin(), what.end(), '\n', ' ');
    c.fail("malformed controller (" + what + ")");
  }
}

ControllerModel load_controller(const std::string& path, const std::string& quantizer) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(path + ": cannot open controller file");
  std::stringstream ss;
  ss << in.rdbuf();
  if (ss.str().empty()) throw Error(path + ": empty controller file");
  return parse_controller(ss.str(), path, quantizer);
}

}  // namespace kvd
