// Next-token evaluation of a KV policy on texts, as generation runs them: each text goes through the
// shared decode loop one token at a time (decode steps, teacher-forced: the next input is the text's
// token), so a dynamic policy decides every token's width after its own step, from the features it has
// in generation. At every position with a next token it records whether the top-1 prediction equals the
// actual next token, and KL(fp16 || policy) and top-1 agreement against the 16-bit cache's distribution
// (the reference session runs the text as one prefill with static:16). Each step is timed.
#pragma once
#include <cstdint>
#include <vector>

#include "model/forward.h"
#include "policy/policy.h"

namespace kvd {

struct NextTokenResult {
  int64_t positions = 0;  // positions with a next token
  int64_t correct = 0;    // top-1 == actual next token
  int64_t agree = 0;      // top-1 == the 16-bit cache's top-1
  double kl_sum = 0;
  std::vector<double> step_ms;  // wall time of every decode step (policy decision included)
  int64_t tokens = 0;           // tokens stored (every token of every text)
  double width_sum = 0;         // sum of the tokens' decided widths
  double stored_bits_sum = 0;   // sum of the tokens' stored bits per element, scales included
  double accuracy() const {
    return positions ? static_cast<double>(correct) / static_cast<double>(positions) : 0;
  }
  double top1_agreement() const {
    return positions ? static_cast<double>(agree) / static_cast<double>(positions) : 0;
  }
  double kl_mean() const { return positions ? kl_sum / static_cast<double>(positions) : 0; }
  double avg_width() const { return tokens ? width_sum / static_cast<double>(tokens) : 0; }
  double stored_bits() const { return tokens ? stored_bits_sum / static_cast<double>(tokens) : 0; }
};

// Runs one text (at least two tokens) on session (cleared first) under policy, and on ref (cleared) with
// a 16-bit cache, adding to result. widths, when non-null, receives the decided width of every token.
void next_token_text(SessionBase& session, KvPolicy& policy, SessionBase& ref,
                     const std::vector<int32_t>& text, NextTokenResult& result,
                     std::vector<int>* widths = nullptr);

// Quantile q in [0, 1] of a sample (linear interpolation between order statistics, as numpy's default).
double quantile(std::vector<double> x, double q);

}  // namespace kvd
