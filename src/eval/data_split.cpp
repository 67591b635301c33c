// Train/val/test selection of HellaSwag examples, collect's rule or a collect sidecar's lists.
#include "eval/data_split.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <numeric>
#include <random>
#include <set>

#include "util/error.h"

namespace kvd {

std::vector<std::string> split_examples(int n, uint64_t seed) {
  std::vector<int> order(static_cast<size_t>(n));
  std::iota(order.begin(), order.end(), 0);
  std::mt19937_64 rng(seed);
  for (int i = n - 1; i > 0; --i)
    std::swap(order[static_cast<size_t>(i)],
              order[static_cast<size_t>(rng() % static_cast<uint64_t>(i + 1))]);
  int n_val = static_cast<int>(std::lround(0.1 * n)), n_test = static_cast<int>(std::lround(0.1 * n));
  if (n >= 3) n_val = std::max(n_val, 1), n_test = std::max(n_test, 1);
  const int n_train = n - n_val - n_test;
  std::vector<std::string> split(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i)
    split[static_cast<size_t>(order[static_cast<size_t>(i)])] = i < n_train           ? "train"
                                                                : i < n_train + n_val ? "val"
                                                                                      : "test";
  return split;
}

std::vector<HellaSwagExample> select_split(const std::vector<HellaSwagExample>& all, const std::string& split,
                                           uint64_t seed, const std::string& sidecar) {
  if (split.empty() || split == "all") return all;
  if (split != "train" && split != "val" && split != "test")
    throw Error("--split '" + split + "': use train, val, test or all");
  std::vector<HellaSwagExample> out;
  if (!sidecar.empty()) {
    std::ifstream in(sidecar);
    if (!in) throw Error(sidecar + ": cannot open file");
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(in);
    } catch (const nlohmann::json::exception&) {
      throw Error(sidecar + ": not valid JSON");
    }
    if (!j.is_object() || !j.contains("split") || !j["split"].is_object())
      throw Error(sidecar + ": no \"split\" object (expected a collect sidecar)");
    std::set<int> lines;
    if (j["split"].contains(split)) {
      for (const auto& v : j["split"][split]) {
        if (!v.is_number_integer()) throw Error(sidecar + ": split lists must hold example line numbers");
        lines.insert(v.get<int>());
      }
    }
    for (const HellaSwagExample& ex : all)
      if (lines.count(ex.line)) out.push_back(ex);
    if (out.empty()) throw Error(sidecar + ": no example of the data file is in split '" + split + "'");
    return out;
  }
  const std::vector<std::string> s = split_examples(static_cast<int>(all.size()), seed);
  for (size_t i = 0; i < all.size(); ++i)
    if (s[i] == split) out.push_back(all[i]);
  if (out.empty())
    throw Error("--split " + split + ": no example (the file has " + std::to_string(all.size()) + ")");
  return out;
}

}  // namespace kvd
