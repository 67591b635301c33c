// kvdial compare: every KV policy on exactly the same inputs (HellaSwag rows, their text, WikiText-2
// chunks), one report: next-token accuracy, KL and top-1 agreement against static:16, HellaSwag acc and
// acc_norm with the paired difference from static:16, perplexity, stored bits, KV bytes and peak RSS
// after a long context (each policy in its own process), decode latency and the controller's share.
// Markdown on the terminal and in -o, with the same data as CSV and JSON (compare_report.h).
#pragma once
#include <string>
#include <vector>

#include "cli/common.h"

namespace kvd::cli {

struct CompareArgs {
  EngineOptions eng;
  std::string policies = "static:16,static:8,static:4,static:2,rule";
  std::string data;
  std::string split;
  uint64_t split_seed = 0;
  std::string split_from;
  int limit = 0;
  std::string wiki;
  int wiki_ctx = 512;        // context of the first perplexity (reported as ppl_<ctx>)
  int wiki_chunks = 20;      // chunks of wiki_ctx tokens
  int wiki_chunks_2048 = 0;  // chunks of 2048 tokens (0 = skip)
  bool wiki_kl = false;      // also KL against static:16 on the WikiText chunks (doubles their cost)
  int mem_depth = 4096;      // tokens of context before the memory probe (0 = skip the probe)
  std::string out_dir = "results/compare";
  int sample_row = 0;             // index in the selection of the example whose per-token widths are dumped
  std::string mem_probe;          // internal: run only the memory probe of this policy and print JSON
  std::vector<std::string> argv;  // the command line, for the report and the memory probe's re-exec
};

void add_compare_options(CLI::App* app, CompareArgs& a);
int run_compare(const CompareArgs& a);

}  // namespace kvd::cli
