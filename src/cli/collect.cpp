// kvdial collect: parses the options, builds the engine (model, backend, policy) and runs the
// collection of eval/collect.h, then prints where the rows went and what they cost.
#include "cli/collect.h"

#include <cstdio>

#include "util/error.h"
#include "util/sysinfo.h"

namespace kvd::cli {

void add_collect_options(CLI::App* app, CollectArgs& a) {
  a.eng.kv_policy = "rule";
  add_engine_options(app, a.eng);
  CLI::Option* kvp = app->get_option("--kv-policy");
  kvp->description("same as --policy");
  app->add_option(
         "--policy", a.eng.kv_policy,
         "policy whose widths fill kv_bits and run the cache: static:B, rule[:T1,T2,T3] (default rule)")
      ->excludes(kvp);
  CLI::Option* data =
      app->add_option("--data", a.opt.data_path, "HellaSwag JSONL file (ctx, endings, label per line)")
          ->check(CLI::ExistingFile);
  CLI::Option* text = app->add_option("-f,--file", a.opt.text_path,
                                      "plain text file (e.g. wiki.test.raw), cut into --chunk tokens")
                          ->check(CLI::ExistingFile)
                          ->excludes(data);
  data->excludes(text);
  app->add_option("--skip-tokens", a.opt.skip_tokens, "-f: tokens of the file skipped before the first chunk")
      ->capture_default_str()
      ->check(CLI::Range(int64_t{0}, int64_t{1} << 40))
      ->needs(text);
  app->add_option("--chunk", a.opt.chunk, "-f: tokens per example (each its own sequence)")
      ->capture_default_str()
      ->check(CLI::Range(2, 1 << 20))
      ->needs(text);
  app->add_option("--jobs", a.opt.jobs,
                  "examples run in parallel (each job its own backend with -t threads, policy and caches); "
                  "the rows do not depend on it")
      ->capture_default_str()
      ->check(CLI::Range(1, 1024));
  app->add_option("-o,--output", a.opt.out_path, "CSV to write; the sidecar is CSV.json")->required();
  app->add_option("--tokens", a.opt.tokens, "rows (tokens with a next token) to collect; 0 = the whole file")
      ->capture_default_str()
      ->check(CLI::Range(0, 1 << 30));
  app->add_option("--window", a.opt.window, "W: positions re-run after the token whose width changes")
      ->capture_default_str()
      ->check(CLI::Range(1, 4096));
  app->add_option("--tau", a.opt.tau, "oracle_bits = smallest b with dmg_b <= tau (mean KL, nats), else 16")
      ->capture_default_str()
      ->check(CLI::Range(0.0, 1e9));
  app->add_flag("--no-labels", a.no_labels, "skip the sensitivity labels (dmg2/4/8, oracle_bits, proxy)");
  app->add_option("--seed", a.opt.seed, "seed of the train/val/test split by example");
  CLI::Option* resume =
      app->add_flag("--resume", a.opt.resume, "continue an interrupted CSV after its last complete row");
  app->add_flag("--force", a.opt.force, "overwrite an existing CSV")->excludes(resume);
  app->add_flag("--progress", a.opt.progress, "progress bar on stderr even when it is not a terminal");
}

int run_collect(CollectArgs a) {
  if (a.opt.data_path.empty() && a.opt.text_path.empty())
    throw Error("collect needs --data FILE (HellaSwag JSONL) or -f FILE (plain text)");
  a.opt.labels = !a.no_labels;
  a.opt.policy_spec = a.eng.kv_policy;
  a.opt.ctx = a.eng.ctx;
  a.opt.batch = a.eng.batch;
  a.opt.kv_group = a.eng.kv_group;
  a.opt.quant = a.eng.kv_quant();
  a.opt.kv_residual = a.eng.kv_residual;
  Engine e = make_engine(a.eng, 16);  // collect builds its own caches; this one stays small
  std::fprintf(
      stderr, "collect: %s (%d layers), backend %s, %d threads x %d jobs; policy %s; W %d, tau %g%s\n",
      e.model->path().c_str(), e.model->config().n_layers, e.backend->name().c_str(), e.backend->threads(),
      a.opt.jobs, e.policy_name.c_str(), a.opt.window, a.opt.tau, a.opt.labels ? "" : "; no labels");
  const CollectSummary s = collect(*e.model, *e.backend, *e.policy, a.opt, stderr);
  const double n = static_cast<double>(s.rows_written);
  std::printf("%s: %lld rows (%lld written now, %lld before) from %d examples; sidecar %s.json\n",
              a.opt.out_path.c_str(), static_cast<long long>(s.rows_before + s.rows_written),
              static_cast<long long>(s.rows_written), static_cast<long long>(s.rows_before), s.examples,
              a.opt.out_path.c_str());
  if (s.rows_written > 0) {
    std::printf("time: %.2f s, %.2f tokens/s; per token: policy run %.2f ms, label run %.2f ms\n", s.seconds,
                n / s.seconds, 1e3 * s.policy_seconds / n, 1e3 * s.label_seconds / n);
    if (a.opt.labels)
      std::printf("oracle_bits: 2: %lld, 4: %lld, 8: %lld, 16: %lld\n",
                  static_cast<long long>(s.oracle_counts[2]), static_cast<long long>(s.oracle_counts[4]),
                  static_cast<long long>(s.oracle_counts[8]), static_cast<long long>(s.oracle_counts[16]));
  }
  std::printf("peak RSS: %s\n", human_bytes(static_cast<double>(peak_rss_bytes())).c_str());
  return 0;
}

}  // namespace kvd::cli
