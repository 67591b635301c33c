// Decode-step next-token accuracy, KL against the 16-bit cache, and step latencies.
#include "eval/next_token.h"

#include <algorithm>
#include <chrono>
#include <cmath>

#include "eval/perplexity.h"
#include "eval/runner.h"
#include "util/error.h"

namespace kvd {

void next_token_text(SessionBase& session, KvPolicy& policy, SessionBase& ref,
                     const std::vector<int32_t>& text, NextTokenResult& r, std::vector<int>* widths) {
  const int n = static_cast<int>(text.size());
  if (n < 2) throw Error("next-token evaluation needs texts of two or more tokens");
  const int vocab = session.model().config().vocab;
  // The 16-bit cache's distributions at positions 0 .. n-2.
  std::vector<float> ref_logits(static_cast<size_t>(n - 1) * vocab);
  ref.clear();
  {
    const std::unique_ptr<KvPolicy> fp16 = make_policy("static:16");
    PolicyRunner rr(ref, *fp16);
    const std::vector<int32_t> head(text.begin(), text.end() - 1);
    rr.prefill_scored(head, 0, [&](int i, const float* li) {
      std::copy(li, li + vocab, ref_logits.data() + static_cast<size_t>(i) * vocab);
    });
    ref.clear();
  }
  session.clear();
  PolicyRunner runner(session, policy);
  for (int i = 0; i < n; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    const float* li = runner.step(text[static_cast<size_t>(i)]);
    r.step_ms.push_back(
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
    if (i == n - 1) break;
    const float* ri = ref_logits.data() + static_cast<size_t>(i) * vocab;
    const int32_t top = static_cast<int32_t>(std::max_element(li, li + vocab) - li);
    const int32_t ref_top = static_cast<int32_t>(std::max_element(ri, ri + vocab) - ri);
    r.positions++;
    r.correct += top == text[static_cast<size_t>(i) + 1];
    r.agree += top == ref_top;
    r.kl_sum += kl_divergence(ri, li, vocab);
  }
  const KvLayout& lay = session.kv_layout();
  if (widths) widths->clear();
  for (int p = 0; p < n; ++p) {
    const int b = session.token_bits(p);
    r.width_sum += b;
    r.stored_bits_sum += lay.effective_bits(b);
    if (widths) widths->push_back(b);
  }
  r.tokens += n;
  session.clear();
}

double quantile(std::vector<double> x, double q) {
  if (x.empty()) return 0;
  std::sort(x.begin(), x.end());
  const double pos = q * static_cast<double>(x.size() - 1);
  const size_t lo = static_cast<size_t>(std::floor(pos)), hi = std::min(lo + 1, x.size() - 1);
  return x[lo] + (x[hi] - x[lo]) * (pos - static_cast<double>(lo));
}

}  // namespace kvd
