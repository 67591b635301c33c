// kvdial collect: plans the examples (HellaSwag lines or chunks of plain text), runs each one's policy
// run (features, kv_bits, latency, accuracy) and label run (eval/labels.h), on --jobs threads that each
// own a backend, a policy and caches over the shared model, and writes the rows in example order to a
// streaming CSV with resume, plus the JSON sidecar.
#include "eval/collect.h"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstring>
#include <ctime>
#include <exception>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <nlohmann/json.hpp>
#include <numeric>
#include <optional>
#include <random>
#include <thread>

#include "eval/data_split.h"
#include "eval/hellaswag.h"
#include "eval/labels.h"
#include "eval/runner.h"
#include "eval/text_chunks.h"
#include "kv/kv_cache.h"
#include "kv/kv_config.h"
#include "policy/policy_context.h"
#include "kv/kv_setting.h"
#include "model/forward.h"
#include "util/error.h"

namespace kvd {

namespace {

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

// One example of the run: a HellaSwag line or a chunk of text.
struct PlannedExample {
  int id = 0;        // the `example` column: the JSONL line, or the chunk's 1-based index
  int64_t ind = -1;  // the `ind` column: the dataset's ind, or the chunk's first token in the file
  std::vector<int32_t> ids;
  int rows = 0;           // rows written for it: positions [0, rows)
  int64_t first_row = 0;  // global index of its first row
  std::string split;
};

std::string git_commit() {
  FILE* p = popen("git rev-parse HEAD 2>/dev/null", "r");
  if (!p) return "unknown";
  char buf[128] = {0};
  const bool got = std::fgets(buf, sizeof buf, p) != nullptr;
  const int rc = pclose(p);
  std::string s = got ? buf : "";
  while (!s.empty() && (s.back() == '\n' || s.back() == '\r')) s.pop_back();
  return rc == 0 && s.size() == 40 ? s : "unknown";
}

// True when tracked files differ from HEAD (the rows then come from code no commit holds).
bool git_dirty() {
  FILE* p = popen("git status --porcelain --untracked-files=no 2>/dev/null", "r");
  if (!p) return false;
  char buf[8];
  const bool any = std::fgets(buf, sizeof buf, p) != nullptr;
  pclose(p);
  return any;
}

std::string utc_now() {
  const std::time_t t = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

std::string fmt(const char* f, double v) {
  char buf[48];
  std::snprintf(buf, sizeof buf, f, v);
  return buf;
}

// Progress bar: rows done / total, rows/s, ETA; redrawn at most 4 times a second.
class Progress {
 public:
  Progress(std::FILE* out, int64_t total, int64_t done) : out_(out), total_(total), start_done_(done) {}
  void update(int64_t done, bool last = false) {
    if (!out_) return;
    const double now = seconds_since(t0_);
    if (!last && now - drawn_ < 0.25) return;
    drawn_ = now;
    const double rate = now > 0 ? static_cast<double>(done - start_done_) / now : 0;
    const double eta = rate > 0 ? static_cast<double>(total_ - done) / rate : 0;
    const int width = 30;
    const int fill =
        total_ > 0 ? static_cast<int>(width * static_cast<double>(done) / static_cast<double>(total_)) : 0;
    std::fprintf(out_, "\rcollect [%s%s] %lld/%lld tokens  %.1f tokens/s  ETA %d:%02d  ",
                 std::string(static_cast<size_t>(fill), '#').c_str(),
                 std::string(static_cast<size_t>(width - fill), '.').c_str(), static_cast<long long>(done),
                 static_cast<long long>(total_), rate, static_cast<int>(eta) / 60,
                 static_cast<int>(eta) % 60);
    if (last) std::fprintf(out_, "\n");
    std::fflush(out_);
  }

 private:
  std::FILE* out_;
  int64_t total_, start_done_;
  Clock::time_point t0_ = Clock::now();
  double drawn_ = -1;
};

void write_json_atomic(const std::string& path, const nlohmann::json& j) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) throw Error(tmp + ": cannot write");
    out << j.dump(2) << "\n";
    if (!out) throw Error(tmp + ": write error");
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) throw Error(path + ": cannot write (" + ec.message() + ")");
}

