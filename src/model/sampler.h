// Next-token sampling: greedy at temperature 0, else temperature, top-k, top-p with a seeded RNG.
#pragma once
#include <cstdint>
#include <random>
#include <vector>

namespace kvd {

struct SamplerOptions {
  float temperature = 0.8f;
  int top_k = 40;
  float top_p = 0.95f;
  uint64_t seed = 42;
};

class Sampler {
 public:
  explicit Sampler(const SamplerOptions& options);
  int32_t sample(const float* logits, int vocab);

 private:
  SamplerOptions opt_;
  std::mt19937_64 rng_;
  std::vector<std::pair<float, int32_t>> cand_;
};

}  // namespace kvd
