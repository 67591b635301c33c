// Controller training data (kvdial collect): HellaSwag text or chunks of plain text run token by token
// under a KV policy, one CSV row per token with the seed's six columns, the other features, and
// sensitivity labels measured by re-running a window of positions with one token's KV stored at 2, 4 or
// 8 bits (eval/labels.h). The CSV reader
// (eval/csv.h), the statistics of kvdial stats (eval/csv_stats.h) and the SHA-256 (util/sha256.h) are
// included from here too. docs/collect.md.
#pragma once
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "eval/csv.h"        // CsvTable, read_csv_table (kvdial train includes either header)
#include "eval/csv_stats.h"  // csv_stats_report, pearson, spearman
#include "kv/kv_config.h"
#include "model/backend.h"
#include "model/model.h"
#include "policy/policy.h"
#include "util/sha256.h"  // sha256_hex, sha256_file (the sidecar's digests)

namespace kvd {

struct CollectOptions {
  std::string data_path;               // HellaSwag JSONL (--data), or
  std::string text_path;               // plain text (-f), cut into examples of `chunk` tokens
  int64_t skip_tokens = 0;             // -f: tokens of the file skipped before the first chunk
  int chunk = 256;                     // -f: tokens per example (the last one shorter)
  std::string out_path;                // CSV; the sidecar is out_path + ".json"
  int tokens = 1000;                   // rows to write (tokens that have a next token)
  int window = 8;                      // W: positions re-run after the token whose width changes
  double tau = 0.004;                  // oracle_bits = smallest b with dmg_b <= tau (mean KL, nats), else 16;
                                       // 0.004 = the median dmg4 of the default run (docs/collect.md)
  bool labels = true;                  // dmg2/4/8, oracle_bits and the attention-weighted proxy
  uint64_t seed = 0;                   // the train/val/test split by example
  bool resume = false;                 // continue an interrupted CSV
  bool force = false;                  // overwrite an existing CSV
  bool progress = false;               // progress bar on stderr even when it is not a terminal
  int ctx = 4096;                      // most tokens of one example
  int batch = 512;                     // Session batch size
  int kv_group = 32, kv_residual = 0;  // the policy run's cache (the label run uses residual 0)
  int jobs = 1;                        // examples run in parallel, each job with its own backend (same
                                       // name and threads), policy and caches; rows come out in example
                                       // order whatever the number
  std::string policy_spec;             // --kv-policy spec that makes each job's policy (empty: describe())
  KvQuantOptions quant;  // the KV quantizer (ladder, rotation, clip); the sidecar records kv_quantizer_id()
  std::string model_sha256;  // computed when empty
  std::string git_commit;    // `git rev-parse HEAD` when empty
};

struct CollectSummary {
  int64_t rows_total = 0;     // rows the run plans (tokens requested, or all the data holds)
  int64_t rows_before = 0;    // rows already in the CSV when resuming
  int64_t rows_written = 0;   // rows this call wrote
  int examples = 0;           // examples the rows come from
  double seconds = 0;         // wall time of the rows written
  double policy_seconds = 0;  // time in the policy run (features, decisions, latency column)
  double label_seconds = 0;   // time in the label run (16-bit reference and the re-run windows)
                              // (policy and label seconds are summed over the jobs)
  std::vector<int64_t> oracle_counts = std::vector<int64_t>(17, 0);  // by width, rows this call wrote
};

// The CSV columns, in order (labels: the label and proxy columns at the end).
std::vector<std::string> collect_columns(bool labels);

// Runs the collection. log receives the progress bar and notes (nullptr: silent). Throws kvd::Error
// for bad data, a CSV that exists (without resume/force), or a resume whose parameters differ.
CollectSummary collect(const Model& model, Backend& backend, KvPolicy& policy, const CollectOptions& options,
                       std::FILE* log = stderr);

}  // namespace kvd
