// kvdial train on synthetic CSVs: a label the features determine is learned, the same inputs give the
// same file byte for byte, --target auto picks by the stated rule, the sidecar's quantizer is recorded,
// and malformed CSVs (missing column, non-numeric cell, empty, bad split or class) are refused clearly.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <sstream>
#include <string>

#include "controller/controller_file.h"
#include "controller/mlp.h"
#include "controller/train.h"
#include "util/error.h"

namespace kvd {
namespace {

const char* kHeader =
    "entropy,rarity,attn_var,kv_bits,latency,accuracy,example,ind,position,token,attn_max,k_norm,v_norm,"
    "max_prob,argmax,split,dmg2,dmg4,dmg8,oracle_bits,recv,proxy2,proxy4,proxy8";

std::string temp_path(const std::string& name) {
  return (std::filesystem::temp_directory_path() / ("kvdial_test_" + name)).string();
}

// Rows whose dmg4 (and so oracle_bits at tau 0.004) is decided by attn_max and position; the rule
// (kv_bits) follows entropy as the seed's does. edit may change a row's cells before it is written.
std::string synthetic_csv(int rows, uint64_t seed,
                          const std::function<void(int, std::vector<std::string>&)>& edit = nullptr) {
  SplitMix64 rng(seed);
  std::ostringstream s;
  s << kHeader << "\n";
  for (int r = 0; r < rows; ++r) {
    const int example = r / 20;
    const char* split = example % 10 == 8 ? "val" : example % 10 == 9 ? "test" : "train";
    const double entropy = 7 * rng.uniform(), attn_max = 0.4 + 0.6 * rng.uniform();
    const int position = r % 20;
    const double score = attn_max - 0.01 * position;  // > 0.55: sensitive
    const double dmg4 = 0.004 * std::exp(8 * (score - 0.55)), dmg2 = 50 * dmg4, dmg8 = dmg4 / 300;
    const int oracle = dmg4 <= 0.004 ? 4 : 8;
    const int kv = entropy >= 6.5 ? 16 : entropy >= 4 ? 8 : entropy >= 2 ? 4 : 2;
    char buf[1024];
    std::snprintf(buf, sizeof buf,
                  "%.7g,%.7g,%.7g,%d,%.4g,%d,%d,%d,%d,%d,%.7g,%.7g,%.7g,%.7g,%d,%s,%.7g,%.7g,%.7g,%d,%.7g,%."
                  "7g,%.7g,%.7g",
                  entropy, 3.4 + 7 * rng.uniform(), 0.1 * rng.uniform(), kv, 20.0, 0, example + 1, example,
                  position, static_cast<int>(rng.below(49152)), attn_max, 12 + 20 * rng.uniform(),
                  3 + 12 * rng.uniform(), rng.uniform(), 7, split, dmg2, dmg4, dmg8, oracle, 2 * score,
                  20 * score, 4 * score, 0.2 * score);
    std::vector<std::string> cells;
    std::stringstream ss(buf);
    std::string c;
    while (std::getline(ss, c, ',')) cells.push_back(c);
    if (edit) edit(r, cells);
    for (size_t i = 0; i < cells.size(); ++i) s << (i ? "," : "") << cells[i];
    s << "\n";
  }
  return s.str();
}

std::string write(const std::string& name, const std::string& text) {
  const std::string p = temp_path(name);
  std::ofstream(p, std::ios::binary) << text;
  return p;
}

TrainOptions small_options(const std::string& csv, const std::string& target) {
  TrainOptions o;
  o.csvs = {csv};
  o.target = target;
  o.hidden = {16, 8};
  o.fit.epochs = 60;
  o.fit.lr = 0.01;
  o.fit.patience = 15;
  return o;
}

TEST(ControllerTrain, LearnsALabelTheFeaturesDecide) {
  const std::string csv = write("train_ok.csv", synthetic_csv(2000, 1));
  std::filesystem::remove(csv + ".json");
  for (const char* target : {"oracle_bits", "damage"}) {
    const TrainResult r = train_controller(small_options(csv, target));
    const auto& m = r.model.metrics;
    EXPECT_EQ(r.model.target, target);
    EXPECT_GE(m["val"]["accuracy"].get<double>(), 0.9) << target << "\n" << r.report_md;
    EXPECT_GE(m["test"]["accuracy"].get<double>(), 0.9) << target;
    // The rule (entropy) knows nothing of these labels.
    EXPECT_LT(m["test"]["rule_accuracy"].get<double>(), 0.7);
    EXPECT_EQ(r.model.quantizer, "unknown");
    EXPECT_NE(r.report_md.find("## test"), std::string::npos);
    EXPECT_NE(r.report_md.find("confusion"), std::string::npos);
    if (std::string(target) == "damage") {
      EXPECT_NE(r.report_md.find("Spearman rank correlation"), std::string::npos);
    }
  }
  // kv_bits imitates the rule, which entropy alone decides.
  const TrainResult kv = train_controller(small_options(csv, "kv_bits"));
  EXPECT_GE(kv.model.metrics["test"]["accuracy"].get<double>(), 0.9) << kv.report_md;
  std::filesystem::remove(csv);
}

TEST(ControllerTrain, SameInputsSameFileByteForByte) {
  const std::string csv = write("train_det.csv", synthetic_csv(600, 2));
  std::filesystem::remove(csv + ".json");
  TrainOptions o = small_options(csv, "auto");
  o.fit.epochs = 10;
  const TrainResult a = train_controller(o), b = train_controller(o);
  const std::string pa = temp_path("det_a.json"), pb = temp_path("det_b.json");
  write_training_outputs(a, pa);
  write_training_outputs(b, pb);
  auto read = [](const std::string& p) {
    std::ifstream in(p, std::ios::binary);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
  };
  EXPECT_EQ(read(pa), read(pb));
  EXPECT_EQ(read(pa + ".report.json"), read(pb + ".report.json"));
  EXPECT_EQ(read(pa + ".curve.csv"), read(pb + ".curve.csv"));
  // The file loads back, and the auto note names the winner and the rule.
  const ControllerModel m = load_controller(pa);
  EXPECT_EQ(m.net.params(), a.model.net.params());
  EXPECT_NE(a.note.find("auto: " + a.model.target + " won"), std::string::npos) << a.note;
  o.fit.seed = 1;
  EXPECT_NE(controller_to_json(train_controller(o).model), controller_to_json(a.model));
  for (const std::string& p : {pa, pb})
    for (const char* ext : {"", ".report.md", ".report.json", ".curve.csv"}) std::filesystem::remove(p + ext);
  std::filesystem::remove(csv);
}

TEST(ControllerTrain, SidecarQuantizerAndTauAreUsed) {
  const std::string csv = write("train_side.csv", synthetic_csv(400, 3));
  std::ofstream(csv + ".json") << R"({"params": {"tau": 0.001, "quantizer": "K3V2g64,K5V4g64,K8V8g32,F16"}})";
  TrainOptions o = small_options(csv, "damage");
  o.fit.epochs = 3;
  const TrainResult r = train_controller(o);
  EXPECT_EQ(r.model.quantizer, "K3V2g64,K5V4g64,K8V8g32,F16");
  EXPECT_DOUBLE_EQ(r.model.tau, 0.001);
  o.tau = 0.02;
  EXPECT_DOUBLE_EQ(train_controller(o).model.tau, 0.02);
  std::ofstream(csv + ".json") << "{not json";
  EXPECT_THROW(train_controller(o), Error);
  std::filesystem::remove(csv + ".json");
  std::filesystem::remove(csv);
}

void expect_csv_refused(const std::string& text, const std::string& want, const std::string& target = "auto",
                        const std::vector<std::string>& features = {}) {
  const std::string csv = write("train_bad.csv", text);
  std::filesystem::remove(csv + ".json");
  TrainOptions o = small_options(csv, target);
  o.features = features;
  o.fit.epochs = 1;
  try {
    train_controller(o);
    ADD_FAILURE() << "accepted; wanted: " << want;
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find(want), std::string::npos) << "message: " << msg << "\nwanted: " << want;
    EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
  }
  std::filesystem::remove(csv);
}

std::string drop_column(const std::string& text, const std::string& name) {
  std::stringstream in(text);
  std::string line, out;
  int drop = -1;
  while (std::getline(in, line)) {
    std::vector<std::string> cells;
    std::stringstream ss(line);
    std::string c;
    while (std::getline(ss, c, ',')) cells.push_back(c);
    if (drop < 0)
      for (size_t i = 0; i < cells.size(); ++i)
        if (cells[i] == name) drop = static_cast<int>(i);
    cells.erase(cells.begin() + drop);
    for (size_t i = 0; i < cells.size(); ++i) out += (i ? "," : "") + cells[i];
    out += "\n";
  }
  return out;
}

TEST(ControllerTrain, MalformedCsvsAreRefused) {
  const std::string good = synthetic_csv(300, 4);
  expect_csv_refused("", "empty file");
  expect_csv_refused(std::string(kHeader) + "\n", "no data rows");
  expect_csv_refused(drop_column(good, "split"), "lacks the column 'split'");
  expect_csv_refused(drop_column(good, "attn_max"), "lacks the column 'attn_max'");
  expect_csv_refused(drop_column(good, "dmg4"), "lacks the column 'dmg4'", "damage");
  expect_csv_refused(
      drop_column(drop_column(drop_column(drop_column(good, "oracle_bits"), "dmg2"), "dmg4"), "dmg8"),
      "lacks the column 'oracle_bits'", "oracle_bits");
  expect_csv_refused(synthetic_csv(300, 4,
                                   [](int r, std::vector<std::string>& c) {
                                     if (r == 17) c[10] = "abc";
                                   }),
                     ":19: column 'attn_max': 'abc' is not a finite number");
  expect_csv_refused(synthetic_csv(300, 4,
                                   [](int r, std::vector<std::string>& c) {
                                     if (r == 5) c[0] = "nan";
                                   }),
                     "column 'entropy': 'nan' is not a finite number");
  expect_csv_refused(synthetic_csv(300, 4,
                                   [](int r, std::vector<std::string>& c) {
                                     if (r == 3) c.pop_back();
                                   }),
                     ":5: 23 columns, the header has 24");
  expect_csv_refused(synthetic_csv(300, 4,
                                   [](int r, std::vector<std::string>& c) {
                                     if (r == 9) c[15] = "dev";
                                   }),
                     "row 10: split 'dev' is not train, val or test");
  expect_csv_refused(synthetic_csv(300, 4,
                                   [](int r, std::vector<std::string>& c) {
                                     if (r == 2) c[19] = "5";
                                   }),
                     "row 3: oracle_bits = 5 is not a width class", "kv_bits");
  expect_csv_refused(synthetic_csv(300, 4,
                                   [](int r, std::vector<std::string>& c) {
                                     if (r == 2) c[3] = "3";
                                   }),
                     "row 3: kv_bits = 3 is not a width class");
  expect_csv_refused(synthetic_csv(300, 4,
                                   [](int r, std::vector<std::string>& c) {
                                     if (r == 2) c[17] = "-1";
                                   }),
                     "row 3: dmg4 is negative");
  expect_csv_refused(synthetic_csv(100, 4,
                                   [](int, std::vector<std::string>& c) {
                                     if (c[15] == "val") c[15] = "train";
                                   }),
                     "no rows in the 'val' split");
  expect_csv_refused(good, "'latency' is not a feature the engine computes", "auto", {"entropy", "latency"});
  expect_csv_refused(good, "'entropy' appears twice", "auto", {"entropy", "entropy"});
  // Truncated in the middle of a row.
  expect_csv_refused(good.substr(0, good.size() - 40), "columns, the header has 24");
  EXPECT_THROW(train_controller(small_options("/nonexistent/x.csv", "auto")), Error);
  TrainOptions bad = small_options("x.csv", "loss");
  EXPECT_THROW(train_controller(bad), Error);
}

}  // namespace
}  // namespace kvd
