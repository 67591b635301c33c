// HellaSwag multiple-choice scoring with lm-evaluation-harness's rules, on the shared decode loop.
#include "eval/hellaswag_score.h"

#include <algorithm>
#include <cmath>

#include "eval/perplexity.h"
#include "eval/runner.h"
#include "util/error.h"

namespace kvd {

std::string py_capitalize(std::string_view s) {
  std::string out(s);
  for (size_t i = 0; i < out.size(); ++i) {
    const char c = out[i];
    if (i == 0 && c >= 'a' && c <= 'z') out[i] = static_cast<char>(c - 'a' + 'A');
    if (i > 0 && c >= 'A' && c <= 'Z') out[i] = static_cast<char>(c - 'A' + 'a');
  }
  return out;
}

size_t utf8_length(std::string_view s) {
  size_t n = 0;
  for (const char c : s) n += (static_cast<unsigned char>(c) & 0xC0) != 0x80;
  return n;
}

std::string hellaswag_query(const HellaSwagExample& ex) {
  if (!ex.has_ctx_parts)
    throw Error("line " + std::to_string(ex.line) +
                ": HellaSwag scoring needs the fields 'ctx_a' and 'ctx_b' (lm-evaluation-harness's query)");
  return hellaswag_preprocess(ex.activity_label + ": " + ex.ctx_a + " " + py_capitalize(ex.ctx_b));
}

std::array<std::string, 4> hellaswag_choices(const HellaSwagExample& ex) {
  std::array<std::string, 4> c;
  for (size_t i = 0; i < 4; ++i) c[i] = hellaswag_preprocess(ex.endings[i]);
  return c;
}

HellaSwagItem hellaswag_item(const Tokenizer& tok, const HellaSwagExample& ex) {
  HellaSwagItem it;
  it.line = ex.line;
  it.label = ex.label;
  std::string context = hellaswag_query(ex);
  const std::array<std::string, 4> choices = hellaswag_choices(ex);
  // _encode_pair: trailing whitespace of the context belongs to the continuation.
  size_t keep = context.size();
  while (keep > 0 && (context[keep - 1] == ' ' || (context[keep - 1] >= '\t' && context[keep - 1] <= '\r')))
    --keep;
  const std::string moved = context.substr(keep);
  context.resize(keep);
  it.context = tok.encode(context, true, false);
  if (it.context.empty())
    throw Error("line " + std::to_string(ex.line) + ": the HellaSwag query encodes to no tokens");
  for (size_t i = 0; i < 4; ++i) {
    const std::string cont = moved + " " + choices[i];
    it.endings[i] = tok.encode(cont, false, false);
    if (it.endings[i].empty())
      throw Error("line " + std::to_string(ex.line) + ": ending " + std::to_string(i) +
                  " encodes to no tokens");
    it.chars[i] = static_cast<double>(utf8_length(choices[i]));
    std::vector<int32_t> joined = it.context;
    joined.insert(joined.end(), it.endings[i].begin(), it.endings[i].end());
    if (tok.encode(context + cont, true, false) != joined) it.joint_differs = true;
  }
  return it;
}

namespace {
int argmax4(const std::array<double, 4>& v) {
  int best = 0;
  for (int i = 1; i < 4; ++i)
    if (v[static_cast<size_t>(i)] > v[static_cast<size_t>(best)]) best = i;
  return best;
}
}  // namespace

int HellaSwagRow::pred() const { return argmax4(ll); }

int HellaSwagRow::pred_norm() const {
  std::array<double, 4> n{};
  for (size_t i = 0; i < 4; ++i) n[i] = ll[i] / chars[i];
  return argmax4(n);
}

HellaSwagRow score_hellaswag(SessionBase& session, KvPolicy& policy, const HellaSwagItem& item) {
  const int vocab = session.model().config().vocab;
  // Truncating back restores the context exactly only if no context token left staging for the arena
  // inside the residual window (the arena keeps no fp16 copy): with a window the cache must be stage_only.
  if (!session.rewinds_exactly())
    throw Error("HellaSwag scoring with a residual window needs a stage_only cache (CPU)");
  session.clear();
  PolicyRunner runner(session, policy);
  // One token per step for policies that decide after the forward pass, as in generation: no context token
  // reads another at fp16 before its width is decided (static policies decide in advance).
  const float* last = runner.prefill(item.context, 1);
  const std::vector<float> ctx_logits(last, last + vocab);  // the next run overwrites the session's logits
  const int n_ctx = session.n_tokens();
  HellaSwagRow row;
  row.line = item.line;
  row.label = item.label;
  row.chars = item.chars;
  for (size_t e = 0; e < 4; ++e) {
    const std::vector<int32_t>& cont = item.endings[e];
    double ll = -nll_of(ctx_logits.data(), vocab, cont[0]);
    if (cont.size() > 1) {
      const std::vector<int32_t> run(cont.begin(), cont.end() - 1);
      runner.prefill_scored(
          run, 0, [&](int i, const float* li) { ll -= nll_of(li, vocab, cont[static_cast<size_t>(i) + 1]); });
      session.truncate(n_ctx);
    }
    row.ll[e] = ll;
  }
  session.clear();
  return row;
}

void mean_and_se(const std::vector<double>& x, double* mean, double* se) {
  const double n = static_cast<double>(x.size());
  double s = 0;
  for (double v : x) s += v;
  *mean = x.empty() ? 0 : s / n;
  double ss = 0;
  for (double v : x) ss += (v - *mean) * (v - *mean);
  *se = x.size() > 1 ? std::sqrt(ss / (n - 1) / n) : 0;
}

HellaSwagSummary hellaswag_summary(const std::vector<HellaSwagRow>& rows) {
  HellaSwagSummary s;
  s.n = static_cast<int>(rows.size());
  std::vector<double> acc, norm;
  for (const HellaSwagRow& r : rows) {
    acc.push_back(r.pred() == r.label);
    norm.push_back(r.pred_norm() == r.label);
  }
  mean_and_se(acc, &s.acc, &s.acc_se);
  mean_and_se(norm, &s.acc_norm, &s.acc_norm_se);
  return s;
}

HellaSwagPaired hellaswag_paired(const std::vector<HellaSwagRow>& run, const std::vector<HellaSwagRow>& ref) {
  if (run.size() != ref.size())
    throw Error("paired HellaSwag comparison: " + std::to_string(run.size()) + " rows against " +
                std::to_string(ref.size()) + " reference rows");
  HellaSwagPaired p;
  p.n = static_cast<int>(run.size());
  std::vector<double> da, dn;
  double ll = 0, ll_abs = 0;
  for (size_t i = 0; i < run.size(); ++i) {
    if (run[i].line != ref[i].line || run[i].label != ref[i].label)
      throw Error("paired HellaSwag comparison: row " + std::to_string(i) + " is line " +
                  std::to_string(run[i].line) + " here and line " + std::to_string(ref[i].line) +
                  " in the reference");
    da.push_back(static_cast<double>(run[i].pred() == run[i].label) - (ref[i].pred() == ref[i].label));
    dn.push_back(static_cast<double>(run[i].pred_norm() == run[i].label) -
                 (ref[i].pred_norm() == ref[i].label));
    for (size_t e = 0; e < 4; ++e) {
      ll += run[i].ll[e] - ref[i].ll[e];
      ll_abs += std::fabs(run[i].ll[e] - ref[i].ll[e]);
    }
  }
  mean_and_se(da, &p.acc_diff, &p.acc_diff_se);
  mean_and_se(dn, &p.acc_norm_diff, &p.acc_norm_diff_se);
  const double m = 4.0 * static_cast<double>(std::max<size_t>(run.size(), 1));
  p.ll_change_mean = ll / m;
  p.ll_change_abs_mean = ll_abs / m;
  return p;
}

}  // namespace kvd
