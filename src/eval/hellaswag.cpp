// HellaSwag JSONL reader and lm-evaluation-harness's text preprocessing.
#include "eval/hellaswag.h"

#include <fstream>
#include <nlohmann/json.hpp>

#include "util/error.h"

namespace kvd {
namespace {

// Python's str.strip() whitespace, for ASCII text (space, \t \n \v \f \r and the separators \x1c-\x1f).
bool py_space(char c) { return c == ' ' || (c >= '\t' && c <= '\r') || (c >= '\x1c' && c <= '\x1f'); }

std::string_view strip(std::string_view s) {
  while (!s.empty() && py_space(s.front())) s.remove_prefix(1);
  while (!s.empty() && py_space(s.back())) s.remove_suffix(1);
  return s;
}

// Python's str.replace(from, to): non-overlapping, left to right, one pass.
std::string replace_all(std::string_view s, std::string_view from, std::string_view to) {
  std::string out;
  size_t i = 0;
  while (i < s.size()) {
    const size_t j = s.find(from, i);
    if (j == std::string_view::npos) break;
    out.append(s.substr(i, j - i));
    out.append(to);
    i = j + from.size();
  }
  out.append(s.substr(i));
  return out;
}

// re.sub(r"\[.*?\]", "", s): at each '[', the nearest ']' with no newline in between closes the match.
std::string remove_bracketed(std::string_view s) {
  std::string out;
  size_t i = 0;
  while (i < s.size()) {
    if (s[i] == '[') {
      size_t j = i + 1;
      while (j < s.size() && s[j] != ']' && s[j] != '\n') ++j;
      if (j < s.size() && s[j] == ']') {
        i = j + 1;
        continue;
      }
    }
    out.push_back(s[i++]);
  }
  return out;
}

std::string where(const std::string& path, int line) { return path + ":" + std::to_string(line) + ": "; }

}  // namespace

std::string hellaswag_preprocess(std::string_view text) {
  std::string t(strip(text));
  t = replace_all(t, " [title]", ". ");
  t = remove_bracketed(t);
  return replace_all(t, "  ", " ");
}

std::string hellaswag_text(const HellaSwagExample& ex) {
  const std::string ctx = hellaswag_preprocess(ex.ctx), ending = hellaswag_preprocess(ex.endings[ex.label]);
  return std::string(strip(ctx)) + " " + std::string(strip(ending));
}

std::vector<HellaSwagExample> read_hellaswag(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(path + ": cannot open file");
  return read_hellaswag(in, path);
}

std::vector<HellaSwagExample> read_hellaswag(std::istream& in, const std::string& path) {
  std::vector<HellaSwagExample> out;
  std::string text;
  int line = 0;
  while (std::getline(in, text)) {
    ++line;
    if (!text.empty() && text.back() == '\r') text.pop_back();
    if (strip(text).empty()) continue;
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(text);
    } catch (const nlohmann::json::parse_error& e) {
      std::string why = e.what();
      const size_t close = why.find("] ");
      if (why.rfind("[json.exception", 0) == 0 && close != std::string::npos) why = why.substr(close + 2);
      throw Error(where(path, line) + "not valid JSON (" + why + ")");
    }
    if (!j.is_object()) throw Error(where(path, line) + "expected a JSON object, got " + j.type_name());
    HellaSwagExample ex;
    ex.line = line;
    if (!j.contains("ctx")) throw Error(where(path, line) + "missing field 'ctx'");
    if (!j["ctx"].is_string())
      throw Error(where(path, line) + "field 'ctx' must be a string, got " + j["ctx"].type_name());
    ex.ctx = j["ctx"].get<std::string>();
    if (!j.contains("endings")) throw Error(where(path, line) + "missing field 'endings'");
    const nlohmann::json& e = j["endings"];
    if (!e.is_array() || e.size() != 4)
      throw Error(
          where(path, line) + "field 'endings' must be an array of 4 strings, got " +
          (e.is_array() ? "an array of " + std::to_string(e.size()) : std::string("a ") + e.type_name()));
    for (size_t i = 0; i < 4; ++i) {
      if (!e[i].is_string())
        throw Error(where(path, line) + "field 'endings' must be an array of 4 strings, entry " +
                    std::to_string(i) + " is a " + e[i].type_name());
      ex.endings[i] = e[i].get<std::string>();
    }
    if (!j.contains("label")) throw Error(where(path, line) + "missing field 'label'");
    const nlohmann::json& l = j["label"];
    if (!l.is_number_integer())
      throw Error(where(path, line) + "field 'label' must be an integer in 0..3, got " + l.dump());
    const int64_t label = l.get<int64_t>();
    if (label < 0 || label > 3)
      throw Error(where(path, line) + "field 'label' must be an integer in 0..3, got " +
                  std::to_string(label));
    ex.label = static_cast<int>(label);
    if (j.contains("ind") && j["ind"].is_number_integer()) ex.ind = j["ind"].get<int64_t>();
    if (j.contains("ctx_a") && j["ctx_a"].is_string() && j.contains("ctx_b") && j["ctx_b"].is_string()) {
      ex.ctx_a = j["ctx_a"].get<std::string>();
      ex.ctx_b = j["ctx_b"].get<std::string>();
      ex.has_ctx_parts = true;
    }
    if (j.contains("activity_label") && j["activity_label"].is_string())
      ex.activity_label = j["activity_label"].get<std::string>();
    out.push_back(std::move(ex));
  }
  if (in.bad()) throw Error(path + ": read error");
  if (out.empty()) throw Error(path + ": no examples (the file is empty)");
  return out;
}

}  // namespace kvd
