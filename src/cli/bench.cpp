// kvdial bench: llama-bench's tests (pp = prompt processing of P tokens, tg = generation of N tokens,
// each after D tokens already in the cache) for one or more KV policies, as a Markdown table, CSV or
// JSON. Speed is reported as mean +/- standard deviation over repetitions, beside the KV bytes per
// token read and the peak RSS of this process.
#include "cli/bench.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>

#include "eval/runner.h"
#include "kernels/kernels.h"
#include "util/error.h"
#include "util/strings.h"
#include "util/sysinfo.h"
#include "util/thread_pool.h"

namespace kvd::cli {
namespace {

using Clock = std::chrono::steady_clock;

struct Row {
  std::string policy, test;
  double mean = 0, stddev = 0;
  std::vector<double> samples;
  double kv_bytes = 0;  // KV bytes stored at the end of a repetition
  double kv_bits = 0;   // stored bits per element, scales included
  double avg_width = 0;
  double weight_bytes = 0;
  double vram_engine = 0, vram_device = 0;  // peak device memory (engines with one), bytes
};

}  // namespace

void add_bench_options(CLI::App* app, BenchArgs& a) {
  add_engine_options(app, a.eng, false);
  app->add_option("-p,--n-prompt", a.n_prompt, "prompt tokens, comma-separated (0 = skip)");
  app->add_option("-n,--n-gen", a.n_gen, "generated tokens, comma-separated (0 = skip)");
  app->add_option("-d,--n-depth", a.depth, "tokens already in the cache, comma-separated");
  app->add_option("-r,--repetitions", a.reps, "repetitions of each test")->check(CLI::Range(1, 1000));
  app->add_option("-o,--output", a.output, "md, csv or json")->check(CLI::IsMember({"md", "csv", "json"}));
  app->add_option("--out-file", a.out_file, "also write the table to this file");
  app->add_flag("--progress", a.progress, "print progress to stderr");
  app->add_flag("!--no-warmup", a.warmup,
                "time the first run too (default: one untimed warm-up run per test)");
}

int run_bench(const BenchArgs& a) {
  const std::vector<int> prompts = split_ints(a.n_prompt, "-p"), gens = split_ints(a.n_gen, "-n"),
                         depths = split_ints(a.depth, "-d");
  const std::vector<std::string> policies = split(a.eng.kv_policy, ',');
  if (policies.empty()) throw Error("--kv-policy: no policy given");
  int max_ctx = 16;
  for (int d : depths)
    for (int p : prompts)
      for (int g : gens) max_ctx = std::max(max_ctx, d + std::max(p, g) + 1);
  std::vector<Row> rows;
  std::vector<std::string> memory;  // per policy, for engines with device memory
  std::shared_ptr<Model> model;
  for (const std::string& pol : policies) {
    EngineOptions eo = a.eng;
    eo.kv_policy = pol;
    Engine e = make_engine(eo, max_ctx, model);
    if (!model) model = e.model;
    const int vocab = e.model->config().vocab;
    std::mt19937 rng(1234);
    std::uniform_int_distribution<int32_t> tok(3, vocab - 1);
    auto random_tokens = [&](int n) {
      std::vector<int32_t> v(static_cast<size_t>(n));
      for (auto& t : v) t = tok(rng);
      return v;
    };
    for (int depth : depths) {
      // Fill the cache to the depth once; every repetition rewinds to it.
      e.session->clear();
      PolicyRunner filler(*e.session, *e.policy);
      if (depth > 0) {
        if (a.progress) std::fprintf(stderr, "bench: %s: filling %d tokens of context\n", pol.c_str(), depth);
        filler.prefill(random_tokens(depth));
      }
      auto run_test = [&](const std::string& name, int n, bool prompt) {
        Row r;
        r.policy = e.policy_name;
        r.test = name + (depth > 0 ? " @ d" + std::to_string(depth) : "");
        auto run_once = [&](const std::vector<int32_t>& toks) {
          e.session->truncate(depth);
          PolicyRunner runner(*e.session, *e.policy);
          if (prompt) {
            runner.prefill(toks);
          } else {
            for (int32_t t : toks) runner.step(t);
          }
        };
        // First-use costs (cuBLAS handles and kernels, page faults) stay out of the figures.
        if (a.warmup) run_once(random_tokens(n));
        for (int rep = 0; rep < a.reps; ++rep) {
          const std::vector<int32_t> toks = random_tokens(n);
          const auto t0 = Clock::now();
          run_once(toks);
          const double s = std::chrono::duration<double>(Clock::now() - t0).count();
          r.samples.push_back(n / s);
          const KvStats st = e.session->kv_stats();
          r.kv_bytes = static_cast<double>(st.bytes_stored);
          r.kv_bits = st.effective_bits;
          r.avg_width = st.avg_bits();
          r.vram_engine = static_cast<double>(e.session->device_engine_peak_bytes());
          r.vram_device = static_cast<double>(e.session->device_used_peak_bytes());
          if (a.progress)
            std::fprintf(stderr, "bench: %s %s rep %d: %.2f t/s\n", pol.c_str(), r.test.c_str(), rep + 1,
                         n / s);
        }
        double sum = 0, sq = 0;
        for (double v : r.samples) sum += v;
        r.mean = sum / static_cast<double>(r.samples.size());
        for (double v : r.samples) sq += (v - r.mean) * (v - r.mean);
        r.stddev = r.samples.size() > 1 ? std::sqrt(sq / static_cast<double>(r.samples.size() - 1)) : 0;
        rows.push_back(r);
      };
      for (int p : prompts)
        if (p > 0) run_test("pp" + std::to_string(p), p, true);
      for (int g : gens)
        if (g > 0) run_test("tg" + std::to_string(g), g, false);
    }
    if (!e.session->memory_summary().empty())
      memory.push_back(e.policy_name + ": " + e.session->memory_summary());
  }

  const Model& m = *model;
  char size[64], params[64];
  std::snprintf(size, sizeof size, "%.2f MiB", static_cast<double>(m.file_bytes()) / (1024.0 * 1024.0));
  std::snprintf(params, sizeof params, "%.2f M", static_cast<double>(m.n_params()) / 1e6);
  const std::string model_name = m.config().arch + " " + (m.config().name.empty() ? "?" : m.config().name);
  const int threads =
      a.eng.backend == "ref" ? 1 : (a.eng.threads > 0 ? a.eng.threads : default_thread_count());
  const std::string backend = a.eng.device == "cuda" ? "cuda" : a.eng.backend;
  std::ostringstream out;
  if (a.output == "json") {
    nlohmann::json j = nlohmann::json::array();
    for (const Row& r : rows)
      j.push_back({{"model", model_name},
                   {"size_bytes", m.file_bytes()},
                   {"n_params", m.n_params()},
                   {"backend", backend},
                   {"simd", cpu::simd_target()},
                   {"threads", threads},
                   {"kv_policy", r.policy},
                   {"kv_group", a.eng.kv_group},
                   {"kv_residual", a.eng.kv_residual},
                   {"test", r.test},
                   {"avg_ts", r.mean},
                   {"stddev_ts", r.stddev},
                   {"samples_ts", r.samples},
                   {"kv_bytes", r.kv_bytes},
                   {"kv_bits_per_elem", r.kv_bits},
                   {"kv_avg_width", r.avg_width},
                   {"peak_rss_bytes", peak_rss_bytes()},
                   {"vram_engine_peak_bytes", r.vram_engine},
                   {"vram_device_used_peak_bytes", r.vram_device}});
    out << j.dump(2) << "\n";
  } else if (a.output == "csv") {
    out << "model,size_bytes,n_params,backend,threads,kv_policy,kv_group,kv_residual,test,avg_ts,stddev_ts,"
           "kv_bytes,"
           "kv_bits_per_elem,peak_rss_bytes\n";
    for (const Row& r : rows)
      out << '"' << model_name << "\"," << m.file_bytes() << ',' << m.n_params() << ',' << backend << ','
          << threads << ',' << r.policy << ',' << a.eng.kv_group << ',' << a.eng.kv_residual << ',' << r.test
          << ',' << r.mean << ',' << r.stddev << ',' << r.kv_bytes << ',' << r.kv_bits << ','
          << peak_rss_bytes() << "\n";
  } else {
    out << "| model | size | params | backend | threads | kv | test | t/s | KV MiB | KV bits/elem |\n";
    out << "| --- | ---: | ---: | --- | ---: | --- | ---: | ---: | ---: | ---: |\n";
    for (const Row& r : rows) {
      char ts[64], kvb[32], bits[32];
      std::snprintf(ts, sizeof ts, "%.2f ± %.2f", r.mean, r.stddev);
      std::snprintf(kvb, sizeof kvb, "%.2f", r.kv_bytes / (1024.0 * 1024.0));
      std::snprintf(bits, sizeof bits, "%.2f", r.kv_bits);
      out << "| " << model_name << " | " << size << " | " << params << " | " << backend << " | " << threads
          << " | " << r.policy << (a.eng.kv_residual ? " r" + std::to_string(a.eng.kv_residual) : "") << " | "
          << r.test << " | " << ts << " | " << kvb << " | " << bits << " |\n";
    }
    out << "\npeak RSS " << human_bytes(static_cast<double>(peak_rss_bytes())) << "; model load "
        << m.load_seconds() << " s; SIMD " << cpu::simd_target() << "\n";
    for (const std::string& line : memory) out << "\n" << line << "\n";
  }
  std::fputs(out.str().c_str(), stdout);
  if (!a.out_file.empty()) {
    FILE* f = std::fopen(a.out_file.c_str(), "w");
    if (!f) throw Error(a.out_file + ": cannot write");
    std::fputs(out.str().c_str(), f);
    std::fclose(f);
  }
  return 0;
}

}  // namespace kvd::cli