// The rows of one example, formatted, and what they cost.
struct ExampleResult {
  std::string csv;
  int64_t rows = 0;
  std::array<int64_t, 17> oracle{};
  double policy_s = 0, label_s = 0;
};

// What one job owns: a backend (the caller's for job 0), a policy, the policy run's cache and session,
// and the label run. The model is shared (read-only).
struct Job {
  std::unique_ptr<Backend> own_backend;
  std::unique_ptr<KvPolicy> own_policy;
  Backend* backend = nullptr;
  KvPolicy* policy = nullptr;
  std::unique_ptr<KvCache> cache;
  std::unique_ptr<Session> session;
  std::unique_ptr<LabelRun> labels;
};

// Runs one example from its first token (rows before `skip` are already in the CSV: their labels are not
// measured, but every forward runs as in an uninterrupted run, so later rows are the same).
ExampleResult run_example(Job& job, const PlannedExample& p, int skip, const CollectOptions& o) {
  ExampleResult r;
  job.cache->clear(0);
  PolicyRunner runner(*job.session, *job.policy);
  runner.keep_features(true);
  if (o.labels) {
    const auto t0 = Clock::now();
    job.labels->begin(p.ids);
    r.label_s += seconds_since(t0);
  }
  for (int t = 0; t < p.rows; ++t) {
    // Policy run: this token's decode step, its features and the policy's width.
    const auto t0 = Clock::now();
    runner.step(p.ids[t]);
    const double step_s = seconds_since(t0);
    const TokenFeatures& f = runner.features().back();
    const int kv_bits = job.cache->token_bits(0, t);
    r.policy_s += step_s;

    // Label run: its caches hold positions [0, t] computed with 16-bit history.
    const bool write = t >= skip;
    TokenLabels lab;
    if (o.labels) {
      const auto t1 = Clock::now();
      lab = job.labels->label(t, write);
      if (write) r.oracle[static_cast<size_t>(lab.oracle)]++;
      r.label_s += seconds_since(t1);
    }
    if (!write) continue;

    std::string& row = r.csv;
    row += fmt("%.7g", f.entropy) + "," + fmt("%.7g", f.rarity) + "," + fmt("%.7g", f.attn_var) + "," +
           std::to_string(kv_bits) + "," + fmt("%.4f", step_s * 1e3) + "," +
           (f.argmax == p.ids[t + 1] ? "1" : "0") + "," + std::to_string(p.id) + "," + std::to_string(p.ind) +
           "," + std::to_string(t) + "," + std::to_string(p.ids[t]) + "," + fmt("%.7g", f.attn_max) + "," +
           fmt("%.7g", f.k_norm) + "," + fmt("%.7g", f.v_norm) + "," + fmt("%.7g", f.max_prob) + "," +
           std::to_string(f.argmax) + "," + p.split;
    if (o.labels) {
      for (double d : lab.dmg) row += "," + fmt("%.7g", d);
      row += "," + std::to_string(lab.oracle) + "," + fmt("%.7g", lab.recv);
      for (double d : lab.proxy) row += "," + fmt("%.7g", d);
    }
    row += "\n";
    ++r.rows;
  }
  return r;
}

// Examples [begin, end) of the plan, as HellaSwag lines or text chunks, with the sidecar's record of each.
struct Plan {
  std::vector<PlannedExample> examples;
  int64_t planned = 0;
  size_t examples_in_file = 0;
};

void add_example(Plan& plan, PlannedExample p, const CollectOptions& o) {
  int64_t rows = static_cast<int64_t>(p.ids.size()) - 1;
  if (o.tokens > 0) rows = std::min<int64_t>(rows, o.tokens - plan.planned);
  if (rows <= 0) return;
  p.rows = static_cast<int>(rows);
  p.first_row = plan.planned;
  plan.planned += rows;
  plan.examples.push_back(std::move(p));
}

