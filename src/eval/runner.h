// Runs tokens through a Session and decides each token's KV bit-width with a policy: the loop that
// generate, perplexity, bench and collect share.
#pragma once
#include <cstdint>
#include <functional>
#include <vector>

#include "model/forward.h"
#include "policy/features.h"
#include "policy/policy.h"

namespace kvd {

class PolicyRunner {
 public:
  PolicyRunner(SessionBase& session, KvPolicy& policy);

  // Runs a prompt and returns the logits of its last token (vocab floats). Policies that read features
  // see them per token: the prompt runs in batches of feature_batch tokens with logits for every token
  // (tokens of one batch see each other at fp16, then are quantized once their widths are decided).
  const float* prefill(const std::vector<int32_t>& tokens, int feature_batch = 64);
  // Runs tokens as prefill does and hands the logits of the tokens at indexes [logits_from, n) to sink, in
  // order (index into tokens, vocab floats valid during the call): the scoring form of prefill that
  // perplexity and HellaSwag use, so a policy decides every width as it would in generation. Widths known
  // in advance run the tokens in one forward (logits only from logits_from).
  using LogitsSink = std::function<void(int index, const float* logits)>;
  void prefill_scored(const std::vector<int32_t>& tokens, int logits_from, const LogitsSink& sink,
                      int feature_batch = 64);
  // Runs one token and returns its logits.
  const float* step(int32_t token);

  // Features of every token run so far, when keep_features(true) was called before.
  void keep_features(bool on) { keep_features_ = on; }
  const std::vector<TokenFeatures>& features() const { return features_; }

 private:
  // Runs n tokens; logits are computed for indexes >= logits_from (clamped to n - 1; all when the policy
  // reads features) and handed to sink when given. Returns the last token's logits.
  const float* run(const int32_t* tokens, int n, int logits_from, const LogitsSink* sink = nullptr,
                   int index0 = 0);

  SessionBase& session_;
  KvPolicy& policy_;
  bool keep_features_ = false;
  std::vector<TokenFeatures> features_;
  std::vector<TokenForwardStats> fwd_stats_;
  std::vector<uint8_t> bits_;
};

}  // namespace kvd
