// `kvdial info MODEL`: the overview of a GGUF file and whether (and how) kvdial runs it.
#pragma once
#include <CLI/CLI.hpp>
#include <string>

namespace kvd::cli {

struct InfoArgs {
  std::string model_path;
  bool tensors = false;
  bool metadata = false;
  CLI::App* cmd = nullptr;
};

void add_info_command(CLI::App& app, InfoArgs& a);
// Prints the overview; returns 0 when kvdial can run the file, 1 (after the overview) when it cannot.
int run_info(const InfoArgs& a);

}  // namespace kvd::cli
