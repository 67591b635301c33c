#include "cli/common.h"

#include <cstdio>

#include "cli/gpu_loader.h"
#include "cuda/gpu_session.h"
#include "kv/kv_setting.h"
#include "policy/policy_context.h"
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
  app->add_option("--device", o.device, "cpu, or cuda: the whole forward pass on the GPU (alias -dev)")
      ->check(CLI::IsMember({"cpu", "cuda"}));
  app->add_option("--kv-policy", o.kv_policy,
                  "static:B (B=2,4,8,16) or static:SETTING (e.g. static:K5V4g64), rule[:T1,T2,T3], "
                  "pattern:W1/W2/.. or learned:FILE");
  app->add_option("--kv-ladder", o.kv_ladder,
                  "stored setting of each width class of dynamic policies (default " +
                      std::string(kDefaultKvLadder) + ")");
  app->add_option("--kv-rotate", o.kv_rotate,
                  "randomized Hadamard rotation of quantized K/V (1, default) or none (0)")
      ->check(CLI::Range(0, 1));
  app->add_option("--kv-clip", o.kv_clip, "per-group MSE clip search (1/0; default: as --kv-rotate)")
      ->check(CLI::Range(0, 1));
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

PolicyContext policy_context(const KvLayout& layout) { return policy_context_for(layout); }

void check_engine_options(const EngineOptions& o) {
  const KvPlan pre =
      make_kv_plan(1, 1, 64, KvQuantOptions{o.kv_group, o.kv_ladder, 0, o.kv_clip}, policy_spec(o));
  PolicyContext ctx = policy_context(pre.layout);
  ctx.quantizer.clear();  // the controller file's quantizer is checked against the model's layout later
  make_policy(pre.policy_spec, ctx);
}

Engine make_engine(const EngineOptions& o, int ctx_override, std::shared_ptr<Model> model) {
  Engine e;
  check_engine_options(o);                      // the cheap things, before mapping the model
  if (o.device == "cuda") cuda::load_module();  // a missing or unloadable module fails before the model maps
  e.model = model ? std::move(model) : std::shared_ptr<Model>(Model::load(o.model_path, !o.no_mmap));
  const ModelConfig& c = e.model->config();
  const KvPlan plan = make_kv_plan(c.n_layers, c.n_kv_heads, c.head_dim, o.kv_quant(), policy_spec(o));
  e.policy = make_policy(plan.policy_spec, policy_context(plan.layout));
  e.policy_name = plan.display;
  if (o.device == "cuda") {
    // The GPU cache stores the original format: K = V width in {2, 4, 8, 16}, one group, no rotation.
    const KvLayout& l = plan.layout;
    int group = o.kv_group;
    for (int cls : kKvClasses) {
      const KvSetting s = l.setting(cls);
      if (s.kbits != s.vbits || !kv_bits_valid(s.kbits) || (s.kbits != 16 && s.kgroup != s.vgroup) ||
          (s.kbits != 16 && s.kgroup != o.kv_group))
        throw Error(
            "--device cuda: the GPU cache stores K = V at 2, 4, 8 or 16 bits in groups of --kv-group; '" +
            format_kv_setting(s) +
            "' is not (use static:B with --kv-rotate 0; pattern policies also need --kv-ladder "
            "2=K2V2g32,4=K4V4g32,8=K8V8g32,16=F16)");
    }
    if (l.rotate || l.clip)
      throw Error("--device cuda: the GPU cache has no rotation or clipping yet: add --kv-rotate 0");
    cuda::GpuOptions g;
    g.max_tokens = ctx_override > 0 ? ctx_override : o.ctx;
    g.n_batch = o.batch;
    g.kv_group = group;
    g.kv_residual = o.kv_residual;
    g.kv_has_ladder = l.has_ladder;  // static:B may be a one-class ladder (class 4 stored at B bits)
    g.kv_ladder = l.ladder;
    e.session = cuda::make_gpu_session(*e.model, g);
    return e;
  }
  e.backend = make_backend(o.backend, o.threads);
  const KvLayout& layout = plan.layout;
  KvCacheOptions kopt;
  kopt.max_tokens = ctx_override > 0 ? ctx_override : o.ctx;
  kopt.residual = o.kv_residual;
  e.cache = std::make_unique<KvCache>(layout, kopt);
  e.session = std::make_unique<Session>(*e.model, *e.backend, *e.cache, 0, o.batch);
  return e;
}

EngineOptions with_policy(const EngineOptions& base, const std::string& spec) {
  EngineOptions o = base;
  std::string s = spec;
  for (size_t at; (at = s.rfind(';')) != std::string::npos; s.resize(at)) {
    const std::string opt = s.substr(at + 1);
    const size_t eq = opt.find('=');
    const std::string k = opt.substr(0, eq), v = eq == std::string::npos ? "" : opt.substr(eq + 1);
    if (k == "rotate" && (v == "0" || v == "1"))
      o.kv_rotate = v[0] - '0';
    else if (k == "clip" && (v == "0" || v == "1"))
      o.kv_clip = v[0] - '0';
    else if (k == "ladder" && !v.empty())
      o.kv_ladder = v;
    else
      throw Error("policy '" + spec + "': unknown option '" + opt + "' (rotate=0|1, clip=0|1, ladder=L)");
  }
  o.kv_policy = s;
  return o;
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

std::string kv_summary(const KvStats& s, const KvLayout& l) {
  char buf[512];
  std::snprintf(
      buf, sizeof buf,
      "KV cache: %lld tokens, %.3f bits/elem stored (avg class %.2f), %s stored (%zu B), %s allocated;",
      static_cast<long long>(s.tokens), s.effective_bits, s.avg_bits(),
      human_bytes(static_cast<double>(s.bytes_stored)).c_str(), s.bytes_stored,
      human_bytes(static_cast<double>(s.bytes_allocated)).c_str());
  std::string out = buf;
  for (int c : kKvClasses) {
    const double share = s.tokens ? 100.0 * static_cast<double>(s.tokens_at_bits[c]) / s.tokens : 0.0;
    if (s.tokens_at_bits[c] == 0) continue;
    std::snprintf(buf, sizeof buf, " %d=%s (%.2f bits): %.1f%%", c, format_kv_setting(l.setting(c)).c_str(),
                  l.effective_bits(c), share);
    out += buf;
  }
  out += std::string(l.rotate ? "; rotated" : "; unrotated") + (l.clip ? ", clipped" : "");
  return out;
}

}  // namespace kvd::cli
