// The learned controller's file (JSON, docs/controller.md): format and version, the features in input
// order with their training-split normalisation, the MLP's layer shapes and weights, the target and
// classes, the training CSVs' SHA-256, the quantizer settings the labels were made with, and metrics.
// The loader checks everything and throws kvd::Error "FILE: problem" (fuzzed: fuzz/fuzz_controller.cpp).
#pragma once
#include <array>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "controller/mlp.h"

namespace kvd {

inline constexpr int kControllerVersion = 1;
inline constexpr std::array<int, 4> kControllerClasses{2, 4, 8, 16};
// The widths whose damage a "damage" controller predicts (16 bits has damage 0 by definition).
inline constexpr std::array<int, 3> kDamageWidths{2, 4, 8};
inline constexpr double kDamageOffset = 1e-6;  // outputs regress log(dmg_b + kDamageOffset)

struct TrainingCsv {
  std::string path;
  std::string sha256;
  int64_t rows = 0;
};

struct ControllerModel {
  // "oracle_bits" or "kv_bits": the net outputs logits of kControllerClasses;
  // "damage": the net outputs standardised log(dmg_b + kDamageOffset) for b in kDamageWidths.
  std::string target;
  std::vector<std::string> features;  // input order; names from feature_names() (policy/features.h)
  std::vector<double> mean, std;      // per feature, training split; input = (clamp(raw) - mean) / std
  // Per feature, the training split's range: inputs are clamped to it first, so that a ReLU net never
  // extrapolates (e.g. positions far beyond the training texts' lengths).
  std::vector<double> min, max;
  Mlp net;
  std::vector<double> target_mean, target_std;  // damage: per output, training split (0 and 1 otherwise)
  double tau = 0.004;                 // damage: the label threshold (smallest b with dmg_b <= tau, else 16)
  std::string quantizer = "unknown";  // the cache settings the labels were made with
  std::vector<TrainingCsv> csvs;
  // The Lagrangian's starting lambda per budget, fitted on the training split (optional): pairs
  // (budget B in stored bits, lambda) with increasing B; the learned policy interpolates log(lambda).
  std::vector<std::pair<double, double>> lambda_table;
  nlohmann::json training = nlohmann::json::object();  // options the file was trained with
  nlohmann::json metrics = nlohmann::json::object();   // summary of the training report

  bool is_damage() const { return target == "damage"; }
};

// Rounds to the nearest double that "%.9g" prints: every number of the file goes through it before
// saving, so that a loaded controller equals the one in memory bit for bit.
double round9(double v);
// Rounds the controller's numbers (normalisation, weights, targets' statistics) with round9.
void round_for_file(ControllerModel& m);

// The starting lambda for a budget: log-linear interpolation in lambda_table (clamped at its ends);
// without a table 1e-3 for damage (nats per bit), 0.02 for class models (probability per bit).
double initial_lambda(const ControllerModel& m, double budget);

std::string controller_to_json(const ControllerModel& m);  // the file's text (deterministic)
void save_controller(const ControllerModel& m, const std::string& path);

// Parses and checks a controller file's text; name is used in errors ("NAME: problem"). When
// quantizer is not empty it must equal the file's (a file that says "unknown" is accepted).
ControllerModel parse_controller(const std::string& text, const std::string& name,
                                 const std::string& quantizer = "");
ControllerModel load_controller(const std::string& path, const std::string& quantizer = "");

}  // namespace kvd