Plan make_plan(const Tokenizer& tok, const CollectOptions& o) {
  Plan plan;
  const std::string& src = o.text_path.empty() ? o.data_path : o.text_path;
  if (!o.text_path.empty()) {
    std::vector<TextChunk> chunks = text_chunks(tok, o.text_path, o.skip_tokens, o.chunk);
    plan.examples_in_file = chunks.size();
    for (TextChunk& c : chunks) {
      if (o.tokens > 0 && plan.planned >= o.tokens) break;
      PlannedExample p;
      p.id = c.index;
      p.ind = c.first_token;
      p.ids = std::move(c.ids);
      add_example(plan, std::move(p), o);
    }
  } else {
    const std::vector<HellaSwagExample> data = read_hellaswag(o.data_path);
    plan.examples_in_file = data.size();
    for (const HellaSwagExample& ex : data) {
      if (o.tokens > 0 && plan.planned >= o.tokens) break;
      PlannedExample p;
      p.id = ex.line;
      p.ind = ex.ind;
      p.ids = tok.encode(hellaswag_text(ex), true, false);
      if (static_cast<int>(p.ids.size()) > o.ctx)
        throw Error(o.data_path + ":" + std::to_string(ex.line) + ": the example has " +
                    std::to_string(p.ids.size()) + " tokens, more than the context size " +
                    std::to_string(o.ctx) + " (raise -c)");
      add_example(plan, std::move(p), o);
    }
  }
  if (plan.examples.empty()) throw Error(src + ": no example has two or more tokens");
  return plan;
}

void check_options(const CollectOptions& o) {
  if (o.data_path.empty() == o.text_path.empty())
    throw Error(o.data_path.empty() ? "collect needs --data FILE (HellaSwag JSONL) or -f FILE (plain text)"
                                    : "--data and -f cannot be given together");
  if (o.out_path.empty()) throw Error("collect needs -o FILE");
  if (o.window < 1) throw Error("--window must be at least 1");
  if (!(o.tau >= 0)) throw Error("--tau must be >= 0");
  if (o.tokens < 0) throw Error("--tokens must be >= 0");
  if (o.jobs < 1) throw Error("--jobs must be at least 1");
  if (o.skip_tokens < 0) throw Error("--skip-tokens must be >= 0");
  if (!o.text_path.empty() && (o.chunk < 2 || o.chunk > o.ctx))
    throw Error("--chunk must be in 2.." + std::to_string(o.ctx) + " (the context size)");
  if (o.data_path == o.out_path || o.text_path == o.out_path)
    throw Error(o.out_path + ": the output would overwrite the input");
}

}  // namespace

std::vector<std::string> collect_columns(bool labels) {
  std::vector<std::string> c = {"entropy", "rarity",   "attn_var", "kv_bits", "latency",  "accuracy",
                                "example", "ind",      "position", "token",   "attn_max", "k_norm",
                                "v_norm",  "max_prob", "argmax",   "split"};
  if (labels)
    for (const char* s : {"dmg2", "dmg4", "dmg8", "oracle_bits", "recv", "proxy2", "proxy4", "proxy8"})
      c.push_back(s);
  return c;
}

