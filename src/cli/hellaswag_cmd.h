// kvdial hellaswag: multiple-choice accuracy (acc, acc_norm) with lm-evaluation-harness's rules under a
// KV policy, and, given --ref, the paired difference from a reference policy on the same rows.
#pragma once
#include <string>

#include "cli/common.h"

namespace kvd::cli {

struct HellaSwagArgs {
  EngineOptions eng;
  std::string data;
  std::string split;        // train, val, test or all (default)
  uint64_t split_seed = 0;  // collect's split rule
  std::string split_from;   // a collect sidecar whose lists decide the split
  int limit = 0;            // first N rows of the selection (0 = all)
  std::string ref;          // reference policy for the paired difference
  std::string rows_out;     // per-row log-likelihoods as JSON
};

// The data, split and row-limit options shared with compare.
void add_hellaswag_data_options(CLI::App* app, std::string& data, std::string& split, uint64_t& split_seed,
                                std::string& split_from, int& limit, bool data_required);
void add_hellaswag_options(CLI::App* app, HellaSwagArgs& a);
// make_engine, with a stage_only cache when there is a residual window (score_hellaswag needs it).
Engine make_scoring_engine(const EngineOptions& o, int ctx, std::shared_ptr<Model> model);
int run_hellaswag(const HellaSwagArgs& a);

}  // namespace kvd::cli
