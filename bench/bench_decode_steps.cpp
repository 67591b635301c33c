// Decode steps of several KV policies at the same depth, side by side: the policies take turns step by
// step (the order rotating), each rewound to the depth after every step, so the machine's noise hits all
// alike; medians over the steps and ratios to the first policy. Two uses:
//  - speed follows memory: --kv-policy static:16,static:8,static:4,static:2,pattern:2/2/8
//  - what the saliency features cost: a static policy beside a rule whose thresholds give every token the
//    same width (rule:0/0/0 -> 16 bits, rule:0/100/100 -> 4 bits): the only difference is the feature work
//    (attention variance and max inside the attention kernel, key and value norms, the entropy pass over
//    the logits) and deciding after the forward pass instead of before.
//
//   bench_decode_steps [-m MODEL] [-d 0,4096] [-n 300] [-t 2] [--backend cpu] [--kv-policy P1,P2,..] [--kv-rotate 0|1]
//   [--kv-clip 0|1] [--kv-ladder L] [--kv-group G] [--out
//   FILE]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <type_traits>
#include <vector>

#include "eval/runner.h"
#include "kv/kv_cache.h"
#include "kv/kv_config.h"
#include "model/backend.h"
#include "model/forward.h"
#include "model/model.h"
#include "policy/policy.h"
#include "policy/policy_context.h"
#include "util/error.h"

