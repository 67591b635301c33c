// kvdial bench (llama-bench-shaped): see bench.cpp.
#pragma once
#include <string>

#include "cli/common.h"

namespace kvd::cli {

struct BenchArgs {
  EngineOptions eng;
  std::string n_prompt = "512";
  std::string n_gen = "128";
  std::string depth = "0";
  int reps = 3;
  std::string output = "md";
  std::string out_file;
  bool progress = false;
  bool warmup = true;  // one untimed run of each test first (llama-bench does the same)
};

void add_bench_options(CLI::App* app, BenchArgs& a);
int run_bench(const BenchArgs& a);

}  // namespace kvd::cli