CollectSummary collect(const Model& model, Backend& backend, KvPolicy& policy, const CollectOptions& o,
                       std::FILE* log) {
  check_options(o);
  const Tokenizer& tok = model.tokenizer();
  const ModelConfig& cfg = model.config();
  const std::string& data_path = o.text_path.empty() ? o.data_path : o.text_path;

  // Plan: which examples, how many rows each (the last one may be cut to reach --tokens exactly).
  Plan plan_all = make_plan(tok, o);
  std::vector<PlannedExample>& plan = plan_all.examples;
  const int64_t planned = plan_all.planned;
  if (o.tokens > 0 && planned < o.tokens && log)
    std::fprintf(log, "collect: %s holds only %lld tokens with a next token (asked for %d)\n",
                 data_path.c_str(), static_cast<long long>(planned), o.tokens);
  const std::vector<std::string> split = split_examples(static_cast<int>(plan.size()), o.seed);
  for (size_t i = 0; i < plan.size(); ++i) plan[i].split = split[i];

  // One policy per job, made from the same spec (job 0 uses the caller's). The policy run stores what its
  // policy says (a static setting, or the ladder); the labels measure the ladder's classes (the layout of a
  // dynamic policy), whatever policy runs.
  const std::string user_spec = o.policy_spec.empty() ? policy.describe() : o.policy_spec;
  const KvPlan kv_plan = make_kv_plan(cfg.n_layers, cfg.n_kv_heads, cfg.head_dim, o.quant, user_spec);
  const KvLayout& layout = kv_plan.layout;
  const KvLayout label_layout = make_kv_plan(cfg.n_layers, cfg.n_kv_heads, cfg.head_dim, o.quant, "rule").layout;
  const std::string quantizer = kv_quantizer_id(label_layout);
  const std::string& policy_spec = kv_plan.policy_spec;
  std::vector<Job> jobs(static_cast<size_t>(std::min<int64_t>(o.jobs, static_cast<int64_t>(plan.size()))));
  for (size_t j = 0; j < jobs.size(); ++j) {
    Job& job = jobs[j];
    if (j == 0) {
      job.backend = &backend;
      job.policy = &policy;
    } else {
      job.own_backend = make_backend(backend.name(), backend.threads());
      job.backend = job.own_backend.get();
      try {
        job.own_policy = make_policy(policy_spec, policy_context_for(layout));
      } catch (const Error& e) {
        throw Error("--jobs " + std::to_string(o.jobs) + ": cannot make the policy '" + policy_spec +
                    "' for each job (" + e.what() + ")");
      }
      if (job.own_policy->describe() != policy.describe())
        throw Error("--jobs: the policy spec '" + policy_spec + "' gives " + job.own_policy->describe() +
                    ", not " + policy.describe());
      job.policy = job.own_policy.get();
    }
  }

  // Sidecar: the parameters that decide the rows (compared on resume), then the record of the run.
  const std::vector<std::string> columns = collect_columns(o.labels);
  const std::string header = join_csv(columns);
  const std::string sidecar_path = o.out_path + ".json";
  nlohmann::json params = {
      {"model_sha256", o.model_sha256.empty() ? sha256_file(model.path()) : o.model_sha256},
      {"data_sha256", sha256_file(data_path)},
      {"tokens", o.tokens},
      {"policy", policy.describe()},
      {"kv_group", o.kv_group},
      {"kv_residual", o.kv_residual},
      {"backend", backend.name()},
      {"window", o.window},
      {"tau", o.tau},
      {"labels", o.labels},
      {"seed", o.seed},
      {"columns", columns},
      // The KV quantizer the labels are measured with (ladder, rotation, clip: kv_quantizer_id).
      {"quantizer", quantizer}};
  if (!o.text_path.empty()) params["text"] = {{"skip_tokens", o.skip_tokens}, {"chunk", o.chunk}};

  CollectSummary sum;
  sum.rows_total = planned;
  sum.examples = static_cast<int>(plan.size());
  namespace fs = std::filesystem;
  const bool exists = fs::exists(o.out_path) && fs::file_size(o.out_path) > 0;
  nlohmann::json side;
  if (exists && o.resume) {
    std::ifstream sin(sidecar_path);
    if (!sin) throw Error(sidecar_path + ": missing; cannot check that --resume continues the same run");
    try {
      side = nlohmann::json::parse(sin);
    } catch (const nlohmann::json::exception&) {
      throw Error(sidecar_path + ": not valid JSON; cannot resume");
    }
    if (!side.contains("params") || !side["params"].is_object()) throw Error(sidecar_path + ": no 'params'");
    const auto& old = side["params"];
    for (auto it = params.begin(); it != params.end(); ++it) {
      if (it.key() == "columns") continue;  // follows from labels; checked with the header below
      if (!old.contains(it.key()) || old[it.key()] != it.value())
        throw Error("--resume: " + it.key() + " differs from the interrupted run's (" +
                    (old.contains(it.key()) ? old[it.key()].dump() : std::string("absent")) + " there, " +
                    it.value().dump() + " now); start a new file or pass the same parameters");
    }
    if (old.contains("text") && !params.contains("text"))
      throw Error("--resume: the interrupted run read plain text (-f); this one reads --data");
    sum.rows_before = csv_resume_rows(o.out_path, header, columns.size());
    if (sum.rows_before > planned)
      throw Error(o.out_path + ": holds " + std::to_string(sum.rows_before) + " rows, more than the " +
                  std::to_string(planned) + " planned; cannot resume");
    side["resumed"].push_back({{"date", utc_now()}, {"rows_before", sum.rows_before}});
  } else {
    if (exists && !o.force)
      throw Error(o.out_path + ": exists; pass --resume to continue it or --force to overwrite it");
    if (o.resume && log)
      std::fprintf(log, "collect: %s is absent or empty: starting from the first row\n", o.out_path.c_str());
    side = nlohmann::json::object();
    side["date"] = utc_now();
  }
  side["command"] = "kvdial collect";
  side["params"] = params;
  side["quantizer"] = quantizer;
  side["model"] = {{"path", model.path()}, {"sha256", params["model_sha256"]}, {"bytes", model.file_bytes()}};
  side["data"] = {{"path", data_path},
                  {"format", o.text_path.empty() ? "hellaswag-jsonl" : "text"},
                  {"sha256", params["data_sha256"]},
                  {o.text_path.empty() ? "examples_in_file" : "chunks_in_file", plan_all.examples_in_file}};
  if (!o.text_path.empty()) {
    side["data"]["skip_tokens"] = o.skip_tokens;
    side["data"]["chunk"] = o.chunk;
  }
  side["policy"] = policy.describe();
  side["window"] = o.window;
  side["tau"] = o.tau;
  side["seed"] = o.seed;
  side["labels"] = o.labels;
  side["threads"] = backend.threads();
  side["jobs"] = jobs.size();
  side["git_commit"] = o.git_commit.empty() ? git_commit() : o.git_commit;
  if (o.git_commit.empty()) side["git_dirty"] = git_dirty();
  side["label_run"] =
      "16-bit stage-only cache, residual 0; dmgB = mean over the next W positions of KL(p16 || pB) with only "
      "the row's token stored at B bits, the four windows (16, 2, 4, 8 bits) run as four sequences of one "
      "batch; oracle_bits = smallest B in 2,4,8 with dmgB <= tau, else 16";
  nlohmann::json ex_list = nlohmann::json::array(),
                 sp = {{"seed", o.seed},
                       {"method",
                        "by example: Fisher-Yates shuffle of the examples used "
                        "(mt19937_64(seed)), then 80% train, 10% val, 10% test"},
                       {"train", nlohmann::json::array()},
                       {"val", nlohmann::json::array()},
                       {"test", nlohmann::json::array()}};
  for (const PlannedExample& p : plan) {
    nlohmann::json e = {{"example", p.id},          {o.text_path.empty() ? "ind" : "first_token", p.ind},
                        {"tokens", p.ids.size()},   {"rows", p.rows},
                        {"first_row", p.first_row}, {"split", p.split}};
    ex_list.push_back(e);
    sp[p.split].push_back(p.id);
  }
  side["examples"] = ex_list;
  side["split"] = sp;
  auto write_sidecar = [&](bool complete, int64_t rows) {
    side["rows"] = {{"first", 0}, {"last", rows - 1}, {"count", rows}, {"planned", planned}};
    side["complete"] = complete;
    write_json_atomic(sidecar_path, side);
  };
  write_sidecar(false, sum.rows_before);

  FILE* csv = std::fopen(o.out_path.c_str(), sum.rows_before > 0 || (exists && o.resume) ? "ab" : "wb");
  if (!csv) throw Error(o.out_path + ": cannot write");
  std::unique_ptr<FILE, int (*)(FILE*)> csv_guard(csv, std::fclose);
  if (!(exists && o.resume)) {
    std::fprintf(csv, "%s\n", header.c_str());
    std::fflush(csv);
  }

  // Each job's caches: the policy's own (--kv-group, --kv-residual) and the label run's.
  KvCacheOptions popt;
  popt.max_tokens = o.ctx;
  popt.residual = o.kv_residual;
  for (Job& job : jobs) {
    job.cache = std::make_unique<KvCache>(layout, popt);
    job.session = std::make_unique<Session>(model, *job.backend, *job.cache, 0, o.batch);
    if (o.labels)
      job.labels = std::make_unique<LabelRun>(model, *job.backend, o.ctx, label_layout, o.window, o.tau);
  }

  const bool bar = log && (o.progress || isatty(fileno(log)));
  Progress progress(bar ? log : nullptr, planned, sum.rows_before);
  const auto t_start = Clock::now();
  int64_t done = sum.rows_before;

  // The examples still to run (the first may be partly written already), and the rows each skips.
  std::vector<size_t> todo;
  for (size_t i = 0; i < plan.size(); ++i)
    if (sum.rows_before - plan[i].first_row < plan[i].rows) todo.push_back(i);
  auto skip_of = [&](size_t i) {
    return static_cast<int>(std::clamp<int64_t>(sum.rows_before - plan[i].first_row, 0, plan[i].rows));
  };
  auto write_result = [&](const ExampleResult& r) {
    if (std::fputs(r.csv.c_str(), csv) < 0 || std::fflush(csv) != 0)
      throw Error(o.out_path + ": write error");
    done += r.rows;
    sum.rows_written += r.rows;
    sum.policy_seconds += r.policy_s;
    sum.label_seconds += r.label_s;
    for (size_t b = 0; b < r.oracle.size(); ++b) sum.oracle_counts[b] += r.oracle[b];
    progress.update(done);
  };

  if (jobs.size() <= 1) {
    for (size_t i : todo) write_result(run_example(jobs[0], plan[i], skip_of(i), o));
  } else {
    // Jobs take the next example in turn; this thread writes the results in example order, so the file is
    // the same for any number of jobs.
    std::mutex mu;
    std::condition_variable cv;
    std::vector<std::optional<ExampleResult>> results(todo.size());
    std::atomic<size_t> next{0};
    std::atomic<bool> stop{false};
    std::exception_ptr error;
    auto worker = [&](Job& job) {
      while (!stop) {
        const size_t k = next++;
        if (k >= todo.size()) break;
        try {
          ExampleResult r = run_example(job, plan[todo[k]], skip_of(todo[k]), o);
          std::lock_guard<std::mutex> lock(mu);
          results[k] = std::move(r);
        } catch (...) {
          std::lock_guard<std::mutex> lock(mu);
          if (!error) error = std::current_exception();
          stop = true;
        }
        cv.notify_all();
      }
    };
    std::vector<std::thread> threads;
    for (Job& job : jobs) threads.emplace_back(worker, std::ref(job));
    struct Joiner {
      std::vector<std::thread>& t;
      std::atomic<bool>& stop;
      ~Joiner() {
        stop = true;
        for (auto& th : t) th.join();
      }
    } joiner{threads, stop};
    for (size_t k = 0; k < todo.size(); ++k) {
      ExampleResult r;
      {
        std::unique_lock<std::mutex> lock(mu);
        cv.wait(lock, [&] { return results[k].has_value() || error != nullptr; });
        if (error) std::rethrow_exception(error);
        r = std::move(*results[k]);
        results[k].reset();
      }
      write_result(r);
    }
  }
  progress.update(done, true);
  sum.seconds = seconds_since(t_start);
  side["seconds"] = sum.seconds;
  side["seconds_policy_run"] = sum.policy_seconds;
  side["seconds_label_run"] = sum.label_seconds;
  side["tokens_per_s"] = sum.seconds > 0 ? static_cast<double>(sum.rows_written) / sum.seconds : 0;
  side["finished"] = utc_now();
  write_sidecar(done == planned, done);
  return sum;
}

}  // namespace kvd