namespace kvd {
namespace {

struct Options {
  std::string model = "models/SmolLM2-135M-Instruct.Q4_1.gguf";
  std::vector<int> depths = {0, 4096};
  std::vector<std::string> policies = {"static:16", "rule:0/0/0"};
  int steps = 300;
  int threads = 2;
  std::string backend = "cpu";
  std::string out;
  KvQuantOptions quant;
};

template <class T>
std::vector<T> parse_list(const std::string& s) {
  std::vector<T> v;
  std::stringstream ss(s);
  std::string part;
  while (std::getline(ss, part, ',')) {
    if constexpr (std::is_same_v<T, int>)
      v.push_back(std::stoi(part));
    else
      v.push_back(part);
  }
  return v;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

int run(const Options& o) {
  std::shared_ptr<Model> model(Model::load(o.model));
  std::unique_ptr<Backend> backend = make_backend(o.backend, o.threads);
  const ModelConfig& c = model->config();
  const int np = static_cast<int>(o.policies.size());
  std::vector<std::unique_ptr<KvPolicy>> policies;
  std::vector<KvPlan> plans;
  for (const auto& spec : o.policies) {
    // "SPEC;rotate=0" (or ;clip=0/1): quantizer options for this policy alone (e.g. the original cache beside v2).
    KvQuantOptions q = o.quant;
    std::string base = spec;
    for (size_t at; (at = base.rfind(';')) != std::string::npos; base.resize(at)) {
      const std::string opt = base.substr(at + 1);
      if (opt == "rotate=0" || opt == "rotate=1")
        q.rotate = opt.back() - '0';
      else if (opt == "clip=0" || opt == "clip=1")
        q.clip = opt.back() - '0';
      else
        throw Error("--kv-policy " + spec + ": unknown option '" + opt + "' (rotate=0|1, clip=0|1)");
    }
    plans.push_back(make_kv_plan(c.n_layers, c.n_kv_heads, c.head_dim, q, base));
    policies.push_back(make_policy(plans.back().policy_spec, policy_context_for(plans.back().layout)));
  }
  std::mt19937 rng(7);
  std::uniform_int_distribution<int32_t> tok(0, c.vocab - 1);
  std::ostringstream table;
  table << "Decode steps side by side (" << o.model.substr(o.model.find_last_of('/') + 1) << ", " << o.backend
        << ", " << o.threads << " threads, median of " << o.steps
        << " steps per policy, policies taking turns)\n\n"
        << "| depth | kv | bits/elem | KV MiB | ms/token | t/s | vs " << o.policies[0] << " (speed) |\n"
        << "| ---: | --- | ---: | ---: | ---: | ---: | ---: |\n";
  for (int depth : o.depths) {
    std::vector<int32_t> prompt(static_cast<size_t>(depth));
    for (auto& t : prompt) t = tok(rng);
    KvCacheOptions kopt;
    kopt.max_tokens = depth + 8;
    // One cache per policy: static settings differ in layout.
    std::vector<std::unique_ptr<KvCache>> caches;
    std::vector<std::unique_ptr<Session>> sessions;
    std::vector<std::unique_ptr<PolicyRunner>> runners;
    for (int p = 0; p < np; ++p) {
      caches.push_back(std::make_unique<KvCache>(plans[static_cast<size_t>(p)].layout, kopt));
      sessions.push_back(std::make_unique<Session>(*model, *backend, *caches.back(), 0));
      runners.push_back(std::make_unique<PolicyRunner>(*sessions.back(), *policies[static_cast<size_t>(p)]));
      if (depth > 0) runners.back()->prefill(prompt);
    }
    std::vector<KvStats> kv(static_cast<size_t>(np));
    for (int p = 0; p < np; ++p) kv[static_cast<size_t>(p)] = caches[static_cast<size_t>(p)]->stats(0);
    std::vector<std::vector<double>> ms(static_cast<size_t>(np));
    constexpr int kWarmup = 10;
    for (int i = 0; i < o.steps + kWarmup; ++i) {
      const int32_t t = tok(rng);
      for (int k = 0; k < np; ++k) {
        const int p = (i + k) % np;  // rotate the order
        const auto t0 = std::chrono::steady_clock::now();
        runners[static_cast<size_t>(p)]->step(t);
        const auto t1 = std::chrono::steady_clock::now();
        caches[static_cast<size_t>(p)]->truncate(0, depth);
        if (i >= kWarmup)
          ms[static_cast<size_t>(p)].push_back(std::chrono::duration<double, std::milli>(t1 - t0).count());
      }
    }
    const double base = median(ms[0]);
    for (int p = 0; p < np; ++p) {
      const double m = median(ms[static_cast<size_t>(p)]);
      const KvStats& st = kv[static_cast<size_t>(p)];
      char row[320];
      std::snprintf(row, sizeof row, "| %d | %s | %.2f | %.2f | %.3f | %.1f | %.2fx |\n", depth,
                    o.policies[static_cast<size_t>(p)].c_str(), depth > 0 ? st.effective_bits : 0.0,
                    static_cast<double>(st.bytes_stored) / (1024.0 * 1024.0), m, 1000.0 / m, base / m);
      table << row;
    }
    std::fprintf(stderr, "bench_decode_steps: depth %d done\n", depth);
  }
  std::printf("\n%s", table.str().c_str());
  if (!o.out.empty()) {
    std::ofstream f(o.out);
    if (!f) throw Error("cannot write " + o.out);
    f << table.str();
  }
  return 0;
}

}  // namespace
}  // namespace kvd

int main(int argc, char** argv) {
  kvd::Options o;
  try {
    for (int i = 1; i < argc; ++i) {
      const std::string a = argv[i];
      auto next = [&]() -> std::string {
        if (i + 1 >= argc) throw kvd::Error(a + " needs a value");
        return argv[++i];
      };
      if (a == "-m")
        o.model = next();
      else if (a == "-d")
        o.depths = kvd::parse_list<int>(next());
      else if (a == "--kv-policy")
        o.policies = kvd::parse_list<std::string>(next());
      else if (a == "-n")
        o.steps = std::stoi(next());
      else if (a == "-t")
        o.threads = std::stoi(next());
      else if (a == "--kv-rotate")
        o.quant.rotate = std::stoi(next());
      else if (a == "--kv-clip")
        o.quant.clip = std::stoi(next());
      else if (a == "--kv-ladder")
        o.quant.ladder = next();
      else if (a == "--kv-group")
        o.quant.group = std::stoi(next());
      else if (a == "--backend")
        o.backend = next();
      else if (a == "--out")
        o.out = next();
      else
        throw kvd::Error("unknown argument '" + a +
                         "' (use -m MODEL -d DEPTHS -n STEPS -t THREADS --backend cpu|cpu-q8 --kv-policy "
                         "P1,P2,.. --out FILE)");
    }
    if (o.steps < 1) throw kvd::Error("-n must be at least 1");
    if (o.policies.empty()) throw kvd::Error("--kv-policy needs at least one policy");
    return kvd::run(o);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_decode_steps: %s\n", e.what());
    return 1;
  }
}
