// libFuzzer target for the HellaSwag JSONL reader: reads the input as a JSONL file and, for every example
// it accepts, builds the text collect runs (lm-evaluation-harness's preprocessing of ctx and each ending).
// Only kvd::Error may escape read_hellaswag; anything else (a crash, a sanitizer report, a JSON library
// exception) is a bug.
#include <cstddef>
#include <cstdint>
#include <sstream>
#include <string>

#include "eval/hellaswag.h"
#include "util/error.h"

namespace {
volatile size_t g_sink;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  size_t h = kvd::hellaswag_preprocess(text).size();
  try {
    std::istringstream in(text);
    for (const kvd::HellaSwagExample& ex : kvd::read_hellaswag(in, "fuzz.jsonl")) {
      h += kvd::hellaswag_text(ex).size() + static_cast<size_t>(ex.ind) + static_cast<size_t>(ex.line);
      for (const std::string& e : ex.endings) h += kvd::hellaswag_preprocess(e).size();
      h += ex.ctx_a.size() + ex.ctx_b.size() + ex.activity_label.size();
    }
  } catch (const kvd::Error&) {
  }
  g_sink = h;
  return 0;
}
