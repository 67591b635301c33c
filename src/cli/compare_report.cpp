// Markdown, CSV and JSON of a compare run.
#include "cli/compare_report.h"

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <vector>

#include "util/error.h"

namespace kvd::cli {
namespace {

// The CSV's columns: the scalar fields every policy object carries, in this order.
const char* const kCsvColumns[] = {"policy",
                                   "spec",
                                   "avg_bits",
                                   "avg_width",
                                   "kv_bytes",
                                   "kv_bits_at_depth",
                                   "peak_rss_bytes",
                                   "kl",
                                   "top1_agreement",
                                   "next_token_accuracy",
                                   "next_token_positions",
                                   "acc",
                                   "acc_se",
                                   "acc_norm",
                                   "acc_norm_se",
                                   "acc_diff",
                                   "acc_diff_se",
                                   "acc_norm_diff",
                                   "acc_norm_diff_se",
                                   "ll_change_mean",
                                   "ll_change_abs_mean",
                                   "hellaswag_rows",
                                   "PPL",  // the perplexity columns of the run (ppl_<ctx>, its SE, its KL)
                                   "latency_ms_mean",
                                   "latency_ms_p50",
                                   "latency_ms_p95",
                                   "latency_ms_at_depth_mean",
                                   "controller_ns_per_token",
                                   "controller_share",
                                   "seconds"};

// The perplexity contexts of a run: the first (--wiki-ctx) and 2048.
std::vector<std::string> ppl_contexts(const nlohmann::json& r) {
  const nlohmann::json& w = r["meta"]["wiki"];
  std::vector<std::string> c = {std::to_string(w.is_object() ? w.value("ctx", 512) : 512)};
  if (c[0] != "2048") c.push_back("2048");
  return c;
}

std::vector<std::string> csv_columns(const nlohmann::json& r) {
  std::vector<std::string> out;
  for (const char* c : kCsvColumns) {
    if (std::string(c) != "PPL") {
      out.push_back(c);
      continue;
    }
    for (const std::string& n : ppl_contexts(r)) {
      out.push_back("ppl_" + n);
      out.push_back("ppl_" + n + "_se");
      out.push_back("kl_wiki_" + n);
    }
  }
  return out;
}

std::string num(const nlohmann::json& p, const std::string& key, const char* fmt) {
  if (!p.contains(key) || p[key].is_null()) return "–";
  char buf[64];
  std::snprintf(buf, sizeof buf, fmt, p[key].get<double>());
  return buf;
}

std::string pm(const nlohmann::json& p, const char* key, const char* se, const char* fmt) {
  if (!p.contains(key) || p[key].is_null()) return "–";
  char buf[96];
  std::snprintf(buf, sizeof buf, fmt, p[key].get<double>(), p.value(se, 0.0));
  return buf;
}

std::string mib(const nlohmann::json& p, const char* key) {
  if (!p.contains(key) || p[key].is_null()) return "–";
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.2f", p[key].get<double>() / (1024.0 * 1024.0));
  return buf;
}

void write_atomic(const std::string& path, const std::string& text) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream f(tmp, std::ios::binary);
    if (!f) throw Error(tmp + ": cannot write");
    f << text;
    if (!f) throw Error(tmp + ": write failed");
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) throw Error(path + ": cannot write (" + ec.message() + ")");
}

}  // namespace

std::string compare_markdown(const nlohmann::json& r) {
  std::string s;
  const nlohmann::json& m = r["meta"];
  s += "kvdial compare, " + m.value("date", "") + ", " + m["model"].value("name", "") + " (" +
       m["model"].value("sha256", "").substr(0, 12) + "), HellaSwag " + m["hellaswag"].value("path", "") +
       " split " + m["hellaswag"].value("split", "") + " (" +
       std::to_string(m["hellaswag"].value("rows", 0)) + " rows), commit " +
       m.value("git_commit", "").substr(0, 12) + "\n\n";
  s +=
      "| policy | bits/elem | KV MiB @" + std::to_string(m.value("mem_depth", 0)) +
      " | peak RSS MiB | KL vs 16 | top-1 agree | next-token acc | acc | acc_norm | Δacc_norm vs 16 (± SE) | "
      "Δll/ending | PPL " +
      ppl_contexts(r)[0] + " | PPL 2048 | ms/token mean | p50 | p95 | ctrl ns/token |\n";
  s += "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | "
       "---: | "
       "---: | ---: |\n";
  for (const nlohmann::json& p : r["policies"]) {
    s += "| " + p.value("policy", std::string("?")) + " | " + num(p, "avg_bits", "%.3f") + " | " +
         mib(p, "kv_bytes") + " | " + mib(p, "peak_rss_bytes") + " | " + num(p, "kl", "%.5f") + " | " +
         num(p, "top1_agreement", "%.4f") + " | " + num(p, "next_token_accuracy", "%.4f") + " | " +
         pm(p, "acc", "acc_se", "%.4f ± %.4f") + " | " + pm(p, "acc_norm", "acc_norm_se", "%.4f ± %.4f") +
         " | " + pm(p, "acc_norm_diff", "acc_norm_diff_se", "%+.4f ± %.4f") + " | " +
         num(p, "ll_change_mean", "%+.4f") + " | " + num(p, "ppl_" + ppl_contexts(r)[0], "%.4f") + " | " +
         num(p, "ppl_2048", "%.4f") + " | " + num(p, "latency_ms_mean", "%.2f") + " | " +
         num(p, "latency_ms_p50", "%.2f") + " | " + num(p, "latency_ms_p95", "%.2f") + " | " +
         num(p, "controller_ns_per_token", "%.0f") + " |\n";
  }
  return s;
}

std::string compare_csv(const nlohmann::json& r) {
  std::string s;
  const std::vector<std::string> cols = csv_columns(r);
  for (size_t i = 0; i < cols.size(); ++i) s += (i ? "," : "") + cols[i];
  s += "\n";
  for (const nlohmann::json& p : r["policies"]) {
    for (size_t i = 0; i < cols.size(); ++i) {
      if (i) s += ",";
      const std::string& k = cols[i];
      if (!p.contains(k) || p[k].is_null()) continue;
      if (p[k].is_string()) {
        s += "\"" + p[k].get<std::string>() + "\"";
      } else {
        char buf[64];
        std::snprintf(buf, sizeof buf, "%.10g", p[k].get<double>());
        s += buf;
      }
    }
    s += "\n";
  }
  return s;
}

void write_compare_report(const nlohmann::json& r, const std::string& dir) {
  write_atomic(dir + "/compare.json", r.dump(1) + "\n");
  write_atomic(dir + "/compare.csv", compare_csv(r));
  write_atomic(dir + "/compare.md", compare_markdown(r));
}

}  // namespace kvd::cli
