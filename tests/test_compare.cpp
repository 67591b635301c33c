// kvdial compare end to end (runs the built kvdial): two runs on a tiny input (2 HellaSwag rows, one
// WikiText-2 chunk of 128 tokens) give identical accuracies, KL and bits; bad input stops before any
// work with one line naming the problem. Needs the default model and ../shared/data; skips without them.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

#include "test_util.h"

namespace kvd {
namespace {

namespace fs = std::filesystem;

struct CmdResult {
  int rc = 0;
  std::string err;
};

// Runs kvdial with args (a shell-safe string); stderr is captured, stdout dropped.
CmdResult kvdial(const std::string& args, const std::string& tag) {
  const std::string err = (fs::temp_directory_path() / ("kvdial_cmp_" + tag + ".err")).string();
  const std::string cmd = std::string(KVDIAL_BINARY) + " " + args + " >/dev/null 2>" + err;
  CmdResult r;
  const int st = std::system(cmd.c_str());
  r.rc = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  std::ifstream in(err);
  std::string line;
  while (std::getline(in, line)) r.err += line + "\n";
  fs::remove(err);
  return r;
}

class Compare : public ::testing::Test {
 protected:
  void SetUp() override {
    model_ = test::model_path();
    const std::string d = test::data_dir();
    data_ = d + "/hellaswag/hellaswag_val_dev600.jsonl";
    wiki_ = d + "/wikitext-2/wiki.test.raw";
    if (model_.empty()) GTEST_SKIP() << "default model absent";
    if (d.empty() || !fs::exists(data_) || !fs::exists(wiki_)) GTEST_SKIP() << "../shared/data absent";
    dir_ = fs::temp_directory_path() / ("kvdial_cmp_" + std::to_string(::getpid()));
  }
  void TearDown() override {
    if (!dir_.empty()) fs::remove_all(dir_);
  }
  std::string base(const std::string& data = "", const std::string& wiki = "") const {
    return "compare -m " + model_ + " --data " + (data.empty() ? data_ : data) + " --wiki " +
           (wiki.empty() ? wiki_ : wiki) + " -t 2 ";
  }
  std::string model_, data_, wiki_;
  fs::path dir_;
};

TEST_F(Compare, TwoRunsGiveIdenticalAccuraciesKlAndBits) {
  const std::string args = base() +
                           "--limit 2 --wiki-ctx 128 --wiki-chunks 1 --mem-depth 32 "
                           "--policies static:4,rule,pattern:2/8 -o ";
  nlohmann::json runs[2];
  for (int i = 0; i < 2; ++i) {
    const fs::path out = dir_ / ("run" + std::to_string(i));
    const CmdResult r = kvdial(args + out.string(), "run");
    ASSERT_EQ(r.rc, 0) << r.err;
    runs[i] = test::load_json((out / "compare.json").string());
    EXPECT_TRUE(fs::exists(out / "compare.md"));
    EXPECT_TRUE(fs::exists(out / "compare.csv"));
  }
  const nlohmann::json& a = runs[0]["policies"];
  const nlohmann::json& b = runs[1]["policies"];
  ASSERT_EQ(a.size(), 4u);  // static:16 (the reference, added) first
  ASSERT_EQ(b.size(), 4u);
  EXPECT_EQ(a[0]["policy"], "static:16");
  EXPECT_TRUE(runs[0]["meta"]["reference_added"].get<bool>());
  EXPECT_EQ(runs[0]["meta"]["hellaswag"]["rows"], 2);
  for (size_t i = 0; i < a.size(); ++i) {
    SCOPED_TRACE(a[i]["policy"].get<std::string>());
    EXPECT_EQ(a[i]["policy"], b[i]["policy"]);
    for (const char* k :
         {"acc", "acc_norm", "acc_norm_diff", "next_token_accuracy", "kl", "top1_agreement", "avg_bits",
          "avg_width", "ppl_128", "kv_bytes", "kv_bits_at_depth", "sample_widths", "hellaswag_ll"})
      EXPECT_EQ(a[i][k], b[i][k]) << k;
    for (const char* k : {"latency_ms_mean", "latency_ms_p50", "latency_ms_p95", "peak_rss_bytes"})
      EXPECT_TRUE(a[i][k].is_number()) << k;
    EXPECT_EQ(a[i]["controller_ns_per_token"], 0.0);
  }
  // The reference against itself; the quantized policies store fewer bits and move the distributions.
  EXPECT_LT(a[0]["kl"].get<double>(), 1e-5);
  EXPECT_EQ(a[0]["acc_norm_diff"], 0.0);
  EXPECT_DOUBLE_EQ(a[1]["avg_bits"].get<double>(), 5.0);
  EXPECT_NEAR(a[3]["avg_width"].get<double>(), 5.0, 0.2);  // 2 and 8 in turn (texts of odd length)
  EXPECT_GT(a[1]["kl"].get<double>(), 1e-4);
}

TEST_F(Compare, BadInputStopsBeforeAnyWork) {
  const fs::path out = dir_ / "bad";
  CmdResult r = kvdial(base() + "--limit 2 --policies static:16,bogus -o " + out.string(), "bad1");
  EXPECT_EQ(r.rc, 1);
  EXPECT_NE(r.err.find("unknown policy"), std::string::npos) << r.err;
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  EXPECT_FALSE(fs::exists(out));

  fs::create_directories(dir_);
  const fs::path bad = dir_ / "bad.jsonl";
  {
    std::ifstream in(data_);
    std::string line;
    std::getline(in, line);
    std::ofstream(bad) << line << "\n{\"ctx\": 3}\n";
  }
  r = kvdial(base(bad.string()) + "--policies static:4 -o " + out.string(), "bad2");
  EXPECT_EQ(r.rc, 1);
  EXPECT_NE(r.err.find(bad.string() + ":2: "), std::string::npos) << r.err;
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;

  r = kvdial(base("", "/nonexistent/wiki.raw") + "--limit 2 --policies static:4 -o " + out.string(), "bad3");
  EXPECT_EQ(r.rc, 1);
  EXPECT_NE(r.err.find("/nonexistent/wiki.raw: cannot open file"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(out));
}

}  // namespace
}  // namespace kvd
