// WikiText-style perplexity with llama-perplexity's convention: the tokenized text is cut into
// chunks of n_ctx tokens, each run as its own sequence, and only the second half of each chunk is
// scored (logits at positions n_ctx/2 .. n_ctx-2 predict the tokens after them). Each chunk runs through
// PolicyRunner's prefill, the loop generate uses, so a policy decides every width from the features it
// would see in generation.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "model/forward.h"
#include "policy/policy.h"

namespace kvd {

struct PerplexityOptions {
  int n_ctx = 512;
  int max_chunks = 0;            // 0 = all
  bool kl_against_fp16 = false;  // also run every chunk with a 16-bit cache and report KL(fp16 || policy)
};

struct PerplexityResult {
  int n_tokens = 0;  // tokens in the file
  int n_chunks = 0;
  int64_t n_scored = 0;
  double nll_sum = 0;
  double nll2_sum = 0;
  double ppl() const;
  double ppl_stderr() const;  // from the NLL's standard error, as llama-perplexity reports it
  double kl_sum = 0;          // sum of KL(fp16 || policy) over scored tokens
  double kl_mean() const { return n_scored ? kl_sum / static_cast<double>(n_scored) : 0; }
  double top1_agree = 0;   // share of scored tokens whose argmax equals the fp16 run's
  double avg_bits = 0;     // mean KV bit-width over all tokens run
  double stored_bits = 0;  // mean stored bits per K/V element, scales included
  double seconds = 0;
};

// Progress callback: chunk index (1-based), number of chunks, running result.
using PerplexityProgress = std::function<void(int, int, const PerplexityResult&)>;

PerplexityResult perplexity(SessionBase& session, KvPolicy& policy, const std::vector<int32_t>& tokens,
                            const PerplexityOptions& options, const PerplexityProgress& progress = {});

// log-softmax based pieces shared with other evaluations.
double nll_of(const float* logits, int vocab, int32_t target);
// KL(p || q) of softmax(p_logits) and softmax(q_logits).
double kl_divergence(const float* p_logits, const float* q_logits, int vocab);

}  // namespace kvd
