// Google Benchmark of the matmul kernels on SmolLM2-135M's shapes (dim 576, ffn 1536, kv dim 192,
// vocab 49152; Q4_1 layer weights, Q8_0 output matrix): decode matvecs and 512-token matmuls, fast (fp32
// and int8 activations) next to ref, plus whole-model passes over ~96 MB of distinct weights.
// Counters: GB/s of weight bytes read, GFLOP/s (2 * rows * cols * tokens per call).
#include <benchmark/benchmark.h>

#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "kernels/kernels.h"
#include "util/fp16.h"
#include "util/thread_pool.h"

namespace kvd {
namespace {

using gguf::TensorType;

constexpr int64_t kDim = 576, kFfn = 1536, kKv = 192, kVocab = 49152, kLayers = 30;

// Random blocks with valid half scales; kernel speed does not depend on the values.
std::vector<uint8_t> random_weights(TensorType type, int64_t rows, int64_t cols, uint32_t seed) {
  const gguf::BlockInfo bi = gguf::block_info(type);
  std::vector<uint8_t> data(static_cast<size_t>(rows * cols / bi.elems * bi.bytes));
  std::mt19937 rng(seed);
  for (auto& b : data) b = static_cast<uint8_t>(rng());
  const uint16_t d = float_to_fp16(0.01f), m = float_to_fp16(-0.08f);
  for (size_t off = 0; off < data.size(); off += bi.bytes) {
    switch (type) {
      case TensorType::Q4_1:
      case TensorType::Q5_1:
        std::memcpy(&data[off + 2], &m, 2);
        [[fallthrough]];
      case TensorType::Q4_0:
      case TensorType::Q8_0:
      case TensorType::Q4_K:
      case TensorType::Q5_0:
      case TensorType::Q5_K:
      case TensorType::IQ4_NL:
      case TensorType::IQ4_XS:
        std::memcpy(&data[off], &d, 2);
        break;
      case TensorType::Q2_K:
        std::memcpy(&data[off + 80], &d, 2);
        break;
      case TensorType::Q3_K:
        std::memcpy(&data[off + 108], &d, 2);
        break;
      case TensorType::Q6_K:
        std::memcpy(&data[off + 208], &d, 2);
        break;
      case TensorType::F16:
        std::memcpy(&data[off], &d, 2);
        break;
      case TensorType::BF16:
        data[off] = 0;
        data[off + 1] = 0x3c;
        break;
      case TensorType::F32: {
        const float v = 0.01f;
        std::memcpy(&data[off], &v, 4);
        break;
      }
    }
  }
  return data;
}

struct Weight {
  std::vector<uint8_t> data;
  WeightView view;
  Weight(TensorType type, int64_t rows, int64_t cols, uint32_t seed)
      : data(random_weights(type, rows, cols, seed)) {
    const gguf::BlockInfo bi = gguf::block_info(type);
    view = WeightView{type, data.data(), rows, cols, static_cast<size_t>(cols / bi.elems * bi.bytes)};
  }
};

std::vector<float> random_acts(int64_t n) {
  std::mt19937 rng(3);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> x(static_cast<size_t>(n));
  for (auto& v : x) v = normal(rng);
  return x;
}

ThreadPool& pool_of(int n) {
  static ThreadPool one(1), two(2);
  return n == 1 ? one : two;
}

enum Impl { kFastF32 = 0, kFastQ8 = 1, kRef = 2 };
const char* kImplNames[] = {"fast_f32act", "fast_q8act", "ref"};

void set_counters(benchmark::State& state, double weight_bytes, double flops) {
  const auto iters = static_cast<double>(state.iterations());
  state.counters["GB/s"] = benchmark::Counter(weight_bytes * iters / 1e9, benchmark::Counter::kIsRate);
  state.counters["GFLOP/s"] = benchmark::Counter(flops * iters / 1e9, benchmark::Counter::kIsRate);
}

// Args: type, rows, cols, n_tokens, impl, threads.
void BM_Matmul(benchmark::State& state) {
  const auto type = static_cast<TensorType>(state.range(0));
  const int64_t rows = state.range(1), cols = state.range(2), nt = state.range(3);
  const auto impl = static_cast<Impl>(state.range(4));
  ThreadPool& pool = pool_of(static_cast<int>(state.range(5)));
  const Weight w(type, rows, cols, 1);
  const auto x = random_acts(nt * cols);
  std::vector<float> y(static_cast<size_t>(nt * rows));
  for (auto _ : state) {
    if (impl == kRef) {
      ref::matmul(w.view, x.data(), y.data(), nt);
    } else {
      cpu::matmul(w.view, x.data(), y.data(), nt, pool, impl == kFastQ8 ? ActQuant::Q8 : ActQuant::F32);
    }
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  set_counters(state, static_cast<double>(w.data.size()), 2.0 * rows * cols * nt);
  state.SetLabel(std::string(kImplNames[impl]) + " " + std::to_string(state.range(5)) + "thr");
}

void MatmulArgs(benchmark::internal::Benchmark* b) {
  b->ArgNames({"type", "rows", "cols", "tok", "impl", "thr"});
  const int64_t q41 = static_cast<int64_t>(TensorType::Q4_1), q80 = static_cast<int64_t>(TensorType::Q8_0);
  const int64_t shapes[][3] = {
      {q41, kDim, kDim}, {q41, kKv, kDim}, {q41, kFfn, kDim}, {q41, kDim, kFfn}, {q80, kVocab, kDim}};
  for (const auto& s : shapes) {
    for (int impl : {kFastF32, kFastQ8}) b->Args({s[0], s[1], s[2], 1, impl, 2});
    for (int impl : {kFastF32, kFastQ8}) b->Args({s[0], s[1], s[2], 1, impl, 1});
    b->Args({s[0], s[1], s[2], 1, kRef, 1});
  }
  for (const auto& s : shapes) {
    b->Args({s[0], s[1], s[2], 512, kFastF32, 2});
    b->Args({s[0], s[1], s[2], 512, kFastF32, 1});
    if (s[1] != kVocab) b->Args({s[0], s[1], s[2], 512, kRef, 1});
  }
  // Other weight types at an FFN shape (K-quants need cols % 256 == 0: the down projection), decode and
  // prompt.
  for (TensorType t :
       {TensorType::F32, TensorType::F16, TensorType::BF16, TensorType::Q4_0, TensorType::Q8_0,
        TensorType::Q4_K, TensorType::Q6_K, TensorType::Q5_0, TensorType::Q5_1, TensorType::IQ4_NL,
        TensorType::Q2_K, TensorType::Q3_K, TensorType::Q5_K, TensorType::IQ4_XS}) {
    const bool k_quant = gguf::block_info(t).elems == 256;
    const int64_t rows = k_quant ? kDim : kFfn, cols = k_quant ? kFfn : kDim;
    b->Args({static_cast<int64_t>(t), rows, cols, 1, kFastF32, 2});
    b->Args({static_cast<int64_t>(t), rows, cols, 512, kFastF32, 2});
  }
  // Token counts between decode and prompt (where the GEMM takes over).
  for (int64_t nt : {2, 3, 4, 8, 16, 64}) b->Args({q41, kFfn, kDim, nt, kFastF32, 2});
}
BENCHMARK(BM_Matmul)->Apply(MatmulArgs)->Unit(benchmark::kMicrosecond)->UseRealTime();

// The model's matmuls for n tokens over distinct weights for every layer (so nothing is reused from
// cache between layers), as a forward pass issues them.
struct Model {
  std::vector<Weight> layers;  // per layer: q, k, v, o, gate, up, down
  std::unique_ptr<Weight> out;
  double bytes = 0, params = 0;
  Model() {
    for (int64_t l = 0; l < kLayers; ++l) {
      const auto s = static_cast<uint32_t>(l * 7);
      layers.emplace_back(TensorType::Q4_1, kDim, kDim, s + 1);
      layers.emplace_back(TensorType::Q4_1, kKv, kDim, s + 2);
      layers.emplace_back(TensorType::Q4_1, kKv, kDim, s + 3);
      layers.emplace_back(TensorType::Q4_1, kDim, kDim, s + 4);
      layers.emplace_back(TensorType::Q4_1, kFfn, kDim, s + 5);
      layers.emplace_back(TensorType::Q4_1, kFfn, kDim, s + 6);
      layers.emplace_back(TensorType::Q4_1, kDim, kFfn, s + 7);
    }
    out = std::make_unique<Weight>(TensorType::Q8_0, kVocab, kDim, 999);
    for (const auto& w : layers) {
      bytes += static_cast<double>(w.data.size());
      params += static_cast<double>(w.view.rows * w.view.cols);
    }
    bytes += static_cast<double>(out->data.size());
    params += static_cast<double>(kVocab * kDim);
  }
};

Model& model() {
  static Model m;
  return m;
}

// Args: n_tokens, act (0 = F32, 1 = Q8), threads, include output matrix (0/1).
void BM_ModelMatmuls(benchmark::State& state) {
  Model& m = model();
  const int64_t nt = state.range(0);
  const ActQuant act = state.range(1) ? ActQuant::Q8 : ActQuant::F32;
  ThreadPool& pool = pool_of(static_cast<int>(state.range(2)));
  const bool with_out = state.range(3) != 0;
  const auto x = random_acts(nt * kFfn);
  std::vector<float> y(static_cast<size_t>(nt * kVocab));
  for (auto _ : state) {
    for (const auto& w : m.layers) cpu::matmul(w.view, x.data(), y.data(), nt, pool, act);
    if (with_out) cpu::matmul(m.out->view, x.data(), y.data(), nt, pool, act);
    benchmark::ClobberMemory();
  }
  const double out_bytes = with_out ? 0 : static_cast<double>(m.out->data.size());
  const double out_params = with_out ? 0 : static_cast<double>(kVocab * kDim);
  set_counters(state, m.bytes - out_bytes, 2.0 * (m.params - out_params) * static_cast<double>(nt));
  state.counters["tok/s"] =
      benchmark::Counter(static_cast<double>(nt * state.iterations()), benchmark::Counter::kIsRate);
  state.SetLabel(std::string(act == ActQuant::Q8 ? "q8act" : "f32act") + " " +
                 std::to_string(state.range(2)) + "thr" + (with_out ? "" : " no-output"));
}
BENCHMARK(BM_ModelMatmuls)
    ->ArgNames({"tok", "q8", "thr", "out"})
    ->Args({1, 0, 2, 1})
    ->Args({1, 1, 2, 1})
    ->Args({1, 0, 1, 1})
    ->Args({1, 1, 1, 1})
    ->Args({512, 0, 2, 1})
    ->Args({512, 0, 2, 0})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

// Streaming read bandwidth of the same ~96 MB with the same threads: the decode ceiling.
void BM_MemoryRead(benchmark::State& state) {
  Model& m = model();
  ThreadPool& pool = pool_of(static_cast<int>(state.range(0)));
  std::vector<const Weight*> all;
  for (const auto& w : m.layers) all.push_back(&w);
  all.push_back(m.out.get());
  for (auto _ : state) {
    for (const Weight* w : all) {
      const auto* p = reinterpret_cast<const uint64_t*>(w->data.data());
      const int64_t n = static_cast<int64_t>(w->data.size() / 8);
      pool.parallel_for(n / 64, [&](int64_t b, int64_t e) {
        uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
        for (int64_t i = b * 64; i < e * 64; i += 4) {
          s0 += p[i];
          s1 ^= p[i + 1];
          s2 += p[i + 2];
          s3 ^= p[i + 3];
        }
        benchmark::DoNotOptimize(s0 + s1 + s2 + s3);
      });
    }
  }
  set_counters(state, m.bytes, 0);
}
BENCHMARK(BM_MemoryRead)->Arg(1)->Arg(2)->Unit(benchmark::kMillisecond)->UseRealTime();

}  // namespace
}  // namespace kvd

BENCHMARK_MAIN();
