// kvdial stats: the seed's summary of a collected CSV (means; std, min, max; correlations) plus the
// distributions of kv_bits and oracle_bits and oracle_bits' correlation with each feature.
#pragma once
#include <CLI/CLI.hpp>
#include <string>

namespace kvd::cli {

struct StatsArgs {
  std::string file;
};

void add_stats_options(CLI::App* app, StatsArgs& a);
int run_stats(const StatsArgs& a);

}  // namespace kvd::cli
