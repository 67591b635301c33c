// libFuzzer target for the controller file loader: parses the input as a controller file and, when it
// is accepted, runs its MLP on a few feature vectors (with and without a budget) through the learned
// policy. Only kvd::Error may escape parse_controller; anything else (a crash, a sanitizer report,
// another exception) is a bug.
#include <cstddef>
#include <cstdint>
#include <string>

#include "controller/controller_file.h"
#include "controller/predictor.h"
#include "policy/learned.h"
#include "policy/policy.h"

namespace {
volatile int64_t g_sink;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  try {
    kvd::ControllerModel m = kvd::parse_controller(text, "fuzz.json", "K3V2g64,K5V4g64,K8V8g32,F16");
    int64_t h = static_cast<int64_t>(kvd::controller_to_json(m).size());
    {
      kvd::ControllerPredictor p(m);
      std::vector<double> raw(m.features.size(), 0.5);
      h += p.predict(raw.data());
    }
    auto policy = kvd::make_learned_policy(m, "fuzz", 4.0, kvd::PolicyContext{});
    for (int32_t pos = 0; pos < 40; ++pos) {
      kvd::TokenFeatures f;
      f.position = pos;
      f.entropy = static_cast<float>(pos % 7);
      f.attn_max = 0.5f;
      h += policy->choose(f);
    }
    g_sink = h;
  } catch (const kvd::Error&) {
  }
  return 0;
}
