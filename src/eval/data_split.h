// Which HellaSwag examples belong to a train/val/test split. The rows' own `split` field is HellaSwag's
// (every dev600 row says "val"), so the split is collect's: either the lists in a collect sidecar
// (<csv>.json, "split": {"train": [lines], ...}), or collect's rule applied to every example of the file
// (80/10/10 by a Fisher-Yates shuffle driven by mt19937_64(seed); the same as collect over the whole
// file with that seed).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "eval/hellaswag.h"

namespace kvd {

// collect's assignment of n examples: "train", "val" or "test" for each.
std::vector<std::string> split_examples(int n, uint64_t seed);

// The examples of one split ("" or "all": every example), in file order. sidecar, when not empty, is a
// collect sidecar whose lists decide. Throws kvd::Error for an unknown split name, an unreadable or
// malformed sidecar, or a selection with no example.
std::vector<HellaSwagExample> select_split(const std::vector<HellaSwagExample>& all, const std::string& split,
                                           uint64_t seed, const std::string& sidecar = "");

}  // namespace kvd
