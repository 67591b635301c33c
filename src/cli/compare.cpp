// kvdial compare (see compare.h).
#include "cli/compare.h"

#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>

#include "cli/compare_report.h"
#include "cli/hellaswag_cmd.h"
#include "eval/collect.h"
#include "eval/data_split.h"
#include "eval/hellaswag_score.h"
#include "eval/next_token.h"
#include "eval/perplexity.h"
#include "eval/runner.h"
#include "kernels/kernels.h"
#include "util/error.h"
#include "util/progress.h"
#include "util/sysinfo.h"
#include "util/thread_pool.h"

namespace kvd::cli {

void add_compare_options(CLI::App* app, CompareArgs& a) {
  add_engine_options(app, a.eng, false);
  app->get_option("--kv-policy")->description("(not used by compare: give --policies)");
  add_hellaswag_data_options(app, a.data, a.split, a.split_seed, a.split_from, a.limit, true);
  app->add_option(
      "--policies", a.policies,
      "comma-separated KV policies; static:16 (the reference) runs first and is added when absent");
  app->add_option("--wiki", a.wiki,
                  "WikiText-2 text (wiki.test.raw) for perplexity and the memory probe's context");
  app->add_option("--wiki-ctx", a.wiki_ctx,
                  "context of the first perplexity, reported as ppl_<ctx> (default 512)")
      ->check(CLI::Range(8, 1 << 16));
  app->add_option("--wiki-chunks", a.wiki_chunks, "chunks of --wiki-ctx tokens scored (0 = skip)")
      ->check(CLI::Range(0, 1 << 20));
  app->add_option("--wiki-chunks-2048", a.wiki_chunks_2048, "chunks of 2048 tokens scored (0 = skip)")
      ->check(CLI::Range(0, 1 << 20));
  app->add_flag("--wiki-kl", a.wiki_kl,
                "also KL against static:16 on the WikiText chunks (runs each chunk twice)");
  app->add_option(
         "--mem-depth", a.mem_depth,
         "tokens of context before the memory probe (KV bytes, peak RSS; each policy in its own process; "
         "0 = skip)")
      ->check(CLI::Range(0, 1 << 20));
  app->add_option("-o,--out", a.out_dir, "directory for compare.md, compare.csv and compare.json");
  app->add_option("--sample-row", a.sample_row,
                  "index in the selection of the example whose widths are dumped")
      ->check(CLI::Range(0, 1 << 30));
  app->add_option("--mem-probe", a.mem_probe, "internal: only the memory probe of one policy")->group("");
}

namespace {

using Clock = std::chrono::steady_clock;
double since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

std::vector<std::string> split_list(const std::string& s) {
  std::vector<std::string> out;
  std::string cur;
  // A policy spec may hold commas (rule:2,4,6.5): a part that starts with a number continues the spec.
  std::stringstream ss(s);
  std::string part;
  while (std::getline(ss, part, ',')) {
    const bool continues =
        !cur.empty() && !part.empty() &&
        (std::isdigit(static_cast<unsigned char>(part[0])) || part[0] == '.' || part[0] == '-');
    if (continues) {
      cur += "," + part;
    } else {
      if (!cur.empty()) out.push_back(cur);
      cur = part;
    }
  }
  if (!cur.empty()) out.push_back(cur);
  return out;
}

std::string read_prefix(const std::string& path, size_t max_bytes) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(path + ": cannot open file");
  std::string s;
  if (max_bytes == 0) {
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
  }
  s.resize(max_bytes);
  in.read(s.data(), static_cast<std::streamsize>(max_bytes));
  s.resize(static_cast<size_t>(in.gcount()));
  return s;
}

std::string shell_out(const char* cmd) {
  FILE* p = popen(cmd, "r");
  if (!p) return "";
  std::string s;
  char buf[256];
  while (std::fgets(buf, sizeof buf, p)) s += buf;
  pclose(p);
  while (!s.empty() && (s.back() == '\n' || s.back() == '\r')) s.pop_back();
  return s;
}

std::string utc_now() {
  const std::time_t t = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

std::string cpu_name() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line))
    if (line.rfind("model name", 0) == 0) {
      const size_t c = line.find(':');
      return c == std::string::npos ? line : line.substr(c + 2);
    }
  return "unknown";
}

