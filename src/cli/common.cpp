#include "cli/common.h"

#include <cstdio>

#include "util/error.h"

namespace kvd::cli {

void add_engine_options(CLI::App* app, EngineOptions& o, bool with_ctx) {
  app->add_option("-m,--model", o.model_path, "GGUF model file (Llama family)")->required();
  app->add_option("-t,--threads", o.threads, "threads (default: physical cores)")->check(CLI::Range(0, 1024));
  if (with_ctx)
    app->add_option("-c,--ctx-size", o.ctx, "context size in tokens")->check(CLI::Range(8, 1 << 20));
  app->add_option("-b,--batch-size", o.batch, "tokens per forward batch")->check(CLI::Range(1, 8192));
  app->add_option("--backend", o.backend,
                  "cpu (fast), cpu-q8 (cpu with 8-bit activations in decode matmuls, as llama.cpp: faster, "
                  "less exact) or ref (plain reference loops)")
      ->check(CLI::IsMember({"cpu", "cpu-q8", "ref"}));
  app->add_option("--kv-policy", o.kv_policy,
                  "static:B (B=2,4,8,16), rule[:T1,T2,T3], pattern:W1/W2/.. or learned:FILE");
  app->add_option("--kv-budget", o.kv_budget,
                  "stored bits per element (scales included) the policy's running average keeps to, from the "
                  "32nd token on (same as appending @BITS to the policy)")
      ->check(CLI::Range(0.0, 64.0));
  app->add_flag("--no-mmap", o.no_mmap,
                "read the model into this process's memory instead of mapping it (as llama.cpp's --no-mmap)");
  app->add_option("--kv-group", o.kv_group, "KV quantization group size (elements)")
      ->check(CLI::Range(4, 256));
  app->add_option("--kv-residual", o.kv_residual, "newest tokens kept at 16 bits")
      ->check(CLI::Range(0, 1 << 20));
}

std::string policy_spec(const EngineOptions& o) {
  if (o.kv_budget <= 0) return o.kv_policy;
  if (o.kv_policy.find('@') != std::string::npos)
    throw Error("--kv-budget: the policy '" + o.kv_policy + "' already has a budget (@B)");
  char buf[32];
  std::snprintf(buf, sizeof buf, "@%.9g", o.kv_budget);
  return o.kv_policy + buf;
}

PolicyContext policy_context(const EngineOptions& o) {
  PolicyContext ctx;
  const KvLayout lay{1, 1, o.kv_group, o.kv_group};  // stored bits per element do not depend on kv_dim
  const int widths[4] = {2, 4, 8, 16};
  for (size_t k = 0; k < 4; ++k) ctx.class_bits[k] = lay.effective_bits(widths[k]);
  return ctx;
}

Engine make_engine(const EngineOptions& o, int ctx_override, std::shared_ptr<Model> model) {
  Engine e;
  e.policy = make_policy(policy_spec(o), policy_context(o));  // check the cheap things before mapping the model
  e.model = model ? std::move(model) : std::shared_ptr<Model>(Model::load(o.model_path, !o.no_mmap));
  e.backend = make_backend(o.backend, o.threads);
  const ModelConfig& c = e.model->config();
  KvLayout layout{c.n_layers, c.n_kv_heads, c.head_dim, o.kv_group};
  KvCacheOptions kopt;
  kopt.max_tokens = ctx_override > 0 ? ctx_override : o.ctx;
  kopt.residual = o.kv_residual;
  e.cache = std::make_unique<KvCache>(layout, kopt);
  e.session = std::make_unique<Session>(*e.model, *e.backend, *e.cache, 0, o.batch);
  return e;
}

std::string human_bytes(double b) {
  char buf[64];
  if (b >= 1024.0 * 1024 * 1024)
    std::snprintf(buf, sizeof buf, "%.2f GiB", b / (1024.0 * 1024 * 1024));
  else if (b >= 1024.0 * 1024)
    std::snprintf(buf, sizeof buf, "%.2f MiB", b / (1024.0 * 1024));
  else if (b >= 1024.0)
    std::snprintf(buf, sizeof buf, "%.1f KiB", b / 1024.0);
  else
    std::snprintf(buf, sizeof buf, "%.0f B", b);
  return buf;
}

std::string kv_summary(const KvCache& cache, int seq) {
  const KvStats s = cache.stats(seq);
  char buf[256];
  auto share = [&](int b) {
    return s.tokens ? 100.0 * static_cast<double>(s.tokens_at_bits[b]) / s.tokens : 0.0;
  };
  std::snprintf(
      buf, sizeof buf,
      "KV cache: %lld tokens, %.3f bits/elem stored (avg width %.2f), %s stored (%zu B), %s allocated; "
      "2: %.1f%%, 4: %.1f%%, 8: %.1f%%, 16: %.1f%%",
      static_cast<long long>(s.tokens), s.effective_bits, s.avg_bits(),
      human_bytes(static_cast<double>(s.bytes_stored)).c_str(), s.bytes_stored,
      human_bytes(static_cast<double>(s.bytes_allocated)).c_str(), share(2), share(4), share(8), share(16));
  return buf;
}

}  // namespace kvd::cli
