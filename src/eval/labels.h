// The sensitivity labels of kvdial collect: what storing one token's K and V at 2, 4 or 8 bits costs,
// measured on an all-16-bit history. For token t the next W positions run four times, as four sequences
// of one batched forward that share the prefix: the 16-bit reference and the token at 2, 4 and 8 bits
// (docs/collect.md, "The label run").
#pragma once
#include <array>
#include <cstdint>
#include <memory>
#include <vector>

#include "kv/kv_cache.h"
#include "model/backend.h"
#include "model/forward.h"
#include "model/model.h"

namespace kvd {

// The widths the labels measure, in column order (dmg2, dmg4, dmg8).
constexpr std::array<int, 3> kLabelBits = {2, 4, 8};

struct TokenLabels {
  std::array<double, 3> dmg{};  // mean KL(p16 || pB) over the window, nats
  int oracle = 16;              // smallest B with dmgB <= tau, else 16
  double recv = 0;              // attention the token receives from the reference window, per layer and head
  std::array<double, 3> proxy{};
};

class LabelRun {
 public:
  // ctx: most tokens of one example; layout: the cache's (its ladder gives what each label class stores);
  // window: W; tau: oracle threshold.
  LabelRun(const Model& model, Backend& backend, int ctx, const KvLayout& layout, int window, double tau);

  // Starts an example: clears the four sequences and runs its first token.
  void begin(const std::vector<int32_t>& ids);
  // Runs the windows of token t (call with t = 0, 1, ... n - 2 in turn) and, when measure, computes its
  // labels (otherwise returns zeros: rows already written on resume still advance the prefix, in the same
  // batch shape, so that the caches are the same as in an uninterrupted run).
  TokenLabels label(int t, bool measure);

 private:
  // Makes position pos of sequence dst a copy of sequence 0's (both stage-only, dst holds pos tokens).
  void copy_token(int dst, int pos);

  const Model& model_;
  Backend& backend_;
  int window_;
  double tau_;
  KvCache cache_;  // stage-only, residual 0; seq 0 = reference, seq 1 + i = token at kLabelBits[i]
  std::vector<int32_t> ids_;
  std::vector<uint8_t> sixteen_;
  std::vector<SeqTokens> parts_;
  std::vector<TokenForwardStats> fwd_stats_;
  std::vector<double> ref_lp_, ref_p_;
  std::vector<float> row_k_, row_v_;
  std::unique_ptr<Session> session_;
};

// Mean over w positions of KL(ref || run) of the next-token distributions; run is w x vocab logits, ref_lp
// and ref_p the reference's log-probabilities and probabilities (w x vocab).
double mean_kl(const std::vector<double>& ref_lp, const std::vector<double>& ref_p, const float* run, int w,
               int vocab);
// Log-probabilities and probabilities of w x vocab logits.
void log_softmax(const float* logits, int w, int vocab, std::vector<double>& lp, std::vector<double>& p);

}  // namespace kvd