// The context the memory probe fills: the WikiText-2 text when given, else the HellaSwag texts in turn.
std::vector<int32_t> probe_tokens(const CompareArgs& a, const Tokenizer& tok, int n) {
  std::vector<int32_t> ids;
  if (!a.wiki.empty()) {
    ids = tok.encode(read_prefix(a.wiki, static_cast<size_t>(n) * 12 + 4096), true, false);
    if (static_cast<int>(ids.size()) < n) ids = tok.encode(read_prefix(a.wiki, 0), true, false);
  } else {
    const std::vector<HellaSwagExample> ex = read_hellaswag(a.data);
    for (size_t i = 0; static_cast<int>(ids.size()) < n && !ex.empty(); i = (i + 1) % ex.size()) {
      const std::vector<int32_t> t = tok.encode(hellaswag_text(ex[i]) + "\n", false, false);
      ids.insert(ids.end(), t.begin(), t.end());
    }
  }
  if (static_cast<int>(ids.size()) < n)
    throw Error("the memory probe needs " + std::to_string(n) + " tokens of text; " + a.wiki + " has " +
                std::to_string(ids.size()) + " (lower --mem-depth)");
  ids.resize(static_cast<size_t>(n));
  return ids;
}

constexpr int kProbeSteps = 16;

// The child's side: fill mem_depth tokens, generate 16, print what the cache and the process hold.
int run_probe(const CompareArgs& a) {
  EngineOptions eo = with_policy(a.eng, a.mem_probe);
  Engine e = make_engine(eo, a.mem_depth + kProbeSteps + 1);
  const std::vector<int32_t> ids = probe_tokens(a, e.model->tokenizer(), a.mem_depth + kProbeSteps);
  PolicyRunner runner(*e.session, *e.policy);
  const std::vector<int32_t> ctx(ids.begin(), ids.begin() + a.mem_depth);
  runner.prefill(ctx);
  std::vector<double> ms;
  for (int i = 0; i < kProbeSteps; ++i) {
    const auto t0 = Clock::now();
    runner.step(ids[static_cast<size_t>(a.mem_depth + i)]);
    ms.push_back(since(t0) * 1e3);
  }
  const KvStats st = e.cache->stats(0);
  double stored = 0;
  for (int p = 0; p < st.tokens; ++p) stored += e.cache->layout().effective_bits(e.cache->token_bits(0, p));
  const nlohmann::json j = {{"policy", e.policy->describe()},
                            {"tokens", st.tokens},
                            {"kv_bytes", st.bytes_stored},
                            {"kv_bytes_allocated", st.bytes_allocated},
                            {"kv_bits_at_depth", st.tokens ? stored / static_cast<double>(st.tokens) : 0.0},
                            {"peak_rss_bytes", peak_rss_bytes()},
                            {"step_ms", ms}};
  std::printf("%s\n", j.dump().c_str());
  return 0;
}

// The parent's side: re-runs this kvdial with the same arguments plus --mem-probe SPEC, so the peak RSS
// is that of a process that only loaded the model and ran this policy's long context.
nlohmann::json spawn_probe(const CompareArgs& a, const std::string& spec) {
  std::vector<std::string> args = a.argv;
  args.push_back("--mem-probe");
  args.push_back(spec);
  int fd[2];
  if (pipe(fd) != 0) throw Error("memory probe: pipe failed");
  const pid_t pid = fork();
  if (pid < 0) throw Error("memory probe: fork failed");
  if (pid == 0) {
    dup2(fd[1], 1);
    close(fd[0]);
    close(fd[1]);
    std::vector<char*> argv;
    for (std::string& s : args) argv.push_back(s.data());
    argv.push_back(nullptr);
    execv("/proc/self/exe", argv.data());
    _exit(127);
  }
  close(fd[1]);
  std::string out;
  char buf[4096];
  ssize_t got;
  while ((got = read(fd[0], buf, sizeof buf)) > 0) out.append(buf, static_cast<size_t>(got));
  close(fd[0]);
  int status = 0;
  waitpid(pid, &status, 0);
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
    throw Error("memory probe for " + spec + " failed (exit status " + std::to_string(WEXITSTATUS(status)) +
                ")");
  try {
    return nlohmann::json::parse(out);
  } catch (const nlohmann::json::exception&) {
    throw Error("memory probe for " + spec + ": unreadable output");
  }
}

