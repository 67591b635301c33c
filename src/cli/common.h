// Options shared by the kvdial subcommands (model, threads, context, backend, KV cache) and the
// helpers that build the engine from them.
#pragma once
#include <CLI/CLI.hpp>
#include <memory>
#include <string>

#include "kv/kv_cache.h"
#include "kv/kv_config.h"
#include "model/backend.h"
#include "model/forward.h"
#include "model/model.h"
#include "policy/policy.h"

namespace kvd::cli {

struct EngineOptions {
  std::string model_path;
  int threads = 0;  // 0 = physical cores
  int ctx = 4096;
  // Tokens per forward batch. 256 runs prompts as fast as 512 here (pp512 660 vs 639 t/s) and peaks
  // 18.7 MiB lower: a batch's activations and fp16 KV staging scale with it.
  int batch = 256;
  std::string backend = "cpu";
  std::string device = "cpu";  // cpu, or cuda: the whole forward pass on the GPU (cuda/gpu_session.h)
  bool no_mmap = false;        // read the model into memory instead of mapping it
  std::string kv_policy = "static:16";
  int kv_group = 32;
  int kv_residual = 0;
  std::string kv_ladder = kDefaultKvLadder;
  int kv_rotate = 1;
  int kv_clip = -1;
  KvQuantOptions kv_quant() const { return KvQuantOptions{kv_group, kv_ladder, kv_rotate, kv_clip}; }
  double kv_budget = 0;  // > 0: stored bits per element the policy's running average keeps to (spec@B)
};

// The policy spec the options ask for: kv_policy, with @kv_budget appended when a budget is given.
std::string policy_spec(const EngineOptions& o);
// What the policy needs to know about the cache: the stored bits of each width class and the quantizer id.
PolicyContext policy_context(const KvLayout& layout);

void add_engine_options(CLI::App* app, EngineOptions& o, bool with_ctx = true);

// Everything one run needs, built from the options. With --device cuda, backend and cache stay empty:
// the GPU session owns its memory.
struct Engine {
  std::shared_ptr<Model> model;
  std::unique_ptr<Backend> backend;
  std::unique_ptr<KvCache> cache;
  std::unique_ptr<KvPolicy> policy;
  std::unique_ptr<SessionBase> session;
  std::string
      policy_name;  // the policy as the user named it (static:K5V4g64 runs as static:4 over that setting)
};
// The options with a policy spec that may carry quantizer options for this policy alone:
// "SPEC;rotate=0;clip=0;ladder=L" (compare and the benchmarks put the original cache beside v2 this way).
EngineOptions with_policy(const EngineOptions& base, const std::string& spec);

// Loads the model unless one is given (benchmarks share one mapping across policies).
// Throws kvd::Error for options make_engine would refuse before it maps a model (policy, ladder, group).
void check_engine_options(const EngineOptions& o);
Engine make_engine(const EngineOptions& o, int ctx_override = 0, std::shared_ptr<Model> model = nullptr);

// "KV cache: 1234 tokens, 5.00 bits/elem (avg width 4.00), 12.3 MiB; 2: 0%, 4: 100%, 8: 0%, 16: 0%"
std::string kv_summary(const KvStats& stats, const KvLayout& layout);
std::string human_bytes(double bytes);

}  // namespace kvd::cli
