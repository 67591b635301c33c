// HellaSwag in its original JSON-lines format (one example per line: ctx, endings[4], label, ind, ...),
// read with errors that name the file and line, and the text preprocessing of lm-evaluation-harness's
// hellaswag task (WikiHow markers such as "[header]" and "[step]" stripped).
#pragma once
#include <array>
#include <cstdint>
#include <istream>
#include <string>
#include <string_view>
#include <vector>

namespace kvd {

struct HellaSwagExample {
  int line = 0;      // 1-based line of the JSONL file: the example's id in kvdial's outputs
  int64_t ind = -1;  // the dataset's own `ind` field, -1 when absent
  std::string activity_label;
  std::string ctx;
  std::string ctx_a, ctx_b;    // the parts of ctx (lm-evaluation-harness builds its query from them)
  bool has_ctx_parts = false;  // both ctx_a and ctx_b were present as strings
  std::array<std::string, 4> endings;
  int label = 0;  // index of the correct ending
};

// lm-evaluation-harness's preprocess() (lm_eval/tasks/hellaswag/utils.py), step for step:
//   strip surrounding whitespace; " [title]" -> ". "; remove every "[...]" (shortest match, not across
//   a newline, like Python's re "\[.*?\]"); then one pass of "  " -> " " (Python's str.replace).
std::string hellaswag_preprocess(std::string_view text);

// The text collect runs: preprocess(ctx) and preprocess(endings[label]), each trimmed, joined by one
// space. (The harness's own query prefixes "activity_label: ", which also hides the leading space a
// stripped "[header]" leaves; without that prefix we trim instead.)
std::string hellaswag_text(const HellaSwagExample& ex);

// Reads every example of a JSONL file. Blank lines are skipped. Throws kvd::Error "FILE:LINE: ..." for
// a line that is not a JSON object, a missing or ill-typed `ctx` or `endings` (an array of 4 strings),
// a `label` that is not an integer in 0..3; "FILE: ..." for a file that cannot be read or holds no
// example.
std::vector<HellaSwagExample> read_hellaswag(const std::string& path);
// The same from a stream; `path` names it in the messages (fuzz/fuzz_hellaswag.cpp reads from memory).
std::vector<HellaSwagExample> read_hellaswag(std::istream& in, const std::string& path);

}  // namespace kvd
