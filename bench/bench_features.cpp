// Cost of the per-token saliency features that do not come free with the forward pass: the
// entropy / max-probability / argmax pass over the vocabulary (logits_summary). Compare with a decode
// step (kvdial bench tg): the budget is under 5% of it.
#include <benchmark/benchmark.h>

#include <random>
#include <vector>

#include "policy/features.h"

static void BM_LogitsSummary(benchmark::State& state) {
  const int vocab = static_cast<int>(state.range(0));
  std::vector<float> logits(vocab);
  std::mt19937 rng(1);
  std::normal_distribution<float> nd(0.0f, 3.0f);
  for (auto& x : logits) x = nd(rng);
  for (auto _ : state) {
    float h, p;
    int32_t a;
    kvd::logits_summary(logits.data(), vocab, &h, &p, &a);
    benchmark::DoNotOptimize(h);
  }
}
BENCHMARK(BM_LogitsSummary)->Arg(49152)->Arg(128256);

BENCHMARK_MAIN();
