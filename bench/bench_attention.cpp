// Google Benchmark of attention over the mixed-precision KV cache on SmolLM2-135M's shapes: one decode step
// at 4096 tokens (16, 8, 4, 2 bits, a mixture) and a 512-token prompt, scalar path beside SIMD, GB/s of
// cache bytes read and GFLOP/s (4 * head_dim per query head and key); prints the load average.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "kv/attention.h"
#include "kv/attention_cpu_internal.h"
#include "kv/kv_cache.h"
#include "kv/kv_config.h"
#include "util/thread_pool.h"

namespace kvd {
namespace {

constexpr int kLayers = 30, kHeads = 9, kKvHeads = 3, kHeadDim = 64, kGroup = 32;
constexpr int kContext = 4096, kPrompt = 512;
const AttnShape kShape{kHeads, kKvHeads, kHeadDim};

enum Mix { k16 = 0, k8, k4, k2, kMixed };
const char* kMixNames[] = {"16-bit", "8-bit", "4-bit", "2-bit", "mixed"};

std::vector<uint8_t> widths(int mix, int n, uint32_t seed) {
  static const uint8_t fixed[] = {16, 8, 4, 2};
  std::vector<uint8_t> w(static_cast<size_t>(n));
  std::mt19937 rng(seed);
  for (auto& b : w) b = mix == kMixed ? fixed[rng() % 4] : fixed[mix];
  return w;
}

ThreadPool& pool_of(int n) {
  static ThreadPool one(1), two(2);
  return n == 1 ? one : two;
}

// A cache of `tokens` random tokens at the mix's widths. Decode: moved to the arena, plus one staged
// query token at position `tokens`. Prompt: the whole batch staged and decided, as during its forward.
struct Filled {
  int mix = -1;
  bool prompt = false;
  std::unique_ptr<KvCache> cache;
  double bytes_per_step = 0;  // cache bytes one pass over all layers reads (decode)
};

Filled& filled(int mix, bool prompt) {
  static Filled f;
  if (f.mix == mix && f.prompt == prompt) return f;
  f.cache.reset();
  f.mix = mix;
  f.prompt = prompt;
  const KvLayout layout{kLayers, kKvHeads, kHeadDim, kGroup};
  KvCacheOptions o;
  o.max_tokens = prompt ? kPrompt : kContext + 1;
  f.cache = std::make_unique<KvCache>(layout, o);
  KvCache& c = *f.cache;
  std::mt19937 rng(7);
  std::normal_distribution<float> nd;
  std::vector<float> k(layout.kv_dim()), v(layout.kv_dim());
  const int n = prompt ? kPrompt : kContext;
  const auto w = widths(mix, n, 11);
  for (int b = 0; b < n; b += 256) {
    const int nb = std::min(256, n - b);
    const int first = c.begin_tokens(0, nb, w.data() + b);
    for (int i = 0; i < nb; ++i)
      for (int l = 0; l < kLayers; ++l) {
        for (auto& x : k) x = nd(rng);
        for (auto& x : v) x = nd(rng);
        c.write(0, l, first + i, k.data(), v.data());
      }
    if (!prompt) c.flush_window(0);
  }
  f.bytes_per_step = 0;
  if (!prompt) {
    const int q = c.begin_tokens(0, 1);
    for (int l = 0; l < kLayers; ++l) c.write(0, l, q, k.data(), v.data());
    for (int t = 0; t <= q; ++t)
      f.bytes_per_step += static_cast<double>(layout.token_bytes(c.token(0, 0, t, q).bits));
    f.bytes_per_step *= kLayers;
  }
  return f;
}

std::vector<float> random_q(int n) {
  std::mt19937 rng(5);
  std::normal_distribution<float> nd;
  std::vector<float> q(static_cast<size_t>(n) * kHeads * kHeadDim);
  for (auto& x : q) x = nd(rng);
  return q;
}

void run(bool simd, const KvCache& c, const float* q, int pos0, int n, float* out, AttnStats* st,
         ThreadPool& pool) {
  for (int l = 0; l < kLayers; ++l) {
    if (simd)
      cpu::attend(c, 0, l, kShape, q, pos0, n, out, st, pool);
    else
      cpu::detail::attend_scalar(c, 0, l, kShape, q, pos0, n, out, st, pool);
  }
}

// Args: mix, simd (0 = scalar path, 1 = SIMD), threads, stats (0: none; 1: attention variance and max,
// as the feature-reading policies ask for; 2: those and received attention, as collect's labels do).
void BM_DecodeStep(benchmark::State& state) {
  const int mix = static_cast<int>(state.range(0));
  const bool simd = state.range(1) != 0, with_stats = state.range(3) != 0;
  ThreadPool& pool = pool_of(static_cast<int>(state.range(2)));
  Filled& f = filled(mix, false);
  const auto q = random_q(1);
  std::vector<float> out(q.size()), received(kContext + 1, 0.0f);
  AttnStats st;
  if (state.range(3) == 2) st.received = &received;
  for (auto _ : state) {
    run(simd, *f.cache, q.data(), kContext, 1, out.data(), with_stats ? &st : nullptr, pool);
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  const auto iters = static_cast<double>(state.iterations());
  state.counters["GB/s"] = benchmark::Counter(f.bytes_per_step * iters / 1e9, benchmark::Counter::kIsRate);
  state.counters["GFLOP/s"] = benchmark::Counter(
      4.0 * kHeadDim * kHeads * (kContext + 1) * kLayers * iters / 1e9, benchmark::Counter::kIsRate);
  state.SetLabel(std::string(kMixNames[mix]) + (simd ? " simd " : " scalar ") +
                 std::to_string(state.range(2)) + "thr" +
                 (with_stats ? (st.received ? " stats+received" : " stats") : ""));
}

void DecodeArgs(benchmark::internal::Benchmark* b) {
  b->ArgNames({"mix", "simd", "thr", "stats"});
  for (int mix = k16; mix <= kMixed; ++mix) {
    b->Args({mix, 0, 2, 0});
    b->Args({mix, 1, 2, 0});
    b->Args({mix, 0, 1, 0});
    b->Args({mix, 1, 1, 0});
    b->Args({mix, 1, 2, 1});
    b->Args({mix, 1, 2, 2});
  }
}
BENCHMARK(BM_DecodeStep)->Apply(DecodeArgs)->Unit(benchmark::kMillisecond)->UseRealTime();

// One decode step at 4096 tokens, every token at one static setting (as bench_decode_steps' policies name
// them, ";rotate=0" / ";clip=0" allowed), SIMD, 2 threads: the attention part of those policies' steps.
const char* const kSettings[] = {"static:16",      "static:4;rotate=0",        "static:K5V4g64",
                                 "static:K3V2g64", "static:4;rotate=1;clip=0", "static:4"};

KvLayout layout_of(const std::string& spec) {
  KvQuantOptions q;
  std::string base = spec;
  for (size_t at; (at = base.rfind(';')) != std::string::npos; base.resize(at)) {
    const std::string opt = base.substr(at + 1);
    if (opt.rfind("rotate=", 0) == 0) q.rotate = opt.back() - '0';
    if (opt.rfind("clip=", 0) == 0) q.clip = opt.back() - '0';
  }
  return make_kv_plan(kLayers, kKvHeads, kHeadDim, q, base).layout;
}

void BM_DecodeSetting(benchmark::State& state) {
  const std::string spec = kSettings[state.range(0)];
  static int cached = -1;
  static std::unique_ptr<KvCache> cache;
  const int cls = spec == "static:16" ? 16 : 4;
  if (cached != state.range(0)) {
    cache.reset();
    const KvLayout layout = layout_of(spec);
    KvCacheOptions o;
    o.max_tokens = kContext + 1;
    cache = std::make_unique<KvCache>(layout, o);
    std::mt19937 rng(7);
    std::normal_distribution<float> nd;
    std::vector<float> k(layout.kv_dim()), v(layout.kv_dim());
    const std::vector<uint8_t> w(256, static_cast<uint8_t>(cls));
    for (int b = 0; b < kContext; b += 256) {
      const int first = cache->begin_tokens(0, 256, w.data());
      for (int i = 0; i < 256; ++i)
        for (int l = 0; l < kLayers; ++l) {
          for (auto& x : k) x = nd(rng);
          for (auto& x : v) x = nd(rng);
          cache->write(0, l, first + i, k.data(), v.data());
        }
      cache->flush_window(0);
    }
    const int qt = cache->begin_tokens(0, 1);
    for (int l = 0; l < kLayers; ++l) cache->write(0, l, qt, k.data(), v.data());
    cached = static_cast<int>(state.range(0));
  }
  ThreadPool& pool = pool_of(static_cast<int>(state.range(1)));
  const auto q = random_q(1);
  std::vector<float> out(q.size());
  for (auto _ : state) {
    run(true, *cache, q.data(), kContext, 1, out.data(), nullptr, pool);
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  state.SetLabel(spec + " " + std::to_string(state.range(1)) + "thr");
}
BENCHMARK(BM_DecodeSetting)
    ->ArgNames({"setting", "thr"})
    ->ArgsProduct({{0, 1, 2, 3, 4, 5}, {1, 2}})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

// A 512-token prompt batch attending causally over itself, all layers. Args: mix, simd, threads.
void BM_PromptBatch(benchmark::State& state) {
  const int mix = static_cast<int>(state.range(0));
  const bool simd = state.range(1) != 0;
  ThreadPool& pool = pool_of(static_cast<int>(state.range(2)));
  Filled& f = filled(mix, true);
  const auto q = random_q(kPrompt);
  std::vector<float> out(q.size());
  for (auto _ : state) {
    run(simd, *f.cache, q.data(), 0, kPrompt, out.data(), nullptr, pool);
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  const double pairs = 0.5 * kPrompt * (kPrompt + 1);
  state.counters["GFLOP/s"] = benchmark::Counter(
      4.0 * kHeadDim * kHeads * pairs * kLayers * static_cast<double>(state.iterations()) / 1e9,
      benchmark::Counter::kIsRate);
  state.SetLabel(std::string(kMixNames[mix]) + (simd ? " simd " : " scalar ") +
                 std::to_string(state.range(2)) + "thr");
}
BENCHMARK(BM_PromptBatch)
    ->ArgNames({"mix", "simd", "thr"})
    ->Args({k16, 0, 2})
    ->Args({k16, 1, 2})
    ->Args({k4, 0, 2})
    ->Args({k4, 1, 2})
    ->Args({kMixed, 0, 2})
    ->Args({kMixed, 1, 2})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

std::string load_average() {
  std::ifstream in("/proc/loadavg");
  std::string a, b, c;
  in >> a >> b >> c;
  return a + " " + b + " " + c;
}

}  // namespace
}  // namespace kvd

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::AddCustomContext("load_avg_before", kvd::load_average());
  benchmark::AddCustomContext("attention_simd", kvd::cpu::detail::simd_target_name());
  benchmark::RunSpecifiedBenchmarks();
  std::fprintf(stderr, "load average after: %s\n", kvd::load_average().c_str());
  benchmark::Shutdown();
  return 0;
}
