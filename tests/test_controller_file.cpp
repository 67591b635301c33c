// Controller files: save -> load gives identical predictions (in the predictor and as a learned policy),
// the text is deterministic, and malformed files are refused with an error naming the file and problem.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>

#include "controller/controller_file.h"
#include "controller/predictor.h"
#include "policy/budget.h"
#include "policy/features.h"
#include "policy/learned.h"
#include "policy/policy.h"
#include "util/error.h"

namespace kvd {
namespace {

using nlohmann::json;

ControllerModel random_model(const std::string& target, uint64_t seed = 1) {
  ControllerModel m;
  m.target = target;
  m.features = feature_names();
  const size_t nf = m.features.size();
  SplitMix64 rng(seed);
  for (size_t i = 0; i < nf; ++i) {
    m.mean.push_back(rng.normal());
    m.std.push_back(0.5 + rng.uniform());
    m.min.push_back(-1e9);
    m.max.push_back(1e9);
  }
  const int out = target == "damage" ? 3 : 4;
  m.net = Mlp({static_cast<int>(nf), 16, 8, out});
  m.net.init(seed);
  if (target == "damage") {
    m.target_mean = {-1.5, -5.5, -11.0};
    m.target_std = {0.8, 1.0, 1.2};
  }
  m.quantizer = "K3V2g64,K5V4g64,K8V8g32,F16";
  m.csvs = {{"data/x.csv", std::string(64, 'a'), 12}};
  m.training = {{"seed", 0}};
  m.metrics = {{"val", {{"accuracy", 0.5}}}};
  round_for_file(m);
  return m;
}

TokenFeatures random_features(SplitMix64& rng, int32_t position) {
  TokenFeatures f;
  f.entropy = static_cast<float>(4 * rng.uniform());
  f.rarity = static_cast<float>(3 + 8 * rng.uniform());
  f.attn_var = static_cast<float>(0.1 * rng.uniform());
  f.attn_max = static_cast<float>(rng.uniform());
  f.k_norm = static_cast<float>(12 + 20 * rng.uniform());
  f.v_norm = static_cast<float>(3 + 12 * rng.uniform());
  f.max_prob = static_cast<float>(rng.uniform());
  f.position = position;
  return f;
}

std::string temp_path(const std::string& name) {
  return (std::filesystem::temp_directory_path() / ("kvdial_test_" + name)).string();
}

TEST(ControllerFile, SaveLoadGivesIdenticalPredictions) {
  for (const char* target : {"oracle_bits", "kv_bits", "damage"}) {
    const ControllerModel m = random_model(target);
    const std::string path = temp_path(std::string("ctrl_") + target + ".json");
    save_controller(m, path);
    const ControllerModel back = load_controller(path, m.quantizer);
    EXPECT_EQ(back.net.params(), m.net.params()) << target;
    EXPECT_EQ(back.mean, m.mean);
    EXPECT_EQ(back.std, m.std);
    EXPECT_EQ(controller_to_json(back), controller_to_json(m)) << "the text round-trips";
    ControllerPredictor pa(m), pb(back);
    SplitMix64 rng(3);
    for (int i = 0; i < 500; ++i) {
      const TokenFeatures f = random_features(rng, i);
      std::vector<double> raw;
      for (size_t k = 0; k < feature_names().size(); ++k) raw.push_back(feature_at(f, k));
      EXPECT_EQ(pa.predict(raw.data()), pb.predict(raw.data()));
      EXPECT_EQ(pa.cost(), pb.cost());
    }
    // As policies too, with and without a budget: the same widths token for token.
    auto a = make_learned_policy(m, "mem", 0, PolicyContext{});
    auto b = make_policy("learned:" + path);
    auto ab = make_learned_policy(m, "mem", 4.0, PolicyContext{});
    auto bb = make_policy("learned:" + path + "@4");
    EXPECT_TRUE(b->needs_features());
    EXPECT_EQ(bb->describe(), "learned:" + path + "@4.00");
    for (int i = 0; i < 300; ++i) {
      const TokenFeatures f = random_features(rng, i);
      EXPECT_EQ(a->choose(f), b->choose(f));
      EXPECT_EQ(ab->choose(f), bb->choose(f));
    }
    EXPECT_EQ(b->decision_cost().calls, 300);
    EXPECT_GT(b->decision_cost().ns, 0);
    std::filesystem::remove(path);
  }
}

TEST(ControllerFile, FeatureAtMatchesFeatureVector) {
  SplitMix64 rng(8);
  const TokenFeatures f = random_features(rng, 17);
  const std::vector<float> v = feature_vector(f);
  ASSERT_EQ(v.size(), feature_names().size());
  for (size_t i = 0; i < v.size(); ++i) EXPECT_EQ(feature_at(f, i), v[i]) << feature_names()[i];
}

TEST(ControllerFile, FeaturesInAnotherOrderAreMappedByName) {
  ControllerModel m = random_model("oracle_bits");
  // Reverse the input order: permute the normalisation and the first layer's columns alike.
  ControllerModel r = m;
  std::reverse(r.features.begin(), r.features.end());
  std::reverse(r.mean.begin(), r.mean.end());
  std::reverse(r.std.begin(), r.std.end());
  std::reverse(r.min.begin(), r.min.end());
  std::reverse(r.max.begin(), r.max.end());
  const int in = m.net.inputs(), out = m.net.sizes()[1];
  for (int o = 0; o < out; ++o)
    for (int i = 0; i < in; ++i) r.net.weight(0)[o * in + i] = m.net.weight(0)[o * in + (in - 1 - i)];
  auto a = make_learned_policy(m, "a", 0, PolicyContext{});
  auto b = make_learned_policy(r, "b", 0, PolicyContext{});
  SplitMix64 rng(4);
  for (int i = 0; i < 200; ++i) {
    const TokenFeatures f = random_features(rng, i);
    EXPECT_EQ(a->choose(f), b->choose(f));
  }
}

// Expects parse_controller to throw a kvd::Error whose message starts with "NAME: " and holds want.
void expect_refused(const std::string& text, const std::string& want, const std::string& quantizer = "") {
  try {
    parse_controller(text, "ctl.json", quantizer);
    ADD_FAILURE() << "accepted; wanted an error with: " << want;
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_EQ(msg.rfind("ctl.json: ", 0), 0u) << msg;
    EXPECT_NE(msg.find(want), std::string::npos) << "message: " << msg << "\nwanted: " << want;
    EXPECT_EQ(msg.find('\n'), std::string::npos) << "one line: " << msg;
  }
}

json good_json(const std::string& target = "damage") {
  return json::parse(controller_to_json(random_model(target)));
}

void expect_refused(const std::function<void(json&)>& edit, const std::string& want,
                    const std::string& target = "damage") {
  json j = good_json(target);
  edit(j);
  expect_refused(j.dump(), want);
}

TEST(ControllerFile, MalformedFilesAreRefused) {
  const std::string good = controller_to_json(random_model("damage"));
  EXPECT_NO_THROW(parse_controller(good, "ctl.json"));
  expect_refused("", "not valid JSON");
  expect_refused(good.substr(0, good.size() / 2), "not valid JSON");  // truncated
  expect_refused("[1, 2]", "not a JSON object");
  expect_refused("{}", "lacks \"format\"");
  expect_refused([](json& j) { j["version"] = 2; }, "unknown format version 2");
  expect_refused([](json& j) { j["version"] = "1"; }, "version is not an integer");
  expect_refused([](json& j) { j["format"] = "other"; }, "\"format\"");
  expect_refused([](json& j) { j.erase("features"); }, "lacks \"features\"");
  expect_refused([](json& j) { j["features"][2] = "latency"; },
                 "feature 'latency' is not one the engine computes");
  expect_refused([](json& j) { j["features"][1] = "entropy"; }, "feature 'entropy' appears twice");
  expect_refused([](json& j) { j["features"].erase(j["features"].begin()); },
                 "normalization.mean has 8 values");
  expect_refused([](json& j) { j["normalization"]["std"][0] = 0; }, "normalization.std[0] is not positive");
  expect_refused([](json& j) { j["normalization"]["mean"][3] = "x"; },
                 "normalization.mean[3] is not a number");
  expect_refused([](json& j) { j["normalization"]["min"][2] = 2e9; }, "normalization.min[2] is above");
  expect_refused([](json& j) { j["normalization"].erase("max"); }, "normalization lacks \"max\"");
  expect_refused([](json& j) { j["target"] = "loss"; }, "unknown target 'loss'");
  expect_refused([](json& j) { j["classes"] = {2, 4, 8}; }, "\"classes\"");
  expect_refused([](json& j) { j["layers"][1]["in"] = 15; }, "layers[1].in = 15");
  expect_refused([](json& j) { j["layers"][0]["weights"].erase(0); }, "layers[0].weights must be an array");
  expect_refused([](json& j) { j["layers"][2]["bias"].push_back(1.0); }, "layers[2].bias has 4 values");
  expect_refused(
      [](json& j) {
        j["layers"][2]["out"] = 4;
        j["layers"][2]["bias"].push_back(0.0);
      },
      "the last layer has 4 outputs");
  expect_refused([](json& j) { j["layers"][0]["out"] = 100000; }, "layers[0].out = 100000 is outside");
  expect_refused([](json& j) { j["layers"][0]["activation"] = "tanh"; }, "activation must be \"relu\"");
  expect_refused([](json& j) { j["layers"] = json::array(); }, "\"layers\" must be an array of 1 to 8");
  expect_refused([](json& j) { j["output"]["kind"] = "class_logits"; }, "output.kind must be \"log_damage\"");
  expect_refused([](json& j) { j["output"]["tau"] = -1; }, "output.tau is not positive");
  expect_refused([](json& j) { j["output"]["std"][1] = 0; }, "output.std[1] is not positive");
  expect_refused([](json& j) { j.erase("quantizer"); }, "lacks \"quantizer\"");
  expect_refused([](json& j) { j["training_data"][0].erase("sha256"); }, "training_data[0] lacks \"sha256\"");
  expect_refused([](json& j) { j["metrics"] = 3; }, "\"metrics\" is not an object");
  expect_refused([](json& j) { j["output"]["kind"] = "log_damage"; }, "output.kind must be \"class_logits\"",
                 "oracle_bits");
  // NaN: JSON has no spelling for it (an overflowing literal, Inf, is the next test).
  expect_refused("{\"format\": NaN}", "not valid JSON");
}

TEST(ControllerFile, InfiniteWeightIsRefused) {
  json j = good_json("oracle_bits");
  std::string text = j.dump();
  const std::string key = "\"weights\":[";
  const size_t at = text.find(key) + key.size();
  const size_t comma = text.find(',', at);
  text.replace(at, comma - at, "1e999");
  // nlohmann refuses the overflowing literal itself (the loader's finiteness check stays as a second line).
  expect_refused(text, "number overflow parsing '1e999'");
}

TEST(ControllerFile, QuantizerMismatchIsRefused) {
  const ControllerModel m = random_model("damage");
  const std::string text = controller_to_json(m);
  EXPECT_NO_THROW(parse_controller(text, "ctl.json", m.quantizer));
  EXPECT_NO_THROW(parse_controller(text, "ctl.json", ""));  // caller does not know: not checked
  expect_refused(
      text, "trained on labels made with quantizer 'K3V2g64,K5V4g64,K8V8g32,F16', the cache runs 'K4V4g32'",
      "K4V4g32");
  json j = json::parse(text);
  j["quantizer"] = "unknown";  // labels whose settings nobody recorded: accepted
  EXPECT_NO_THROW(parse_controller(j.dump(), "ctl.json", "K4V4g32"));
}

TEST(ControllerFile, MissingOrEmptyFilesAreErrors) {
  EXPECT_THROW(load_controller("/nonexistent/ctl.json"), Error);
  EXPECT_THROW(make_policy("learned:/nonexistent/ctl.json"), Error);
  EXPECT_THROW(make_policy("learned:"), Error);
  const std::string path = temp_path("empty_ctl.json");
  { std::ofstream(path) << ""; }
  try {
    load_controller(path);
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()), path + ": empty controller file");
  }
  std::filesystem::remove(path);
}

}  // namespace
}  // namespace kvd
