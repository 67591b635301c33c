// Policy-driven decoding loop.
#include "eval/runner.h"

#include <algorithm>

namespace kvd {

PolicyRunner::PolicyRunner(SessionBase& session, KvPolicy& policy) : session_(session), policy_(policy) {}

const float* PolicyRunner::run(const int32_t* tokens, int n, int logits_from, const LogitsSink* sink,
                               int index0) {
  const int vocab = session_.model().config().vocab;
  const int pos0 = session_.n_tokens();
  const bool features = policy_.needs_features() || keep_features_;
  if (!policy_.needs_features()) {
    // Widths known in advance: the cache quantizes each token as it is written.
    bits_.resize(static_cast<size_t>(n));
    for (int i = 0; i < n; ++i)
      bits_[static_cast<size_t>(i)] = static_cast<uint8_t>(width_in_advance(policy_, pos0 + i, tokens[i]));
  }
  const int from = features ? 0 : std::clamp(logits_from, 0, n - 1);
  const std::vector<float>& logits = session_.forward(tokens, n, from, features ? &fwd_stats_ : nullptr,
                                                      policy_.needs_features() ? nullptr : bits_.data());
  if (features) {
    for (int i = 0; i < n; ++i) {
      const TokenFeatures f =
          make_features(session_.model().tokenizer(), tokens[i], pos0 + i,
                        logits.data() + static_cast<size_t>(i) * vocab, vocab, fwd_stats_[i]);
      if (policy_.needs_features()) session_.decide(pos0 + i, policy_.choose(f));
      if (keep_features_) features_.push_back(f);
    }
  }
  if (sink)
    for (int i = std::max(logits_from, 0); i < n; ++i)
      (*sink)(index0 + i, logits.data() + static_cast<size_t>(i - from) * vocab);
  session_.flush_window();
  return logits.data() + static_cast<size_t>(n - 1 - from) * vocab;
}

const float* PolicyRunner::prefill(const std::vector<int32_t>& tokens, int feature_batch) {
  const int n = static_cast<int>(tokens.size());
  if (n == 0) return nullptr;
  if (!policy_.needs_features() && !keep_features_) return run(tokens.data(), n, n - 1);
  const float* last = nullptr;
  for (int b = 0; b < n; b += feature_batch) last = run(tokens.data() + b, std::min(feature_batch, n - b), 0);
  return last;
}

void PolicyRunner::prefill_scored(const std::vector<int32_t>& tokens, int logits_from, const LogitsSink& sink,
                                  int feature_batch) {
  const int n = static_cast<int>(tokens.size());
  if (n == 0) return;
  if (!policy_.needs_features() && !keep_features_) {
    run(tokens.data(), n, logits_from, &sink);
    return;
  }
  for (int b = 0; b < n; b += feature_batch)
    run(tokens.data() + b, std::min(feature_batch, n - b), logits_from - b, &sink, b);
}

const float* PolicyRunner::step(int32_t token) { return run(&token, 1, 0); }

}  // namespace kvd
