// kvdial train: a controller from collected CSVs (docs/controller.md). Reads the rows and their split
// (the CSV's `split` column, by example), standardises the features with training-split statistics,
// trains the MLP (controller/mlp.h) on the target and reports accuracy, macro-F1, per-class precision and
// recall and the confusion matrix on train / val / test, against the majority class and the rule (the
// kv_bits column); for damage also Spearman per width, against the proxy columns.
#pragma once
#include <cstdio>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "controller/controller_file.h"
#include "controller/mlp.h"

namespace kvd {

// The features a controller sees by default: every TokenFeatures field known when the decision is made
// (feature_names()); nothing from the true next token, not the running policy's kv_bits.
std::vector<std::string> default_controller_features();

struct TrainOptions {
  std::vector<std::string> csvs;
  std::string target = "auto";        // oracle_bits, kv_bits, damage, or auto (damage vs oracle_bits)
  std::vector<std::string> features;  // empty: default_controller_features()
  std::vector<int> hidden{128, 64};
  FitOptions fit;
  double tau = 0;       // the label threshold; 0: the CSVs' sidecars' (else 0.004)
  std::string command;  // recorded in the file (how it was made)
};

struct TrainResult {
  ControllerModel model;
  std::string report_md;  // also printed
  nlohmann::json report;  // the same, as data
  std::string curve_csv;  // learning curve of the kept model
  std::string note;       // one line: which target won (auto) and why
};

// Throws kvd::Error naming the file for bad CSVs (missing column, non-numeric cell, no rows in a split).
TrainResult train_controller(const TrainOptions& o, std::FILE* log = nullptr);

// Writes out, out.report.md, out.report.json and out.curve.csv.
void write_training_outputs(const TrainResult& r, const std::string& out);

}  // namespace kvd
