// Chunked perplexity and KL divergence against the 16-bit cache.
#include "eval/perplexity.h"
#include "model/forward.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <memory>

#include "eval/runner.h"
#include "util/error.h"

namespace kvd {
namespace {

double log_sum_exp(const float* x, int n, float* max_out = nullptr) {
  float mx = x[0];
  for (int i = 1; i < n; ++i) mx = std::max(mx, x[i]);
  double s = 0;
  for (int i = 0; i < n; ++i) s += std::exp(static_cast<double>(x[i]) - mx);
  if (max_out) *max_out = mx;
  return mx + std::log(s);
}

}  // namespace

double PerplexityResult::ppl() const {
  return n_scored ? std::exp(nll_sum / static_cast<double>(n_scored)) : 0;
}

double PerplexityResult::ppl_stderr() const {
  if (n_scored < 2) return 0;
  const double n = static_cast<double>(n_scored);
  const double mean = nll_sum / n, var = nll2_sum / n - mean * mean;
  return std::sqrt(std::max(0.0, var) / (n - 1)) * ppl();
}

double nll_of(const float* logits, int vocab, int32_t target) {
  return log_sum_exp(logits, vocab) - logits[target];
}

double kl_divergence(const float* p_logits, const float* q_logits, int vocab) {
  const double lp = log_sum_exp(p_logits, vocab), lq = log_sum_exp(q_logits, vocab);
  double kl = 0;
  for (int i = 0; i < vocab; ++i) {
    const double a = p_logits[i] - lp, b = q_logits[i] - lq;
    kl += std::exp(a) * (a - b);
  }
  return std::max(0.0, kl);
}

PerplexityResult perplexity(SessionBase& session, KvPolicy& policy, const std::vector<int32_t>& tokens,
                            const PerplexityOptions& opt, const PerplexityProgress& progress) {
  const auto t0 = std::chrono::steady_clock::now();
  const int vocab = session.model().config().vocab;
  const int n_ctx = opt.n_ctx, first = n_ctx / 2;
  if (n_ctx < 8) throw Error("perplexity needs a context of at least 8 tokens (-c)");
  PerplexityResult r;
  r.n_tokens = static_cast<int>(tokens.size());
  int n_chunks = r.n_tokens / n_ctx;
  if (opt.max_chunks > 0) n_chunks = std::min(n_chunks, opt.max_chunks);
  if (n_chunks == 0)
    throw Error("the text has " + std::to_string(r.n_tokens) + " tokens, fewer than one chunk of " +
                std::to_string(n_ctx) + " (lower -c)");
  r.n_chunks = n_chunks;
  const std::unique_ptr<KvPolicy> fp16 = make_policy("static:16");
  std::vector<float> ref_logits;
  double bits_sum = 0, stored_sum = 0, agree = 0;
  const KvLayout& layout = session.kv_layout();
  for (int c = 0; c < n_chunks; ++c) {
    const auto begin = tokens.begin() + static_cast<std::ptrdiff_t>(c) * n_ctx;
    const std::vector<int32_t> chunk(begin, begin + n_ctx);
    // The 16-bit cache's logits of the scored positions, for KL.
    if (opt.kl_against_fp16) {
      session.clear();
      ref_logits.resize(static_cast<size_t>(n_ctx - first) * vocab);
      PolicyRunner ref(session, *fp16);
      ref.prefill_scored(chunk, first, [&](int i, const float* li) {
        std::copy(li, li + vocab, ref_logits.data() + static_cast<size_t>(i - first) * vocab);
      });
    }
    // The policy's run: the shared decode loop's prefill, every width decided as in generation.
    session.clear();
    PolicyRunner runner(session, policy);
    // Dynamic policies decide each token after its forward pass; one token per step, as in generation, so
    // no token of a batch reads another at fp16 before its width is decided (which a static policy, deciding
    // in advance, never allows either: equal conditions at equal memory).
    runner.prefill_scored(chunk, first, [&](int i, const float* li) {
      if (i >= n_ctx - 1) return;
      const double nll = nll_of(li, vocab, chunk[static_cast<size_t>(i) + 1]);
      r.nll_sum += nll;
      r.nll2_sum += nll * nll;
      r.n_scored++;
      if (opt.kl_against_fp16) {
        const float* ri = ref_logits.data() + static_cast<size_t>(i - first) * vocab;
        r.kl_sum += kl_divergence(ri, li, vocab);
        agree += std::max_element(ri, ri + vocab) - ri == std::max_element(li, li + vocab) - li;
      }
    }, 1);
    // Decided widths (a CPU session knows each token's; another counts what its cache reports).
    if (auto* cpu = dynamic_cast<Session*>(&session)) {
      for (int i = 0; i < n_ctx; ++i) {
        const int b = cpu->cache().token_bits(cpu->seq(), i);
        bits_sum += b;
        stored_sum += layout.effective_bits(b);
      }
    } else {
      const KvStats st = session.kv_stats();
      bits_sum += st.avg_bits() * n_ctx;
      stored_sum += st.effective_bits * n_ctx;
    }
    r.avg_bits = bits_sum / (static_cast<double>(c + 1) * n_ctx);
    r.stored_bits = stored_sum / (static_cast<double>(c + 1) * n_ctx);
    r.top1_agree = r.n_scored ? agree / static_cast<double>(r.n_scored) : 0;
    r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (progress) progress(c + 1, n_chunks, r);
  }
  session.clear();
  return r;
}

}  // namespace kvd
