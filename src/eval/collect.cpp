// kvdial collect: the policy run (features, kv_bits, latency, accuracy), the label run (a stage-only
// 16-bit cache in which one token at a time is re-stored at 2/4/8 bits and a window re-run), the
// streaming CSV with resume, the JSON sidecar.
#include "eval/collect.h"

#include <unistd.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <nlohmann/json.hpp>
#include <numeric>
#include <random>
#include <sstream>

#include "eval/hellaswag.h"
#include "eval/runner.h"
#include "kv/kv_cache.h"
#include "kv/kv_quant.h"
#include "model/forward.h"
#include "util/error.h"
#include "util/fp16.h"

namespace kvd {

// ---------------------------------------------------------------------------------------------------
// Collection

namespace {

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

constexpr std::array<int, 3> kLabelBits = {2, 4, 8};

struct PlannedExample {
  const HellaSwagExample* ex = nullptr;
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

// 80/10/10 of the examples, by a Fisher-Yates shuffle driven by mt19937_64 (both fully specified, so
// the split is the same on every platform). Returns the split name of each example.
std::vector<std::string> split_examples(int n, uint64_t seed) {
  std::vector<int> order(static_cast<size_t>(n));
  std::iota(order.begin(), order.end(), 0);
  std::mt19937_64 rng(seed);
  for (int i = n - 1; i > 0; --i)
    std::swap(order[i], order[static_cast<int>(rng() % static_cast<uint64_t>(i + 1))]);
  int n_val = static_cast<int>(std::lround(0.1 * n)), n_test = static_cast<int>(std::lround(0.1 * n));
  if (n >= 3) n_val = std::max(n_val, 1), n_test = std::max(n_test, 1);
  const int n_train = n - n_val - n_test;
  std::vector<std::string> split(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) split[order[i]] = i < n_train ? "train" : i < n_train + n_val ? "val" : "test";
  return split;
}

std::string fmt(const char* f, double v) {
  char buf[48];
  std::snprintf(buf, sizeof buf, f, v);
  return buf;
}

// Mean over positions of KL(ref || run) of the next-token distributions; both are w x vocab logits.
// ref_lp holds the reference log-probabilities, ref_p their probabilities.
double mean_kl(const std::vector<double>& ref_lp, const std::vector<double>& ref_p, const float* run, int w,
               int vocab) {
  double sum = 0;
  for (int j = 0; j < w; ++j) {
    const float* q = run + static_cast<size_t>(j) * vocab;
    const double* lp = ref_lp.data() + static_cast<size_t>(j) * vocab;
    const double* p = ref_p.data() + static_cast<size_t>(j) * vocab;
    const float mx = *std::max_element(q, q + vocab);
    double z = 0, cross = 0;
    for (int i = 0; i < vocab; ++i) {
      z += std::exp(static_cast<double>(q[i]) - mx);
      cross += p[i] * (lp[i] - static_cast<double>(q[i]));
    }
    // KL = sum p (lp - log q) with log q = q - mx - log z.
    sum += std::max(0.0, cross + mx + std::log(z));
  }
  return sum / w;
}

void log_softmax(const float* logits, int w, int vocab, std::vector<double>& lp, std::vector<double>& p) {
  lp.resize(static_cast<size_t>(w) * vocab);
  p.resize(lp.size());
  for (int j = 0; j < w; ++j) {
    const float* l = logits + static_cast<size_t>(j) * vocab;
    const float mx = *std::max_element(l, l + vocab);
    double z = 0;
    for (int i = 0; i < vocab; ++i) z += std::exp(static_cast<double>(l[i]) - mx);
    const double lz = mx + std::log(z);
    for (int i = 0; i < vocab; ++i) {
      const size_t k = static_cast<size_t>(j) * vocab + i;
      lp[k] = static_cast<double>(l[i]) - lz;
      p[k] = std::exp(lp[k]);
    }
  }
}

// Mean over layers of |K - Q_b(K)| + |V - Q_b(V)| (L2 norms) of token pos in a stage-only cache.
double quant_error(const KvCache& cache, int pos, int bits) {
  const KvLayout& lay = cache.layout();
  const int d = lay.kv_dim();
  std::vector<uint8_t> rec(lay.row_bytes(bits));
  std::vector<float> deq(static_cast<size_t>(d));
  double total = 0;
  for (int l = 0; l < lay.n_layers; ++l) {
    for (const uint16_t* rows : {cache.staged_k(0, l), cache.staged_v(0, l)}) {
      const uint16_t* row = rows + static_cast<size_t>(pos - cache.n_arena(0)) * d;
      kv_quantize_row_fp16(lay, bits, row, rec.data());
      kv_dequantize_row(lay, bits, rec.data(), deq.data());
      double sq = 0;
      for (int i = 0; i < d; ++i) {
        const double e = static_cast<double>(fp16_to_float(row[i])) - deq[i];
        sq += e * e;
      }
      total += std::sqrt(sq);
    }
  }
  return total / lay.n_layers;
}

struct Labels {
  std::array<double, 3> dmg{};
  int oracle = 16;
  double recv = 0;
  std::array<double, 3> proxy{};
};

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
  if (o.window < 1) throw Error("--window must be at least 1");
  if (!(o.tau >= 0)) throw Error("--tau must be >= 0");
  if (o.tokens < 0) throw Error("--tokens must be >= 0");
  const Tokenizer& tok = model.tokenizer();
  const ModelConfig& cfg = model.config();
  const int vocab = cfg.vocab;