double mean_of(const std::vector<double>& v) {
  double s = 0;
  for (double x : v) s += x;
  return v.empty() ? 0 : s / static_cast<double>(v.size());
}

std::string stage(size_t i, size_t n, const std::string& policy, const char* what) {
  return "[" + std::to_string(i + 1) + "/" + std::to_string(n) + " " + policy + "] " + what;
}

}  // namespace

int run_compare(const CompareArgs& a) {
  if (!a.mem_probe.empty()) return run_probe(a);
  const auto t_start = Clock::now();

  // Everything that can be wrong with the input is found before any model runs.
  std::vector<std::string> specs = split_list(a.policies);
  if (specs.empty()) throw Error("--policies: no policy given");
  // Cheap checks of every spec (options, setting, ladder, budget) before the model is mapped.
  for (const std::string& s : specs) {
    const EngineOptions eo = with_policy(a.eng, s);
    const KvPlan pre =
        make_kv_plan(1, 1, 64, KvQuantOptions{eo.kv_group, eo.kv_ladder, 0, eo.kv_clip}, policy_spec(eo));
    PolicyContext pc = policy_context(pre.layout);
    pc.quantizer.clear();
    make_policy(pre.policy_spec, pc);
  }
  const std::string ref_spec = "static:16";
  bool ref_added = false;
  {
    auto it = std::find_if(specs.begin(), specs.end(), [&](const std::string& s) { return s == ref_spec; });
    if (it == specs.end()) {
      specs.insert(specs.begin(), ref_spec);
      ref_added = true;
    } else {
      std::rotate(specs.begin(), it, it + 1);
    }
  }
  const std::vector<HellaSwagExample> all = read_hellaswag(a.data);
  std::vector<HellaSwagExample> ex = select_split(all, a.split, a.split_seed, a.split_from);
  if (a.limit > 0 && static_cast<int>(ex.size()) > a.limit) ex.resize(static_cast<size_t>(a.limit));
  for (const HellaSwagExample& x : ex) hellaswag_query(x);  // throws naming a line without ctx_a/ctx_b
  if (a.sample_row >= static_cast<int>(ex.size()))
    throw Error("--sample-row " + std::to_string(a.sample_row) + ": the selection has " +
                std::to_string(ex.size()) + " rows");
  if (!a.wiki.empty() && !std::ifstream(a.wiki)) throw Error(a.wiki + ": cannot open file");
  if ((a.wiki_chunks > 0 || a.wiki_chunks_2048 > 0) && a.wiki.empty() && a.wiki_kl)
    throw Error("--wiki-kl needs --wiki");
  std::error_code ec;
  std::filesystem::create_directories(a.out_dir, ec);
  if (ec || !std::filesystem::is_directory(a.out_dir))
    throw Error(a.out_dir + ": cannot create the directory");
  {
    const std::string probe = a.out_dir + "/.write_test";
    if (!std::ofstream(probe)) throw Error(a.out_dir + ": cannot write there");
    std::filesystem::remove(probe, ec);
  }

  std::shared_ptr<Model> model(Model::load(a.eng.model_path, !a.eng.no_mmap));
  const Tokenizer& tok = model->tokenizer();
  std::vector<HellaSwagItem> items;
  std::vector<std::vector<int32_t>> texts;
  int max_tokens = 16, joint = 0;
  for (const HellaSwagExample& x : ex) {
    HellaSwagItem it = hellaswag_item(tok, x);
    size_t longest = 0;
    for (const auto& e : it.endings) longest = std::max(longest, e.size());
    max_tokens = std::max(max_tokens, static_cast<int>(it.context.size() + longest));
    joint += it.joint_differs;
    items.push_back(std::move(it));
    texts.push_back(tok.encode(hellaswag_text(x), true, false));
    if (texts.back().size() < 2)
      throw Error(a.data + ":" + std::to_string(x.line) + ": the text has fewer than 2 tokens");
    max_tokens = std::max(max_tokens, static_cast<int>(texts.back().size()));
  }
  std::vector<int32_t> wiki_ids;
  if (!a.wiki.empty() && (a.wiki_chunks > 0 || a.wiki_chunks_2048 > 0)) {
    wiki_ids = tok.encode(read_prefix(a.wiki, 0), true, false);
    if (a.wiki_chunks > 0 && wiki_ids.size() < static_cast<size_t>(a.wiki_ctx))
      throw Error(a.wiki + ": fewer than " + std::to_string(a.wiki_ctx) + " tokens");
    if (a.wiki_chunks_2048 > 0 && wiki_ids.size() < 2048) throw Error(a.wiki + ": fewer than 2048 tokens");
  }
  const int ctx = std::max({max_tokens, a.wiki_chunks > 0 && !wiki_ids.empty() ? a.wiki_ctx : 0,
                            a.wiki_chunks_2048 > 0 && !wiki_ids.empty() ? 2048 : 0});
  // Every policy's engine is built once before the work (a controller made for another model or cache
  // is refused here).
  for (const std::string& s : specs) {
    EngineOptions eo = with_policy(a.eng, s);
    make_engine(eo, ctx, model);
  }

  // Run metadata.
  nlohmann::json report;
  std::string cmdline;
  for (size_t i = 0; i < a.argv.size(); ++i) cmdline += (i ? " " : "") + a.argv[i];
  const std::string commit = shell_out("git rev-parse HEAD 2>/dev/null");
  char host[256] = {0};
  gethostname(host, sizeof host - 1);
  const int threads =
      a.eng.backend == "ref" ? 1 : (a.eng.threads > 0 ? a.eng.threads : default_thread_count());
  std::fprintf(stderr, "compare: hashing the model and data\n");
  report["meta"] = {
      {"date", utc_now()},
      {"command_line", cmdline},
      {"git_commit", commit.size() == 40 ? commit : "unknown"},
      {"git_dirty", !shell_out("git status --porcelain --untracked-files=no 2>/dev/null").empty()},
      {"machine",
       {{"hostname", host},
        {"cpu", cpu_name()},
        {"hardware_threads", std::thread::hardware_concurrency()},
        {"simd", cpu::simd_target()},
        {"backend", a.eng.backend},
        {"threads", threads}}},
      {"model",
       {{"path", a.eng.model_path},
        {"name", model->config().name},
        {"arch", model->config().arch},
        {"sha256", sha256_file(a.eng.model_path)},
        {"bytes", model->file_bytes()}}},
      {"hellaswag",
       {{"path", a.data},
        {"sha256", sha256_file(a.data)},
        {"split", a.split.empty() ? "all" : a.split},
        {"split_rule", a.split_from.empty()
                           ? "collect's 80/10/10 by example, mt19937_64(" + std::to_string(a.split_seed) +
                                 ") over every example of the file"
                           : "the lists of " + a.split_from},
        {"limit", a.limit},
        {"rows", items.size()},
        {"rows_encoded_jointly_differently", joint}}},
      {"wiki", a.wiki.empty() ? nlohmann::json(nullptr)
                              : nlohmann::json{{"path", a.wiki},
                                               {"sha256", sha256_file(a.wiki)},
                                               {"ctx", a.wiki_ctx},
                                               {"chunks", a.wiki_chunks},
                                               {"chunks_2048", a.wiki_chunks_2048},
                                               {"kl", a.wiki_kl}}},
      {"engine", {{"kv_group", a.eng.kv_group}, {"kv_residual", a.eng.kv_residual}, {"batch", a.eng.batch}}},
      {"mem_depth", a.mem_depth},
      {"mem_probe",
       "each policy in its own process (this kvdial re-run with --mem-probe): load the model, prefill "
       "mem_depth "
       "tokens of context, generate 16; KV bytes stored and the process's peak RSS (VmHWM)"},
      {"reference", ref_spec},
      {"reference_added", ref_added},
      {"next_token",
       "HellaSwag text (preprocessed context + correct ending) run token by token (decode steps); "
       "KL(static:16 || policy) against the 16-bit cache's prefill of the same text"}};
  {
    nlohmann::json pieces = nlohmann::json::array();
    for (int32_t id : texts[static_cast<size_t>(a.sample_row)]) pieces.push_back(tok.token_bytes(id));
    report["meta"]["sample"] = {{"line", items[static_cast<size_t>(a.sample_row)].line}, {"pieces", pieces}};
  }
  report["policies"] = nlohmann::json::array();

  EngineOptions ro = with_policy(a.eng, ref_spec);
  Engine ref = make_engine(ro, ctx, model);
  std::vector<HellaSwagRow> ref_rows;
  for (size_t pi = 0; pi < specs.size(); ++pi) {
    const auto t_pol = Clock::now();
    EngineOptions eo = with_policy(a.eng, specs[pi]);
    Engine e = make_engine(eo, ctx, model);
    Engine hs_engine = make_scoring_engine(eo, max_tokens, model);
    // The policy as the user named it (static:K5V4g64 and static:4;rotate=0 both run as static:4), with a
    // controller's directory left out.
    std::string name = specs[pi];
    if (const size_t at = name.find("learned:"); at != std::string::npos) {
      const size_t slash =
          name.rfind('/', name.find('@') == std::string::npos ? std::string::npos : name.find('@'));
      if (slash != std::string::npos && slash > at) name = name.substr(0, at + 8) + name.substr(slash + 1);
    }
    nlohmann::json p = {{"policy", name}, {"spec", specs[pi]}, {"reference", pi == 0}};

    // Next-token accuracy, KL and decode latency on the HellaSwag texts.
    NextTokenResult nt;
    std::vector<int> sample_widths;
    {
      ProgressBar bar(stderr, stage(pi, specs.size(), name, "next-token"), static_cast<int64_t>(texts.size()),
                      "texts");
      for (size_t i = 0; i < texts.size(); ++i) {
        next_token_text(*e.session, *e.policy, *ref.session, texts[i], nt,
                        static_cast<int>(i) == a.sample_row ? &sample_widths : nullptr);
        bar.update(static_cast<int64_t>(i + 1));
      }
      bar.finish();
    }
    p["avg_bits"] = nt.stored_bits();
    p["avg_width"] = nt.avg_width();
    p["kl"] = nt.kl_mean();
    p["top1_agreement"] = nt.top1_agreement();
    p["next_token_accuracy"] = nt.accuracy();
    p["next_token_positions"] = nt.positions;
    p["latency_ms_mean"] = mean_of(nt.step_ms);
    p["latency_ms_p50"] = quantile(nt.step_ms, 0.5);
    p["latency_ms_p95"] = quantile(nt.step_ms, 0.95);
    nlohmann::json lat = nlohmann::json::array();
    for (double v : nt.step_ms) lat.push_back(std::round(v * 1e4) / 1e4);
    p["latency_ms_samples"] = lat;
    p["sample_widths"] = sample_widths;

    // HellaSwag multiple choice, paired with the reference's rows.
    std::vector<HellaSwagRow> rows;
    {
      ProgressBar bar(stderr, stage(pi, specs.size(), name, "hellaswag"), static_cast<int64_t>(items.size()),
                      "rows");
      for (const HellaSwagItem& it : items) {
        rows.push_back(score_hellaswag(*hs_engine.session, *hs_engine.policy, it));
        bar.update(static_cast<int64_t>(rows.size()));
      }
      bar.finish();
    }
    if (pi == 0) ref_rows = rows;
    const HellaSwagSummary hs = hellaswag_summary(rows);
    const HellaSwagPaired pd = hellaswag_paired(rows, ref_rows);
    p["hellaswag_rows"] = hs.n;
    p["acc"] = hs.acc;
    p["acc_se"] = hs.acc_se;
    p["acc_norm"] = hs.acc_norm;
    p["acc_norm_se"] = hs.acc_norm_se;
    p["acc_diff"] = pd.acc_diff;
    p["acc_diff_se"] = pd.acc_diff_se;
    p["acc_norm_diff"] = pd.acc_norm_diff;
    p["acc_norm_diff_se"] = pd.acc_norm_diff_se;
    p["ll_change_mean"] = pd.ll_change_mean;
    p["ll_change_abs_mean"] = pd.ll_change_abs_mean;
    nlohmann::json rj = nlohmann::json::array();
    for (const HellaSwagRow& r : rows) rj.push_back({{"line", r.line}, {"ll", r.ll}});
    p["hellaswag_ll"] = rj;

    // WikiText-2 perplexity.
    auto wiki_ppl = [&](int n_ctx, int chunks) {
      const std::string key = "ppl_" + std::to_string(n_ctx), se_key = key + "_se",
                        kl_key = "kl_wiki_" + std::to_string(n_ctx);
      p[key] = nullptr;
      if (wiki_ids.empty() || chunks <= 0) return;
      PerplexityOptions po;
      po.n_ctx = n_ctx;
      po.max_chunks = chunks;
      po.kl_against_fp16 = a.wiki_kl;
      const int n = std::min<int>(chunks, static_cast<int>(wiki_ids.size()) / n_ctx);
      ProgressBar bar(stderr, stage(pi, specs.size(), name, ("wiki-" + std::to_string(n_ctx)).c_str()), n,
                      "chunks");
      const PerplexityResult r = perplexity(*e.session, *e.policy, wiki_ids, po,
                                            [&](int c, int, const PerplexityResult&) { bar.update(c); });
      bar.finish();
      p[key] = r.ppl();
      p[se_key] = r.ppl_stderr();
      p[kl_key] = a.wiki_kl ? nlohmann::json(r.kl_mean()) : nlohmann::json(nullptr);
      p[key + "_chunks"] = r.n_chunks;
    };
    wiki_ppl(a.wiki_ctx, a.wiki_chunks);
    if (a.wiki_ctx != 2048) wiki_ppl(2048, a.wiki_chunks_2048);

    // Memory after a long context, in a process of its own.
    p["kv_bytes"] = nullptr;
    p["peak_rss_bytes"] = nullptr;
    if (a.mem_depth > 0) {
      std::fprintf(stderr, "%s: %d tokens of context in a process of its own\n",
                   stage(pi, specs.size(), name, "memory").c_str(), a.mem_depth);
      const nlohmann::json m = spawn_probe(a, specs[pi]);
      p["kv_bytes"] = m["kv_bytes"];
      p["kv_bits_at_depth"] = m["kv_bits_at_depth"];
      p["peak_rss_bytes"] = m["peak_rss_bytes"];
      p["latency_ms_at_depth_mean"] = mean_of(m["step_ms"].get<std::vector<double>>());
    }
    p["controller_ns_per_token"] = e.policy->ns_per_choice();
    const double lat_mean = p["latency_ms_mean"].get<double>();
    p["controller_share"] = lat_mean > 0 ? e.policy->ns_per_choice() / (lat_mean * 1e6) : 0.0;
    p["seconds"] = since(t_pol);
    report["policies"].push_back(p);
    report["meta"]["seconds"] = since(t_start);
    write_compare_report(report, a.out_dir);
    std::fprintf(stderr, "%s: done in %.1f s; written to %s\n", stage(pi, specs.size(), name, "").c_str(),
                 p["seconds"].get<double>(), a.out_dir.c_str());
  }
  std::printf("%s", compare_markdown(report).c_str());
  std::printf("\nwritten: %s/compare.md, %s/compare.csv, %s/compare.json (%.1f s)\n", a.out_dir.c_str(),
              a.out_dir.c_str(), a.out_dir.c_str(), since(t_start));
  return 0;
}

}  // namespace kvd::cli
