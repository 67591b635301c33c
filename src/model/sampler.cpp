// Sampling: argmax, or softmax over the top-k logits at a temperature, cut to the top-p mass.
#include "model/sampler.h"

#include <algorithm>
#include <cmath>

namespace kvd {

Sampler::Sampler(const SamplerOptions& options) : opt_(options), rng_(options.seed) {}

int32_t Sampler::sample(const float* logits, int vocab) {
  if (opt_.temperature <= 0.0f) return static_cast<int32_t>(std::max_element(logits, logits + vocab) - logits);
  cand_.resize(static_cast<size_t>(vocab));
  for (int i = 0; i < vocab; ++i) cand_[i] = {logits[i], i};
  const int k = opt_.top_k > 0 ? std::min(opt_.top_k, vocab) : vocab;
  std::partial_sort(cand_.begin(), cand_.begin() + k, cand_.end(), [](auto& a, auto& b) { return a.first > b.first; });
  cand_.resize(static_cast<size_t>(k));
  const float mx = cand_[0].first;
  double sum = 0;
  for (auto& c : cand_) {
    c.first = std::exp((c.first - mx) / opt_.temperature);
    sum += c.first;
  }
  // Keep the smallest prefix whose mass reaches top_p.
  double acc = 0;
  size_t keep = cand_.size();
  for (size_t i = 0; i < cand_.size(); ++i) {
    acc += cand_[i].first / sum;
    if (acc >= opt_.top_p) {
      keep = i + 1;
      break;
    }
  }
  cand_.resize(keep);
  double total = 0;
  for (auto& c : cand_) total += c.first;
  std::uniform_real_distribution<double> u(0.0, total);
  double r = u(rng_);
  for (auto& c : cand_) {
    r -= c.first;
    if (r <= 0) return c.second;
  }
  return cand_.back().second;
}

}  // namespace kvd