  // Plan: which examples, how many rows each (the last one may be cut to reach --tokens exactly).
  const std::vector<HellaSwagExample> data = read_hellaswag(o.data_path);
  std::vector<PlannedExample> plan;
  int64_t planned = 0;
  for (const HellaSwagExample& ex : data) {
    if (o.tokens > 0 && planned >= o.tokens) break;
    PlannedExample p;
    p.ex = &ex;
    p.ids = tok.encode(hellaswag_text(ex), true, false);
    if (static_cast<int>(p.ids.size()) > o.ctx)
      throw Error(o.data_path + ":" + std::to_string(ex.line) + ": the example has " +
                  std::to_string(p.ids.size()) + " tokens, more than the context size " +
                  std::to_string(o.ctx) + " (raise -c)");
    int64_t rows = static_cast<int64_t>(p.ids.size()) - 1;
    if (o.tokens > 0) rows = std::min<int64_t>(rows, o.tokens - planned);
    if (rows <= 0) continue;
    p.rows = static_cast<int>(rows);
    p.first_row = planned;
    planned += rows;
    plan.push_back(std::move(p));
  }
  if (plan.empty()) throw Error(o.data_path + ": no example has two or more tokens");
  if (o.tokens > 0 && planned < o.tokens && log)
    std::fprintf(log, "collect: %s holds only %lld tokens with a next token (asked for %d)\n",
                 o.data_path.c_str(), static_cast<long long>(planned), o.tokens);
  const std::vector<std::string> split = split_examples(static_cast<int>(plan.size()), o.seed);
  for (size_t i = 0; i < plan.size(); ++i) plan[i].split = split[i];

