// Shared test helpers: where the model, fixtures and evaluation data are, and skipping when absent.
#pragma once
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>

#include "model/model.h"

namespace kvd::test {

inline std::string source_dir() {
  const char* env = std::getenv("KVDIAL_SOURCE_DIR");
  return env ? env : KVDIAL_SOURCE_DIR;
}

// The default model fetched by scripts/setup.sh (or $KVDIAL_MODEL); empty when absent.
inline std::string model_path() {
  if (const char* env = std::getenv("KVDIAL_MODEL")) return env;
  const std::string p = source_dir() + "/models/SmolLM2-135M-Instruct.Q4_1.gguf";
  return std::filesystem::exists(p) ? p : "";
}

// ../shared/data beside the checkout (or $KVDIAL_DATA_DIR); empty when absent.
inline std::string data_dir() {
  if (const char* env = std::getenv("KVDIAL_DATA_DIR")) return env;
  const std::string p = source_dir() + "/../shared/data";
  return std::filesystem::exists(p) ? p : "";
}

inline std::string fixture_path(const std::string& name) { return source_dir() + "/tests/fixtures/" + name; }

inline nlohmann::json load_json(const std::string& path) {
  std::ifstream in(path);
  return nlohmann::json::parse(in);
}

// A test suite that maps the default model once for all its tests; each test skips when it is absent.
// Suites deriving from it run one after another, each with its own load.
class ModelSuite : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    const std::string p = model_path();
    if (!p.empty()) model_ = Model::load(p).release();
  }
  static void TearDownTestSuite() {
    delete model_;
    model_ = nullptr;
  }
  void SetUp() override {
    if (!model_) GTEST_SKIP() << "default model absent: run scripts/setup.sh to fetch it";
  }
  static inline Model* model_ = nullptr;
};

}  // namespace kvd::test

#define KVD_REQUIRE_MODEL(var)                       \
  const std::string var = ::kvd::test::model_path(); \
  if (var.empty()) GTEST_SKIP() << "default model absent: run scripts/setup.sh to fetch it"
