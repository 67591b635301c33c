// kvdial collect: controller training data over HellaSwag or plain text (see eval/collect.h and docs/collect.md).
#pragma once
#include <string>

#include "cli/common.h"
#include "eval/collect.h"

namespace kvd::cli {

struct CollectArgs {
  EngineOptions eng;  // --kv-policy / --policy: the policy whose widths fill kv_bits (default rule)
  CollectOptions opt;
  bool no_labels = false;
};

void add_collect_options(CLI::App* app, CollectArgs& a);
int run_collect(CollectArgs a);

}  // namespace kvd::cli
