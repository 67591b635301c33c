// kvdial collect and stats: SHA-256 vectors, the CSV reader's errors, correlations, the column order,
// and on the real model (skipped when absent) determinism, resume after an interrupted CSV, refusing a
// resume whose parameters differ, --jobs 1 and 2 giving the same file, plain text in chunks, and bad input
// refused before any row. Examples are sentences written here.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "eval/collect.h"
#include "model/backend.h"
#include "model/model.h"
#include "policy/policy.h"
#include "test_util.h"
#include "util/error.h"

namespace kvd {
namespace {

namespace fs = std::filesystem;

std::string temp_path(const std::string& name) {
  return (fs::temp_directory_path() /
          ("kvdial_collect_" + std::to_string(::getpid()) + "_" +
           ::testing::UnitTest::GetInstance()->current_test_info()->name() + "_" + name))
      .string();
}

void write_file(const std::string& path, const std::string& s) { std::ofstream(path, std::ios::binary) << s; }

std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::vector<std::string> lines_of(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  std::string l;
  while (std::getline(ss, l)) out.push_back(l);
  return out;
}

// The CSV with the latency column (index 4) blanked: the only column allowed to differ between runs.
std::vector<std::string> without_latency(const std::string& csv) {
  std::vector<std::string> out;
  for (const std::string& l : lines_of(csv)) {
    std::vector<std::string> cells;
    std::stringstream ss(l);
    std::string c;
    while (std::getline(ss, c, ',')) cells.push_back(c);
    if (cells.size() > 4) cells[4] = "";
    std::string joined;
    for (size_t i = 0; i < cells.size(); ++i) joined += (i ? "," : "") + cells[i];
    out.push_back(joined);
  }
  return out;
}

TEST(Sha256, KnownVectors) {
  EXPECT_EQ(sha256_hex("", 0), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(sha256_hex("abc", 3), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  const std::string two_blocks = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
  EXPECT_EQ(sha256_hex(two_blocks.data(), two_blocks.size()),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
  // A file read in pieces gives the one-shot digest: one million 'a'.
  const std::string path = temp_path("a.bin");
  const std::string million(1000000, 'a');
  write_file(path, million);
  EXPECT_EQ(sha256_file(path), "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
  fs::remove(path);
}

TEST(CollectColumns, SeedColumnsFirstThenExtrasThenLabels) {
  const std::vector<std::string> c = collect_columns(true);
  const std::vector<std::string> expected = {
      "entropy",  "rarity", "attn_var", "kv_bits",     "latency", "accuracy", "example", "ind",
      "position", "token",  "attn_max", "k_norm",      "v_norm",  "max_prob", "argmax",  "split",
      "dmg2",     "dmg4",   "dmg8",     "oracle_bits", "recv",    "proxy2",   "proxy4",  "proxy8"};
  EXPECT_EQ(c, expected);
  const std::vector<std::string> plain = collect_columns(false);
  EXPECT_EQ(plain, std::vector<std::string>(expected.begin(), expected.begin() + 16));
}

TEST(Correlation, PearsonAndSpearman) {
  const std::vector<double> a = {1, 2, 3, 4, 5}, b = {2, 4, 6, 8, 10}, c = {1, 4, 9, 16, 100},
                            k = {3, 3, 3, 3, 3};
  EXPECT_NEAR(pearson(a, b), 1.0, 1e-12);
  EXPECT_LT(pearson(a, c), 0.99);
  EXPECT_NEAR(spearman(a, c), 1.0, 1e-12);  // monotone: rank correlation 1
  EXPECT_TRUE(std::isnan(pearson(a, k)));
  // Ties get average ranks: ranks of {1, 1, 2} are {1.5, 1.5, 3}.
  EXPECT_NEAR(spearman({1, 1, 2}, {1.5, 1.5, 3}), 1.0, 1e-12);
}

const char* kSmallCsv =
    "entropy,rarity,attn_var,kv_bits,latency,accuracy,example,split,oracle_bits\n"
    "1.0,5.0,0.1,2,3.0,1,1,train,2\n"
    "3.0,6.0,0.2,4,3.5,0,1,train,4\n"
    "5.0,7.0,0.3,8,4.0,0,2,val,8\n"
    "7.0,8.0,0.4,16,4.5,0,3,test,16\n";

TEST(CsvStats, SmallTable) {
  const std::string path = temp_path("small.csv");
  write_file(path, kSmallCsv);
  const CsvTable t = read_csv_table(path);
  ASSERT_EQ(t.rows(), 4u);
  ASSERT_EQ(t.columns.size(), 9u);
  EXPECT_EQ(t.split, (std::vector<std::string>{"train", "train", "val", "test"}));
  EXPECT_DOUBLE_EQ(t.values[t.column("kv_bits")][3], 16);
  const std::string r = csv_stats_report(t);
  for (const char* s :
       {"=== Overall Summary (mean) ===", "=== Distribution Stats (std, min, max) ===",
        "=== Feature Correlations", "=== kv_bits distribution ===", "=== oracle_bits distribution ===",
        "=== Correlation of oracle_bits with kv_bits and each feature ===", "=== split ==="})
    EXPECT_NE(r.find(s), std::string::npos) << s << "\n" << r;
  // Mean of entropy 4, sample std of entropy sqrt(20/3) = 2.581989.
  EXPECT_NE(r.find("entropy           4.000000"), std::string::npos) << r;
  EXPECT_NE(r.find("2.581989"), std::string::npos) << r;
  EXPECT_NE(r.find("train   2 rows, 1 examples"), std::string::npos) << r;
  fs::remove(path);
}

// From a stream (as fuzz/fuzz_csv.cpp reads): the same table, and errors named by the given name.
TEST(CsvStats, FromStream) {
  std::istringstream in(kSmallCsv);
  const CsvTable t = read_csv_table(in, "mem.csv");
  EXPECT_EQ(t.path, "mem.csv");
  ASSERT_EQ(t.rows(), 4u);
  EXPECT_DOUBLE_EQ(t.values[t.column("latency")][2], 4.0);
  std::istringstream bad("entropy,rarity,attn_var,kv_bits,latency,accuracy\n1,2,3\n");
  try {
    read_csv_table(bad, "mem.csv");
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()), "mem.csv:2: 3 columns, the header has 6");
  }
}

// The error message of reading content as a CSV, with the file's path spelled FILE.
std::string csv_error(const std::string& content) {
  const std::string path = temp_path("bad.csv");
  write_file(path, content);
  std::string msg;
  try {
    read_csv_table(path);
  } catch (const Error& e) {
    msg = e.what();
    if (msg.rfind(path, 0) == 0) msg = "FILE" + msg.substr(path.size());
  }
  fs::remove(path);
  return msg;
}

TEST(CsvStats, MalformedInputNamesFileAndLine) {
  const std::string head = "entropy,rarity,attn_var,kv_bits,latency,accuracy\n";
  EXPECT_EQ(csv_error(head + "1,2,3,4,5,6\n1,2,3,4,5\n"), "FILE:3: 5 columns, the header has 6");
  EXPECT_EQ(csv_error(head + "1,2,3,4,5,6\n1,2,x3,4,5,6\n"),
            "FILE:3: column 'attn_var': 'x3' is not a finite number");
  EXPECT_EQ(csv_error(head + "1,2,,4,5,6\n"), "FILE:2: column 'attn_var': '' is not a finite number");
  EXPECT_EQ(csv_error("entropy,rarity,attn_var,latency,accuracy\n1,2,3,4,5\n"),
            "FILE:1: header lacks the column 'kv_bits'");
  EXPECT_EQ(csv_error("1,2,3,4,5,6\n"), "FILE:1: header lacks the column 'entropy'");
  EXPECT_EQ(csv_error(""), "FILE: empty file (no header)");
  EXPECT_EQ(csv_error(head), "FILE: no data rows after the header");
}

// ---------------------------------------------------------------------------------------------------
// On the real model.

class CollectTest : public test::ModelSuite {
 protected:
  void SetUp() override {
    test::ModelSuite::SetUp();
    if (IsSkipped()) return;
    data_ = temp_path("data.jsonl");
    write_file(
        data_,
        R"({"ind": 11, "ctx": "[header] How to water a plant [title] Fill a cup. [step] Pour", "endings": ["the sand.", "the water slowly into the pot.", "a song.", "it out of the window."], "label": 1})"
        "\n"
        R"({"ind": 12, "ctx": "A boy kicks a ball across the yard. he", "endings": ["eats it.", "flies away.", "runs after it and kicks it again.", "sleeps."], "label": 2})"
        "\n");
    backend_ = make_backend("cpu", 1);
  }
  void TearDown() override {
    for (const std::string& f : cleanup_) {
      fs::remove(f);
      fs::remove(f + ".json");
    }
    if (!data_.empty()) fs::remove(data_);
  }

  CollectOptions options(const std::string& out) {
    cleanup_.push_back(out);
    CollectOptions o;
    o.data_path = data_;
    o.out_path = out;
    o.tokens = 20;  // the first example and part of the second
    o.window = 3;
    o.force = true;
    o.model_sha256 = "test";  // skip hashing the model in tests
    o.git_commit = "test";
    return o;
  }
  CollectSummary run(const CollectOptions& o, const std::string& policy = "rule") {
    auto pol = make_policy(policy);
    return collect(*model_, *backend_, *pol, o, nullptr);
  }

  std::unique_ptr<Backend> backend_;
  std::string data_;
  std::vector<std::string> cleanup_;
};

TEST_F(CollectTest, WritesRowsSidecarAndLabels) {
  const CollectOptions o = options(temp_path("a.csv"));
  const CollectSummary s = run(o);
  EXPECT_EQ(s.rows_written, 20);
  EXPECT_EQ(s.examples, 2);
  const CsvTable t = read_csv_table(o.out_path);
  ASSERT_EQ(t.rows(), 20u);
  EXPECT_EQ(t.columns, collect_columns(true));
  const auto& pos = t.values[t.column("position")];
  const auto& ex = t.values[t.column("example")];
  EXPECT_EQ(pos[0], 0);
  EXPECT_EQ(ex[0], 1);
  EXPECT_EQ(ex[19], 2);
  EXPECT_EQ(t.values[t.column("ind")][0], 11);
  for (size_t i = 0; i < t.rows(); ++i) {
    const double ob = t.values[t.column("oracle_bits")][i];
    EXPECT_TRUE(ob == 2 || ob == 4 || ob == 8 || ob == 16);
    const double kv = t.values[t.column("kv_bits")][i];
    EXPECT_TRUE(kv == 2 || kv == 4 || kv == 8 || kv == 16);
    EXPECT_GE(t.values[t.column("dmg2")][i], 0);
    EXPECT_GE(t.values[t.column("dmg8")][i], 0);
    EXPECT_GE(t.values[t.column("latency")][i], 0);
    EXPECT_GT(t.values[t.column("recv")][i], 0);
  }
  // 2 bits damage more than 8 on average.
  double d2 = 0, d8 = 0;
  for (size_t i = 0; i < t.rows(); ++i)
    d2 += t.values[t.column("dmg2")][i], d8 += t.values[t.column("dmg8")][i];
  EXPECT_GT(d2, 10 * d8);
  const nlohmann::json side = test::load_json(o.out_path + ".json");
  EXPECT_EQ(side["complete"], true);
  EXPECT_EQ(side["rows"]["count"], 20);
  EXPECT_EQ(side["window"], 3);
  EXPECT_EQ(side["examples"].size(), 2u);
  EXPECT_EQ(side["policy"], "rule:2.00,4.00,6.50");
  EXPECT_EQ(side["params"]["data_sha256"].get<std::string>().size(), 64u);
  EXPECT_EQ(side["split"]["train"].size() + side["split"]["val"].size() + side["split"]["test"].size(), 2u);
  // A static policy fills kv_bits with its width.
  CollectOptions o16 = options(temp_path("s16.csv"));
  o16.labels = false;
  o16.tokens = 5;
  run(o16, "static:16");
  const CsvTable t16 = read_csv_table(o16.out_path);
  EXPECT_EQ(t16.columns, collect_columns(false));
  for (double v : t16.values[t16.column("kv_bits")]) EXPECT_EQ(v, 16);
}

TEST_F(CollectTest, SameInputsSameCsvExceptLatency) {
  const CollectOptions a = options(temp_path("a.csv")), b = options(temp_path("b.csv"));
  run(a);
  run(b);
  const auto ra = without_latency(read_text(a.out_path)), rb = without_latency(read_text(b.out_path));
  ASSERT_EQ(ra.size(), 21u);
  EXPECT_EQ(ra, rb);
}

TEST_F(CollectTest, ResumeAfterInterruptionGivesTheSameRows) {
  const CollectOptions full = options(temp_path("full.csv"));
  run(full);
  const std::string whole = read_text(full.out_path);
  // An interrupted run: the sidecar as written at its start, the header, 13 rows (inside the first
  // example) and half of the 14th row.
  CollectOptions part = options(temp_path("part.csv"));
  const std::vector<std::string> lines = lines_of(whole);
  std::string cut;
  for (int i = 0; i <= 13; ++i) cut += lines[i] + "\n";
  cut += lines[14].substr(0, lines[14].size() / 2);
  write_file(part.out_path, cut);
  fs::copy_file(full.out_path + ".json", part.out_path + ".json", fs::copy_options::overwrite_existing);
  part.resume = true;
  part.force = false;
  const CollectSummary s = run(part);
  EXPECT_EQ(s.rows_before, 13);
  EXPECT_EQ(s.rows_written, 7);
  EXPECT_EQ(without_latency(read_text(part.out_path)), without_latency(whole));
  EXPECT_EQ(test::load_json(part.out_path + ".json")["complete"], true);
  // Resuming a complete file writes nothing.
  EXPECT_EQ(run(part).rows_written, 0);
}

TEST_F(CollectTest, JobsOneAndTwoGiveTheSameCsv) {
  // A third example, so that two jobs finish out of order at least sometimes.
  std::ofstream(data_, std::ios::app)
      << R"({"ind": 13, "ctx": "She opens the oven and", "endings": ["a cat.", "takes out the bread.", "x", "y"], "label": 1})"
      << "\n";
  CollectOptions one = options(temp_path("one.csv")), two = options(temp_path("two.csv"));
  one.tokens = two.tokens = 0;  // every example
  two.jobs = 2;
  two.policy_spec = "rule";
  const CollectSummary s1 = run(one), s2 = run(two);
  EXPECT_EQ(s1.rows_written, s2.rows_written);
  EXPECT_EQ(s1.oracle_counts, s2.oracle_counts);
  const auto r1 = without_latency(read_text(one.out_path)), r2 = without_latency(read_text(two.out_path));
  ASSERT_GT(r1.size(), 30u);
  EXPECT_EQ(r1, r2);
  const nlohmann::json j1 = test::load_json(one.out_path + ".json"),
                       j2 = test::load_json(two.out_path + ".json");
  EXPECT_EQ(j1["params"], j2["params"]);
  EXPECT_EQ(j1["examples"], j2["examples"]);
  EXPECT_EQ(j2["jobs"], 2);
  EXPECT_EQ(j1["quantizer"], "ladder=2=K3V2g64,4=K5V4g64,8=K8V8g32,16=F16;rotate=1;clip=1;seed=461547792737");
}

TEST_F(CollectTest, PlainTextInChunks) {
  const std::string text_path = temp_path("text.txt");
  cleanup_.push_back(text_path);
  write_file(text_path,
             " = A small river = \n\n The river runs past the old mill and under two stone bridges before it "
             "reaches the sea . In spring it floods the lower fields .\n");
  CollectOptions o = options(temp_path("t.csv"));
  o.data_path.clear();
  o.text_path = text_path;
  o.skip_tokens = 5;
  o.chunk = 8;
  o.tokens = 0;
  const CollectSummary s = run(o);
  const CsvTable t = read_csv_table(o.out_path);
  EXPECT_EQ(t.columns, collect_columns(true));
  const nlohmann::json side = test::load_json(o.out_path + ".json");
  EXPECT_EQ(side["data"]["format"], "text");
  EXPECT_EQ(side["params"]["text"]["chunk"], 8);
  EXPECT_EQ(side["params"]["text"]["skip_tokens"], 5);
  // Every chunk but the last has 8 tokens, so 7 rows; `ind` holds its first token's offset.
  const auto& ex = side["examples"];
  ASSERT_GE(ex.size(), 3u);
  int64_t rows = 0;
  for (size_t i = 0; i < ex.size(); ++i) {
    EXPECT_EQ(ex[i]["example"], static_cast<int>(i) + 1);
    EXPECT_EQ(ex[i]["first_token"], 5 + 8 * static_cast<int>(i));
    if (i + 1 < ex.size()) {
      EXPECT_EQ(ex[i]["rows"], 7);
    }
    rows += ex[i]["rows"].get<int64_t>();
  }
  EXPECT_EQ(s.rows_written, rows);
  ASSERT_EQ(t.rows(), static_cast<size_t>(rows));
  EXPECT_EQ(t.values[t.column("example")][0], 1);
  EXPECT_EQ(t.values[t.column("ind")][0], 5);
  EXPECT_EQ(t.values[t.column("position")][7], 0);  // the second chunk starts over
  EXPECT_EQ(t.values[t.column("example")][7], 2);
  EXPECT_EQ(t.values[t.column("ind")][7], 13);
  // Resume checks the text parameters too.
  o.resume = true;
  o.chunk = 9;
  try {
    run(o);
    FAIL() << "resume with another chunk was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("--resume: text differs"), std::string::npos) << e.what();
  }
}

TEST_F(CollectTest, BadInputFailsBeforeAnyRow) {
  auto error_of = [&](CollectOptions o) {
    try {
      run(o);
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("(no error)");
  };
  const std::string out = temp_path("bad.csv");
  CollectOptions o = options(out);
  o.data_path = temp_path("absent.jsonl");
  EXPECT_EQ(error_of(o), o.data_path + ": cannot open file");
  EXPECT_FALSE(fs::exists(out));
  // A malformed line names the file and line, and nothing is written.
  const std::string bad = temp_path("bad.jsonl");
  cleanup_.push_back(bad);
  write_file(bad, read_text(data_) + "{\"ctx\": \"x\", \"endings\": [1, 2]\n");
  o.data_path = bad;
  EXPECT_EQ(error_of(o).rfind(bad + ":3: ", 0), 0u) << error_of(o);
  EXPECT_FALSE(fs::exists(out));
  o.data_path = data_;
  o.text_path = data_;
  EXPECT_EQ(error_of(o), "--data and -f cannot be given together");
  o.data_path.clear();
  o.chunk = 1;
  EXPECT_EQ(error_of(o), "--chunk must be in 2..4096 (the context size)");
  o.chunk = 8;
  o.skip_tokens = 1 << 30;
  EXPECT_NE(error_of(o).find("not enough to skip"), std::string::npos) << error_of(o);
  o = options(out);
  o.jobs = 0;
  EXPECT_EQ(error_of(o), "--jobs must be at least 1");
  o.jobs = 2;
  o.policy_spec = "rule:9";
  EXPECT_NE(error_of(o).find("cannot make the policy 'rule:9'"), std::string::npos) << error_of(o);
  EXPECT_FALSE(fs::exists(out));
}

TEST_F(CollectTest, ResumeRefusesOtherParameters) {
  CollectOptions o = options(temp_path("a.csv"));
  o.tokens = 4;
  run(o);
  o.resume = true;
  o.tau = 0.5;
  try {
    run(o);
    FAIL() << "resume with another tau was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("--resume: tau differs"), std::string::npos) << e.what();
  }
  // Without --resume or --force an existing CSV is not overwritten.
  o.resume = false;
  o.force = false;
  o.tau = 1e-3;
  EXPECT_THROW(run(o), Error);
  // A header that is not this run's columns.
  o.resume = true;
  o.tau = CollectOptions{}.tau;
  write_file(o.out_path, "entropy,rarity\n1,2\n");
  try {
    run(o);
    FAIL() << "resume of a foreign CSV was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(":1: header differs"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace kvd
