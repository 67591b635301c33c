// The compare report: one JSON document (run metadata + a `policies` array, one object per policy) and
// the Markdown table and CSV made from it. Written to a directory with rename, so an interrupted run
// leaves the files of the policies finished so far complete and readable.
#pragma once
#include <nlohmann/json.hpp>
#include <string>

namespace kvd::cli {

// The Markdown table (one row per policy) with a header line naming model, data and split.
std::string compare_markdown(const nlohmann::json& report);
// CSV: one row per policy, the scalar fields of the policy objects.
std::string compare_csv(const nlohmann::json& report);
// Writes compare.json, compare.csv and compare.md into dir (each to a temporary name, then renamed).
void write_compare_report(const nlohmann::json& report, const std::string& dir);

}  // namespace kvd::cli
