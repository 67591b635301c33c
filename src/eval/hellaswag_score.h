// HellaSwag multiple choice as lm-evaluation-harness scores it (tasks/hellaswag, 0-shot):
//   query   = preprocess(activity_label + ": " + ctx_a + " " + capitalize(ctx_b))
//   choices = preprocess(ending) for the four endings, each scored as the continuation " " + choice
//   ll      = sum of the continuation tokens' log-probabilities after the query
//   acc     = [argmax ll == label],  acc_norm = [argmax ll / len(choice) == label]  (len in characters)
// Context and continuation are encoded separately and joined (context ids + continuation ids); trailing
// whitespace of the context moves to the continuation first (the harness's _encode_pair); no BOS unless
// the model's tokenizer adds one. The context runs through the cache under a KV policy as prefill does in
// generate (PolicyRunner), then each ending runs after the stored context and the cache is truncated back.
#pragma once
#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "eval/hellaswag.h"
#include "model/forward.h"
#include "policy/policy.h"
#include "tokenizer/tokenizer.h"

namespace kvd {

// Python's str.capitalize() for ASCII text: first character upper case, the rest lower case (bytes
// outside ASCII are left as they are).
std::string py_capitalize(std::string_view s);
// Python's len() of a UTF-8 string: the number of code points (bytes that do not continue a sequence).
size_t utf8_length(std::string_view s);

// The harness's query and choices. Throws kvd::Error "line N: ..." when the example lacks ctx_a/ctx_b.
std::string hellaswag_query(const HellaSwagExample& ex);
std::array<std::string, 4> hellaswag_choices(const HellaSwagExample& ex);

// One example, tokenized for scoring.
struct HellaSwagItem {
  int line = 0;
  int label = 0;
  std::vector<int32_t> context;
  std::array<std::vector<int32_t>, 4> endings;  // continuation ids, each at least one token
  std::array<double, 4> chars{};                // len(choice) in characters, acc_norm's divisor
  bool joint_differs =
      false;  // encode(context + continuation) != context ids + continuation ids for some ending
};
HellaSwagItem hellaswag_item(const Tokenizer& tok, const HellaSwagExample& ex);

// Scores of one example: the summed log-likelihood of each ending.
struct HellaSwagRow {
  int line = 0;
  int label = 0;
  std::array<double, 4> ll{};
  std::array<double, 4> chars{};
  int pred() const;       // argmax ll (first of ties, as numpy)
  int pred_norm() const;  // argmax ll / chars
};

// Runs one example on the session's sequence (cleared first, cleared after) with the policy deciding
// every width. With a residual window (--kv-residual) the cache must be stage_only (tokens never leave
// staging), so that truncating back after an ending leaves the context's window at fp16 as it was;
// throws kvd::Error otherwise.
HellaSwagRow score_hellaswag(SessionBase& session, KvPolicy& policy, const HellaSwagItem& item);

struct HellaSwagSummary {
  int n = 0;
  double acc = 0,
         acc_se = 0;  // mean and standard error of the mean (sample stddev / sqrt(n), as the harness)
  double acc_norm = 0, acc_norm_se = 0;
};
HellaSwagSummary hellaswag_summary(const std::vector<HellaSwagRow>& rows);

// A run against a reference run on the same rows (same lines, same order): means of the per-row
// differences (run - ref) with their standard errors, and the change of the endings' summed
// log-likelihood (mean and mean absolute, over rows and endings). Throws kvd::Error when the rows differ.
struct HellaSwagPaired {
  int n = 0;
  double acc_diff = 0, acc_diff_se = 0;
  double acc_norm_diff = 0, acc_norm_diff_se = 0;
  double ll_change_mean = 0, ll_change_abs_mean = 0;
};
HellaSwagPaired hellaswag_paired(const std::vector<HellaSwagRow>& run, const std::vector<HellaSwagRow>& ref);

// Mean and standard error of the mean of a sample (0 for fewer than two values).
void mean_and_se(const std::vector<double>& x, double* mean, double* se);

}  // namespace kvd
