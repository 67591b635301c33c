#include "cli/hellaswag_cmd.h"

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>

#include "eval/data_split.h"
#include "eval/hellaswag_score.h"
#include "util/error.h"
#include "util/progress.h"
#include "util/sysinfo.h"

namespace kvd::cli {

void add_hellaswag_data_options(CLI::App* app, std::string& data, std::string& split, uint64_t& split_seed,
                                std::string& split_from, int& limit, bool data_required) {
  CLI::Option* d =
      app->add_option("--data", data, "HellaSwag JSONL (ctx_a, ctx_b, activity_label, endings, label)");
  if (data_required) d->required();
  app->add_option(
      "--split", split,
      "train, val, test or all (default): collect's split by example (80/10/10, --split-seed), or "
      "--split-from's lists");
  app->add_option("--split-seed", split_seed, "seed of collect's split rule (default 0, as collect)");
  app->add_option("--split-from", split_from, "a collect sidecar (<csv>.json) whose split lists decide");
  app->add_option("--limit", limit, "only the first N rows of the selection (0 = all)")
      ->check(CLI::Range(0, 1 << 30));
}

void add_hellaswag_options(CLI::App* app, HellaSwagArgs& a) {
  add_engine_options(app, a.eng, false);
  add_hellaswag_data_options(app, a.data, a.split, a.split_seed, a.split_from, a.limit, true);
  app->add_option("--ref", a.ref,
                  "also run this reference policy (e.g. static:16) and report the paired difference");
  app->add_option("--rows-out", a.rows_out, "write every row's ending log-likelihoods to this JSON file");
}

Engine make_scoring_engine(const EngineOptions& o, int ctx, std::shared_ptr<Model> model) {
  Engine e = make_engine(o, ctx, std::move(model));
  if (e.cache->options().residual > 0) {
    KvCacheOptions ko = e.cache->options();
    ko.stage_only = true;
    e.session.reset();
    e.cache = std::make_unique<KvCache>(e.cache->layout(), ko);
    e.session = std::make_unique<Session>(*e.model, *e.backend, *e.cache, 0, o.batch);
  }
  return e;
}

namespace {

std::vector<HellaSwagRow> run_rows(Engine& e, const std::vector<HellaSwagItem>& items,
                                   const std::string& label) {
  std::vector<HellaSwagRow> rows;
  ProgressBar bar(stderr, "hellaswag " + label, static_cast<int64_t>(items.size()), "rows");
  for (const HellaSwagItem& it : items) {
    rows.push_back(score_hellaswag(*e.session, *e.policy, it));
    bar.update(static_cast<int64_t>(rows.size()));
  }
  bar.finish();
  return rows;
}

nlohmann::json rows_json(const std::vector<HellaSwagRow>& rows) {
  nlohmann::json j = nlohmann::json::array();
  for (const HellaSwagRow& r : rows)
    j.push_back({{"line", r.line},
                 {"label", r.label},
                 {"ll", r.ll},
                 {"chars", r.chars},
                 {"pred", r.pred()},
                 {"pred_norm", r.pred_norm()}});
  return j;
}

}  // namespace

int run_hellaswag(const HellaSwagArgs& a) {
  // Everything that can be wrong with the input is found before the model runs.
  check_engine_options(a.eng);
  if (!a.ref.empty()) {
    EngineOptions ro = a.eng;
    ro.kv_policy = a.ref;
    check_engine_options(ro);
  }
  std::vector<HellaSwagExample> ex =
      select_split(read_hellaswag(a.data), a.split, a.split_seed, a.split_from);
  if (a.limit > 0 && static_cast<int>(ex.size()) > a.limit) ex.resize(static_cast<size_t>(a.limit));
  for (const HellaSwagExample& x : ex)
    if (!x.has_ctx_parts) hellaswag_query(x);  // throws naming the line
  std::shared_ptr<Model> model(Model::load(a.eng.model_path, !a.eng.no_mmap));
  std::vector<HellaSwagItem> items;
  int max_tokens = 16, joint = 0;
  for (const HellaSwagExample& x : ex) {
    HellaSwagItem it = hellaswag_item(model->tokenizer(), x);
    size_t longest = 0;
    for (const auto& e : it.endings) longest = std::max(longest, e.size());
    max_tokens = std::max(max_tokens, static_cast<int>(it.context.size() + longest));
    joint += it.joint_differs;
    items.push_back(std::move(it));
  }
  Engine e = make_scoring_engine(a.eng, max_tokens, model);
  std::fprintf(stderr, "hellaswag: %zu rows of %s (split %s), kv-policy %s, backend %s, %d threads\n",
               items.size(), a.data.c_str(), a.split.empty() ? "all" : a.split.c_str(),
               e.policy->describe().c_str(), e.backend->name().c_str(), e.backend->threads());
  const std::vector<HellaSwagRow> rows = run_rows(e, items, e.policy->describe());
  const HellaSwagSummary s = hellaswag_summary(rows);
  const KvLayout& lay = e.cache->layout();
  std::printf("kv-policy %s: %d rows: acc %.4f +/- %.4f, acc_norm %.4f +/- %.4f\n",
              e.policy->describe().c_str(), s.n, s.acc, s.acc_se, s.acc_norm, s.acc_norm_se);
  std::printf(
      "rows where encode(context + ending) differs from encode(context) + encode(ending): %d of %zu\n", joint,
      items.size());
  nlohmann::json out = {{"data", a.data},
                        {"split", a.split.empty() ? "all" : a.split},
                        {"policy", e.policy->describe()},
                        {"kv_group", lay.group},
                        {"acc", s.acc},
                        {"acc_se", s.acc_se},
                        {"acc_norm", s.acc_norm},
                        {"acc_norm_se", s.acc_norm_se},
                        {"rows", rows_json(rows)}};
  if (!a.ref.empty()) {
    EngineOptions ro = a.eng;
    ro.kv_policy = a.ref;
    Engine r = make_scoring_engine(ro, max_tokens, model);
    const std::vector<HellaSwagRow> ref_rows = run_rows(r, items, r.policy->describe());
    const HellaSwagSummary rs = hellaswag_summary(ref_rows);
    const HellaSwagPaired p = hellaswag_paired(rows, ref_rows);
    std::printf("reference %s: acc %.4f +/- %.4f, acc_norm %.4f +/- %.4f\n", r.policy->describe().c_str(),
                rs.acc, rs.acc_se, rs.acc_norm, rs.acc_norm_se);
    std::printf(
        "paired (%s - %s, %d rows): acc %+.4f +/- %.4f, acc_norm %+.4f +/- %.4f; "
        "ending log-likelihood change: mean %+.5f, mean |.| %.5f nats\n",
        e.policy->describe().c_str(), r.policy->describe().c_str(), p.n, p.acc_diff, p.acc_diff_se,
        p.acc_norm_diff, p.acc_norm_diff_se, p.ll_change_mean, p.ll_change_abs_mean);
    out["ref"] = {{"policy", r.policy->describe()},
                  {"acc", rs.acc},
                  {"acc_se", rs.acc_se},
                  {"acc_norm", rs.acc_norm},
                  {"acc_norm_se", rs.acc_norm_se},
                  {"rows", rows_json(ref_rows)}};
    out["paired"] = {{"acc_diff", p.acc_diff},
                     {"acc_diff_se", p.acc_diff_se},
                     {"acc_norm_diff", p.acc_norm_diff},
                     {"acc_norm_diff_se", p.acc_norm_diff_se},
                     {"ll_change_mean", p.ll_change_mean},
                     {"ll_change_abs_mean", p.ll_change_abs_mean}};
  }
  std::printf("peak RSS: %s\n", human_bytes(static_cast<double>(peak_rss_bytes())).c_str());
  if (!a.rows_out.empty()) {
    std::ofstream f(a.rows_out);
    if (!f) throw Error(a.rows_out + ": cannot write");
    f << out.dump(1) << "\n";
  }
  return 0;
}

}  // namespace kvd::cli
