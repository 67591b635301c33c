// Cost of the learned controller's decision per token (the MLP forward on the token's features, and the
// budget's Lagrangian choice): the goal is under 1% of a decode step (kvdial bench tg).
// KVDIAL_CONTROLLER=FILE benchmarks that file too.
#include <benchmark/benchmark.h>

#include <cstdlib>
#include <vector>

#include "controller/controller_file.h"
#include "controller/mlp.h"
#include "policy/features.h"
#include "policy/learned.h"
#include "policy/policy.h"

namespace {

kvd::ControllerModel random_model(const std::string& target, int h1, int h2) {
  kvd::ControllerModel m;
  m.target = target;
  m.features = kvd::feature_names();
  const size_t nf = m.features.size();
  m.mean.assign(nf, 0.0);
  m.std.assign(nf, 1.0);
  m.min.assign(nf, -1e9);
  m.max.assign(nf, 1e9);
  m.net = kvd::Mlp({static_cast<int>(nf), h1, h2, target == "damage" ? 3 : 4});
  m.net.init(1);
  if (target == "damage") {
    m.target_mean = {-1.6, -5.5, -11.0};
    m.target_std = {0.7, 1.0, 1.0};
  }
  return m;
}

std::vector<kvd::TokenFeatures> features(int n) {
  kvd::SplitMix64 rng(2);
  std::vector<kvd::TokenFeatures> fs(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) {
    kvd::TokenFeatures& f = fs[static_cast<size_t>(i)];
    f.entropy = static_cast<float>(7 * rng.uniform());
    f.rarity = static_cast<float>(3.4 + 7 * rng.uniform());
    f.attn_var = static_cast<float>(0.1 * rng.uniform());
    f.attn_max = static_cast<float>(0.4 + 0.6 * rng.uniform());
    f.k_norm = static_cast<float>(12 + 20 * rng.uniform());
    f.v_norm = static_cast<float>(3 + 12 * rng.uniform());
    f.max_prob = static_cast<float>(rng.uniform());
    f.position = i;
  }
  return fs;
}

void run(benchmark::State& state, kvd::KvPolicy& p) {
  const std::vector<kvd::TokenFeatures> fs = features(4096);
  size_t i = 0;
  for (auto _ : state) {
    benchmark::DoNotOptimize(p.choose(fs[i]));
    i = (i + 1) % fs.size();
  }
  state.counters["ns_per_token_counter"] = p.decision_cost().ns_per_call();
}

void BM_Learned(benchmark::State& state) {
  const bool damage = state.range(0) != 0;
  const double budget = static_cast<double>(state.range(3));
  auto p = kvd::make_learned_policy(
      random_model(damage ? "damage" : "oracle_bits", static_cast<int>(state.range(1)),
                   static_cast<int>(state.range(2))),
      "bench", budget, kvd::PolicyContext{});
  run(state, *p);
}
// (damage?, H1, H2, budget 0 = none)
BENCHMARK(BM_Learned)
    ->Args({1, 128, 64, 0})
    ->Args({1, 128, 64, 5})
    ->Args({0, 128, 64, 0})
    ->Args({1, 64, 64, 5});

void BM_LearnedFile(benchmark::State& state) {
  const char* path = std::getenv("KVDIAL_CONTROLLER");
  if (!path) {
    state.SkipWithError("set KVDIAL_CONTROLLER=FILE");
    return;
  }
  auto p = kvd::make_policy(std::string("learned:") + path + "@5");
  run(state, *p);
}
BENCHMARK(BM_LearnedFile);

}  // namespace

BENCHMARK_MAIN();