  // Sidecar: the parameters that decide the rows (compared on resume), then the record of the run.
  const std::vector<std::string> columns = collect_columns(o.labels);
  const std::string header = join_csv(columns);
  const std::string sidecar_path = o.out_path + ".json";
  nlohmann::json params = {
      {"model_sha256", o.model_sha256.empty() ? sha256_file(model.path()) : o.model_sha256},
      {"data_sha256", sha256_file(o.data_path)},
      {"tokens", o.tokens},
      {"policy", policy.describe()},
      {"kv_group", o.kv_group},
      {"kv_residual", o.kv_residual},
      {"backend", backend.name()},
      {"window", o.window},
      {"tau", o.tau},
      {"labels", o.labels},
      {"seed", o.seed},
      {"columns", columns}};

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
  side["model"] = {{"path", model.path()}, {"sha256", params["model_sha256"]}, {"bytes", model.file_bytes()}};
  side["data"] = {
      {"path", o.data_path}, {"sha256", params["data_sha256"]}, {"examples_in_file", data.size()}};
  side["policy"] = policy.describe();
  side["window"] = o.window;
  side["tau"] = o.tau;
  side["seed"] = o.seed;
  side["labels"] = o.labels;
  side["threads"] = backend.threads();
  side["git_commit"] = o.git_commit.empty() ? git_commit() : o.git_commit;
  if (o.git_commit.empty()) side["git_dirty"] = git_dirty();
  side["label_run"] =
      "16-bit stage-only cache, residual 0; dmgB = mean over the next W positions of KL(p16 || pB) with only "
      "the "
      "row's token stored at B bits; oracle_bits = smallest B in 2,4,8 with dmgB <= tau, else 16";
  nlohmann::json ex_list = nlohmann::json::array(),
                 sp = {{"seed", o.seed},
                       {"method",
                        "by example: Fisher-Yates shuffle of the examples used "
                        "(mt19937_64(seed)), then 80% train, 10% val, 10% test"},
                       {"train", nlohmann::json::array()},
                       {"val", nlohmann::json::array()},
                       {"test", nlohmann::json::array()}};
  for (const PlannedExample& p : plan) {
    ex_list.push_back({{"example", p.ex->line},
                       {"ind", p.ex->ind},
                       {"tokens", p.ids.size()},
                       {"rows", p.rows},
                       {"first_row", p.first_row},
                       {"split", p.split}});
    sp[p.split].push_back(p.ex->line);
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

  // The two runs: the policy's own cache, and the stage-only 16-bit cache of the labels.
  const KvLayout layout{cfg.n_layers, cfg.n_kv_heads, cfg.head_dim, o.kv_group};
  KvCacheOptions popt;
  popt.max_tokens = o.ctx;
  popt.residual = o.kv_residual;
  KvCache policy_cache(layout, popt);
  Session policy_session(model, backend, policy_cache, 0, o.batch);
  KvCacheOptions lopt;
  lopt.max_tokens = o.ctx;
  lopt.stage_only = true;
  KvCache label_cache(layout, lopt);

  const bool bar = log && (o.progress || isatty(fileno(log)));
  Progress progress(bar ? log : nullptr, planned, sum.rows_before);
  const auto t_start = Clock::now();
  int64_t done = sum.rows_before;
  const std::vector<uint8_t> sixteen(static_cast<size_t>(o.window) + 1, 16);
  std::vector<float> ref_logits;
  std::array<std::vector<float>, 3> run_logits;
  std::vector<double> ref_lp, ref_p;
  std::vector<TokenForwardStats> fwd_stats;

  for (const PlannedExample& p : plan) {
    const int skip = static_cast<int>(std::clamp<int64_t>(sum.rows_before - p.first_row, 0, p.rows));
    if (skip >= p.rows) continue;
    const int n = static_cast<int>(p.ids.size());
    policy_cache.clear(0);
    PolicyRunner runner(policy_session, policy);
    runner.keep_features(true);
    label_cache.clear(0);
    Session label_session(model, backend, label_cache, 0, o.batch);  // fresh received() per example
    if (o.labels) {
      const auto t0 = Clock::now();
      label_session.forward(p.ids.data(), 1, 1, nullptr, sixteen.data());
      sum.label_seconds += seconds_since(t0);
    }
    for (int t = 0; t < p.rows; ++t) {
      // Policy run: this token's decode step, its features and the policy's width.
      const auto t0 = Clock::now();
      runner.step(p.ids[t]);
      const double step_s = seconds_since(t0);
      const TokenFeatures& f = runner.features().back();
      const int kv_bits = policy_cache.token_bits(0, t);
      sum.policy_seconds += step_s;

      // Label run: the cache holds positions [0, t] computed with 16-bit history.
      Labels lab;
      const bool write = t >= skip;
      if (o.labels) {
        const auto t1 = Clock::now();
        const int w = std::min(o.window, n - 1 - t);
        const int32_t* win = p.ids.data() + t + 1;
        label_cache.truncate(0, t + 1);
        if (write) {
          for (size_t bi = 0; bi < kLabelBits.size(); ++bi) {
            label_cache.decide(0, t, kLabelBits[bi]);
            const std::vector<float>& l = label_session.forward(win, w, 0, nullptr, sixteen.data());
            run_logits[bi].assign(l.begin(), l.end());
            label_cache.truncate(0, t + 1);
          }
          label_cache.decide(0, t, 16);
        }
        // The 16-bit reference window last: it leaves position t + 1 in the cache for the next token.
        // Same computation whether or not the row is written (rows skipped on resume), so that resumed and
        // uninterrupted runs build identical caches.
        label_session.track_received(true);
        const float recv0 =
            label_session.received().size() > static_cast<size_t>(t) ? label_session.received()[t] : 0;
        const std::vector<float>& l16 = label_session.forward(win, w, 0, &fwd_stats, sixteen.data());
        if (write) {
          lab.recv =
              (static_cast<double>(label_session.received()[t]) - recv0) / (cfg.n_layers * cfg.n_heads);
          log_softmax(l16.data(), w, vocab, ref_lp, ref_p);
          lab.oracle = 16;
          for (size_t bi = 0; bi < kLabelBits.size(); ++bi) {
            lab.dmg[bi] = mean_kl(ref_lp, ref_p, run_logits[bi].data(), w, vocab);
            lab.proxy[bi] = lab.recv * quant_error(label_cache, t, kLabelBits[bi]);
          }
          for (size_t bi = 0; bi < kLabelBits.size(); ++bi)
            if (lab.dmg[bi] <= o.tau) {
              lab.oracle = kLabelBits[bi];
              break;
            }
          sum.oracle_counts[static_cast<size_t>(lab.oracle)]++;
        }
        sum.label_seconds += seconds_since(t1);
      }
      if (!write) continue;

      std::string row;
      row.reserve(256);
      row += fmt("%.7g", f.entropy) + "," + fmt("%.7g", f.rarity) + "," + fmt("%.7g", f.attn_var) + "," +
             std::to_string(kv_bits) + "," + fmt("%.4f", step_s * 1e3) + "," +
             (f.argmax == p.ids[t + 1] ? "1" : "0") + "," + std::to_string(p.ex->line) + "," +
             std::to_string(p.ex->ind) + "," + std::to_string(t) + "," + std::to_string(p.ids[t]) + "," +
             fmt("%.7g", f.attn_max) + "," + fmt("%.7g", f.k_norm) + "," + fmt("%.7g", f.v_norm) + "," +
             fmt("%.7g", f.max_prob) + "," + std::to_string(f.argmax) + "," + p.split;
      if (o.labels) {
        for (double d : lab.dmg) row += "," + fmt("%.7g", d);
        row += "," + std::to_string(lab.oracle) + "," + fmt("%.7g", lab.recv);
        for (double d : lab.proxy) row += "," + fmt("%.7g", d);
      }
      row += "\n";
      if (std::fputs(row.c_str(), csv) < 0 || std::fflush(csv) != 0)
        throw Error(o.out_path + ": write error");
      ++done;
      ++sum.rows_written;
      progress.update(done);
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
