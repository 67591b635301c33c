// kvdial train: a learned controller from collected CSVs (controller/train.h, docs/controller.md).
#pragma once
#include <CLI/CLI.hpp>
#include <string>
#include <vector>

#include "controller/train.h"

namespace kvd::cli {

struct TrainArgs {
  TrainOptions opt;
  std::string out;
  std::string features;  // comma-separated
  std::string hidden = "128,64";
};

void add_train_options(CLI::App* app, TrainArgs& a);
int run_train(TrainArgs a);

}  // namespace kvd::cli
