// HellaSwag reader: lm-evaluation-harness's marker stripping, the text collect runs, and one error per
// kind of malformed input, each naming the file and line. All inputs are sentences written here.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include "eval/hellaswag.h"
#include "util/error.h"

namespace kvd {
namespace {

class TempFile {
 public:
  explicit TempFile(const std::string& content) {
    path_ = (std::filesystem::temp_directory_path() /
             ("kvdial_hs_" + std::to_string(::testing::UnitTest::GetInstance()->random_seed()) + "_" +
              ::testing::UnitTest::GetInstance()->current_test_info()->name() + ".jsonl"))
                .string();
    std::ofstream(path_, std::ios::binary) << content;
  }
  ~TempFile() { std::filesystem::remove(path_); }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

const char* kGood =
    R"({"ind": 7, "activity_label": "Baking", "ctx": "[header] How to bake bread [title] Mix the flour. [step] Add", "endings": ["warm water and stir.", "a bicycle.", "the moon.", "loud music."], "label": 0})";
const char* kGood2 =
    R"({"ctx": "A cat sits on the mat. it", "endings": ["a", "b", "washes its paws slowly.", "d"], "label": 2})";

// Reads the file and returns the error message (empty when it parses) with the file's path spelled FILE.
std::string error_of(const std::string& content) {
  TempFile f(content);
  try {
    read_hellaswag(f.path());
  } catch (const Error& e) {
    std::string m = e.what();
    if (m.rfind(f.path(), 0) == 0) m = "FILE" + m.substr(f.path().size());
    return m;
  }
  return "";
}

TEST(HellaSwagPreprocess, MatchesHarnessRules) {
  // " [title]" becomes ". ", other bracketed markers vanish, one pass of "  " -> " ", surrounding space
  // stripped.
  EXPECT_EQ(hellaswag_preprocess("[header] How to bake bread [title] Mix the flour. [step] Add"),
            " How to bake bread. Mix the flour. Add");
  EXPECT_EQ(hellaswag_preprocess("  plain text  "), "plain text");
  EXPECT_EQ(hellaswag_preprocess("a [substeps] b"), "a b");
  // Shortest match: two markers on one line are removed separately, text between them kept.
  EXPECT_EQ(hellaswag_preprocess("x [a] keep [b] y"), "x keep y");
  // No closing bracket: kept. A bracket never closes across a newline.
  EXPECT_EQ(hellaswag_preprocess("open [ bracket"), "open [ bracket");
  EXPECT_EQ(hellaswag_preprocess("a [b\nc] d"), "a [b\nc] d");
  // str.replace is one pass: four spaces become two (as in the harness).
  EXPECT_EQ(hellaswag_preprocess("a    b"), "a  b");
  EXPECT_EQ(hellaswag_preprocess("[title]"), "");
}

TEST(HellaSwagReader, ReadsExamplesAndBuildsText) {
  TempFile f(std::string(kGood) + "\n\n" + kGood2 + "\n");
  const auto ex = read_hellaswag(f.path());
  ASSERT_EQ(ex.size(), 2u);
  EXPECT_EQ(ex[0].line, 1);
  EXPECT_EQ(ex[0].ind, 7);
  EXPECT_EQ(ex[0].label, 0);
  EXPECT_EQ(ex[0].activity_label, "Baking");
  EXPECT_EQ(hellaswag_text(ex[0]), "How to bake bread. Mix the flour. Add warm water and stir.");
  EXPECT_EQ(ex[1].line, 3);  // the blank line is skipped, line numbers stay the file's
  EXPECT_EQ(ex[1].ind, -1);
  EXPECT_EQ(hellaswag_text(ex[1]), "A cat sits on the mat. it washes its paws slowly.");
}

// From a stream (as fuzz/fuzz_hellaswag.cpp reads): the same examples, errors named by the given name.
TEST(HellaSwagReader, FromStream) {
  std::istringstream in(std::string(kGood) + "\n\n" + kGood2 + "\n");
  const auto ex = read_hellaswag(in, "mem.jsonl");
  ASSERT_EQ(ex.size(), 2u);
  EXPECT_EQ(ex[1].line, 3);
  EXPECT_EQ(ex[1].label, 2);
  std::istringstream bad("[1]\n");
  try {
    read_hellaswag(bad, "mem.jsonl");
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()), "mem.jsonl:1: expected a JSON object, got array");
  }
}

TEST(HellaSwagReader, LineThatDoesNotParse) {
  const std::string e = error_of(std::string(kGood) + "\n{\"ctx\": \"unterminated\n");
  EXPECT_EQ(e.rfind("FILE:2: not valid JSON", 0), 0u) << e;
  EXPECT_EQ(e.find('\n'), std::string::npos);
}

TEST(HellaSwagReader, NotAnObject) {
  const std::string e = error_of("[1, 2]\n");
  EXPECT_EQ(e, "FILE:1: expected a JSON object, got array");
}

TEST(HellaSwagReader, MissingOrIllTypedCtx) {
  std::string e = error_of(std::string(kGood) + "\n" + R"({"endings": ["a", "b", "c", "d"], "label": 1})");
  EXPECT_EQ(e, "FILE:2: missing field 'ctx'");
  e = error_of(R"({"ctx": 5, "endings": ["a", "b", "c", "d"], "label": 1})");
  EXPECT_EQ(e, "FILE:1: field 'ctx' must be a string, got number");
}

TEST(HellaSwagReader, MissingOrIllTypedEndings) {
  std::string e = error_of(R"({"ctx": "A dog runs.", "label": 1})");
  EXPECT_EQ(e, "FILE:1: missing field 'endings'");
  e = error_of(R"({"ctx": "A dog runs.", "endings": ["a", "b", "c"], "label": 1})");
  EXPECT_EQ(e, "FILE:1: field 'endings' must be an array of 4 strings, got an array of 3");
  e = error_of(R"({"ctx": "A dog runs.", "endings": "abcd", "label": 1})");
  EXPECT_EQ(e, "FILE:1: field 'endings' must be an array of 4 strings, got a string");
  e = error_of(R"({"ctx": "A dog runs.", "endings": ["a", "b", 3, "d"], "label": 1})");
  EXPECT_EQ(e, "FILE:1: field 'endings' must be an array of 4 strings, entry 2 is a number");
}

TEST(HellaSwagReader, LabelOutOfRangeOrNotAnInteger) {
  const std::string base = R"({"ctx": "A dog runs.", "endings": ["a", "b", "c", "d"], "label": )";
  EXPECT_EQ(error_of(base + "4}"), "FILE:1: field 'label' must be an integer in 0..3, got 4");
  EXPECT_EQ(error_of(base + "-1}"), "FILE:1: field 'label' must be an integer in 0..3, got -1");
  EXPECT_EQ(error_of(base + "\"2\"}"), "FILE:1: field 'label' must be an integer in 0..3, got \"2\"");
  EXPECT_EQ(error_of(base + "1.5}"), "FILE:1: field 'label' must be an integer in 0..3, got 1.5");
  EXPECT_EQ(error_of(R"({"ctx": "A dog runs.", "endings": ["a", "b", "c", "d"]})"),
            "FILE:1: missing field 'label'");
}

TEST(HellaSwagReader, EmptyFile) {
  EXPECT_EQ(error_of(""), "FILE: no examples (the file is empty)");
  EXPECT_EQ(error_of("\n  \n"), "FILE: no examples (the file is empty)");
}

TEST(HellaSwagReader, MissingFile) {
  try {
    read_hellaswag("/nonexistent/kvdial/hs.jsonl");
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_STREQ(e.what(), "/nonexistent/kvdial/hs.jsonl: cannot open file");
  }
}

}  // namespace
}  // namespace kvd
