// Tests of the SentencePiece ("llama") tokenizer: the committed reference vocabulary
// tests/fixtures/spm/spm_bpe4k.gguf (a sentencepiece BPE model, see tools/reference/README.md) against
// tests/fixtures/spm_tokenizer_ref.json (ids from sentencepiece and from llama.cpp's llama-tokenize),
// the merge rules on a hand-built vocabulary, decoding, and malformed vocabularies.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "gguf/gguf.h"
#include "test_util.h"
#include "tokenizer/spm.h"
#include "tokenizer/tokenizer.h"
#include "util/error.h"
#include "util/sha256.h"

namespace {

using kvd::Tokenizer;
using kvd::TokenType;
using kvd::Vocab;
using Ids = std::vector<int32_t>;

using kvd::test::data_dir;  // empty when ../shared/data is absent: the data cases then skip
using kvd::test::source_dir;

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::string gguf_path() { return source_dir() + "/tests/fixtures/spm/spm_bpe4k.gguf"; }

const Tokenizer& ref_tokenizer() {
  static const Tokenizer tok = [] {
    const auto f = kvd::gguf::File::open(gguf_path());
    return Tokenizer(kvd::vocab_from_gguf(*f));
  }();
  return tok;
}

const nlohmann::json& fixture() {
  static const nlohmann::json doc =
      nlohmann::json::parse(read_file(source_dir() + "/tests/fixtures/spm_tokenizer_ref.json"));
  return doc;
}

// A case's text: literal, or a line (1-based, CR stripped) of a data file; false when the file is absent.
bool case_text(const nlohmann::json& c, std::string& text) {
  if (c.contains("text")) {
    text = c["text"].get<std::string>();
    return true;
  }
  const auto& src = c.at("source");
  const std::string path = data_dir() + "/" + src.at("file").get<std::string>();
  static std::map<std::string, std::vector<std::string>> cache;
  auto it = cache.find(path);
  if (it == cache.end()) {
    if (!std::filesystem::exists(path)) return false;
    std::vector<std::string> lines;
    const std::string data = read_file(path);
    for (size_t b = 0; b < data.size();) {
      size_t e = data.find('\n', b);
      if (e == std::string::npos) e = data.size();
      lines.push_back(data.substr(b, e - b));
      b = e + 1;
    }
    it = cache.emplace(path, std::move(lines)).first;
  }
  std::string line = it->second.at(src.at("line").get<size_t>() - 1);
  if (!line.empty() && line.back() == '\r') line.pop_back();
  text = line;
  return true;
}

std::string show(const Ids& ids) {
  std::string s = "[";
  for (size_t i = 0; i < ids.size(); ++i) s += (i ? ", " : "") + std::to_string(ids[i]);
  return s + "]";
}

// What decode(encode(s)) gives: s, but a "▁" (U+2581) that is a character of s decodes as a space, as
// SentencePiece treats it as one. Characters are cut (after the spaces became "▁" and one was put in
// front) by their lead byte's length, as llama.cpp does, also in invalid UTF-8: a stray 0xC3 takes the
// next byte with it, so a "▁" after it is no character and comes back as its three bytes.
std::string visible_spaces_as_spaces(std::string_view s) {
  if (s.empty()) return "";
  const std::string_view kVis = "\xE2\x96\x81";
  std::string escaped(kVis);
  for (char c : s) {
    if (c == ' ') {
      escaped += kVis;
    } else {
      escaped += c;
    }
  }
  std::string out;
  for (size_t i = 0; i < escaped.size();) {
    const auto lead = static_cast<unsigned char>(escaped[i]);
    const size_t len = std::min<size_t>(lead < 0xC0   ? 1
                                        : lead < 0xE0 ? 2
                                        : lead < 0xF0 ? 3
                                                      : 4,
                                        escaped.size() - i);
    if (escaped.compare(i, len, kVis) == 0) {
      out += ' ';
    } else {
      out.append(escaped, i, len);
    }
    i += len;
  }
  return out.substr(1);  // the prefix, which decode strips
}

// ---- the reference vocabulary ----

TEST(TokenizerSpm, ReferenceVocabularyLoads) {
  const Tokenizer& tok = ref_tokenizer();
  ASSERT_TRUE(tok.is_spm());
  EXPECT_EQ(tok.vocab_size(), 4000u);
  EXPECT_EQ(tok.bos(), 1);
  EXPECT_EQ(tok.eos(), 2);
  EXPECT_TRUE(tok.vocab().add_bos);
  EXPECT_TRUE(tok.vocab().add_space_prefix);
  EXPECT_TRUE(tok.is_control(1));
  EXPECT_NE(tok.summary().find("SentencePiece"), std::string::npos) << tok.summary();
  EXPECT_NE(tok.summary().find("256 byte tokens"), std::string::npos) << tok.summary();
}

// Every case of the fixture: kvdial's ids equal llama.cpp's (parse_special off and on) and, but for the
// strings listed below, sentencepiece's.
TEST(TokenizerSpm, ReferenceFixture) {
  const Tokenizer& tok = ref_tokenizer();
  const nlohmann::json& doc = fixture();
  // Where llama.cpp's SPM rules (which kvdial follows) and the sentencepiece library disagree.
  // llama.cpp prefixes a space to every stretch of text after a special token, user-defined ones
  // included, which sentencepiece does not (it adds its dummy prefix once, at the start):
  // and a text that starts with a special token gets no prefix at all, where sentencepiece's dummy
  // prefix is a "▁" token before it:
  const std::set<std::string> sp_differs = {
      "a<|sep|>b", " <|sep|> x", "<|sep|><|sep|>", "<|sep|>\n", "<|sep|>",
  };
  size_t compared = 0, skipped = 0, vs_llama = 0, sp_diff_seen = 0;
  for (const auto& c : doc.at("cases")) {
    std::string text;
    if (!case_text(c, text)) {
      ++skipped;
      continue;
    }
    ++compared;
    const Ids got = tok.encode(text, false, false);
    const std::string label = c.contains("text") ? "'" + text + "'" : c.at("source").dump();
    if (c.contains("llama_cpp")) {
      ++vs_llama;
      EXPECT_EQ(got, c["llama_cpp"].get<Ids>()) << label << " (parse_special off)";
      EXPECT_EQ(tok.encode(text, false, true), c["llama_cpp_special"].get<Ids>())
          << label << " (parse_special on)";
    }
    const Ids sp = c.at("sp").get<Ids>();
    if (sp_differs.count(text)) {
      ++sp_diff_seen;
      EXPECT_NE(got, sp) << label << " is listed as differing from sentencepiece but matches it";
    } else {
      EXPECT_EQ(got, sp) << label << ": kvdial " << show(got) << " sentencepiece " << show(sp);
    }
  }
  EXPECT_EQ(sp_diff_seen, sp_differs.size());
  // Every case is either compared or (a data line, without ../shared/data) skipped; the 85 own strings
  // always run.
  EXPECT_EQ(compared + skipped, doc.at("cases").size());
  EXPECT_GE(compared, 85u);
  std::printf("spm fixture: %zu cases compared (%zu also against llama.cpp), %zu skipped\n", compared,
              vs_llama, skipped);
  if (skipped)
    GTEST_SKIP() << skipped << " data cases need ../shared/data beside the checkout (or KVDIAL_DATA_DIR)";
}

// Seeded random byte strings (invalid UTF-8, stray "▁" bytes, specials): llama.cpp's ids.
TEST(TokenizerSpm, RandomBytesMatchLlamaCpp) {
  const Tokenizer& tok = ref_tokenizer();
  const nlohmann::json& doc = fixture();
  if (!doc.contains("random") || doc["random"].empty()) GTEST_SKIP() << "fixture made without llama-tokenize";
  for (const auto& c : doc["random"]) {
    const std::string hex = c.at("hex").get<std::string>();
    std::string text;
    for (size_t i = 0; i + 1 < hex.size(); i += 2)
      text += static_cast<char>(std::stoi(hex.substr(i, 2), nullptr, 16));
    EXPECT_EQ(tok.encode(text, false, false), c.at("llama_cpp").get<Ids>()) << "hex " << hex;
    EXPECT_EQ(tok.encode(text, false, true), c.at("llama_cpp_special").get<Ids>())
        << "hex " << hex << " (special)";
  }
}

// BOS is added by default (add_bos_token = true), never EOS; the empty text gives BOS alone.
TEST(TokenizerSpm, SpecialTokensAdded) {
  const Tokenizer& tok = ref_tokenizer();
  EXPECT_EQ(tok.encode("", true), Ids{1});
  EXPECT_EQ(tok.encode("", false), Ids{});
  const Ids plain = tok.encode("Hello world", false);
  Ids with_bos = {1};
  with_bos.insert(with_bos.end(), plain.begin(), plain.end());
  EXPECT_EQ(tok.encode("Hello world", true), with_bos);
}

// Control-token text is plain text unless parse_special; then it is the token, and the text after it
// gets the space prefix again.
TEST(TokenizerSpm, ControlTokenText) {
  const Tokenizer& tok = ref_tokenizer();
  const Ids plain = tok.encode("<s>Hi", false, false);
  EXPECT_EQ(std::count(plain.begin(), plain.end(), 1), 0);
  const Ids parsed = tok.encode("<s>Hi", false, true);
  ASSERT_FALSE(parsed.empty());
  EXPECT_EQ(parsed[0], 1);
  Ids rest(parsed.begin() + 1, parsed.end());
  EXPECT_EQ(rest, tok.encode("Hi", false, false));
}

// decode follows llama.cpp: the first token loses one leading space (the prefix encode added), "▁" is
// a space, byte tokens are bytes, BOS / EOS are dropped unless keep_special, and after a leading BOS
// the space stays.
TEST(TokenizerSpm, Decode) {
  const Tokenizer& tok = ref_tokenizer();
  const nlohmann::json& doc = fixture();
  size_t n = 0;
  for (const auto& c : doc.at("cases")) {
    std::string text;
    if (!case_text(c, text)) continue;
    if (text.find("<|sep|>") != std::string::npos) continue;  // a space is added after it, see above
    const Ids ids = tok.encode(text, false, false);
    EXPECT_EQ(tok.decode(ids), visible_spaces_as_spaces(text)) << "round trip of '" << text << "'";
    // sentencepiece's own decode of its ids (same ids here) agrees.
    EXPECT_EQ(tok.decode(c.at("sp").get<Ids>()), c.at("sp_decoded").get<std::string>()) << text;
    ++n;
  }
  EXPECT_GT(n, 60u);
  const Ids hello = tok.encode("Hello", false);
  Ids with_bos = {1};
  with_bos.insert(with_bos.end(), hello.begin(), hello.end());
  // llama.cpp's detokenize keeps the space after a leading BOS; sentencepiece's decode gives "Hello".
  EXPECT_EQ(tok.decode(with_bos), " Hello");
  EXPECT_EQ(tok.decode(with_bos, true), "<s> Hello");
  EXPECT_EQ(tok.token_bytes(1), "<s>");
  EXPECT_EQ(tok.token_bytes(tok.find("<0x41>")), "A");
  EXPECT_EQ(tok.token_bytes(tok.find("\xE2\x96\x81the")), " the");
  EXPECT_THROW(tok.decode({4000}), kvd::Error);
  EXPECT_THROW(tok.decode({-1}), kvd::Error);
}

// Random byte strings (invalid UTF-8 too) and random text: byte fallback covers every byte, so
// decode(encode(s)) == s, and no id is outside the vocabulary.
TEST(TokenizerSpm, RandomRoundTrip) {
  const Tokenizer& tok = ref_tokenizer();
  std::mt19937 rng(7);
  const char* alphabet[] = {"a",
                            "e",
                            "th",
                            " ",
                            "  ",
                            "\n",
                            "\t",
                            "1",
                            ".",
                            "\xC3\xA9",
                            "\xE4\xB8\xAD",
                            "\xF0\x9F\x98\x80",
                            "\xE2\x96\x81",
                            "<",
                            "s>",
                            "\xFF",
                            "\x80",
                            "\xC3"};
  for (int iter = 0; iter < 300; ++iter) {
    std::string s;
    const int len = static_cast<int>(rng() % 40);
    for (int i = 0; i < len; ++i) {
      if (iter % 3 == 0) {
        s += static_cast<char>(rng() & 0xFF);
      } else {
        s += alphabet[rng() % std::size(alphabet)];
      }
    }
    const Ids ids = tok.encode(s, false, false);
    for (int32_t id : ids) ASSERT_TRUE(id >= 0 && id < 4000);
    EXPECT_EQ(tok.decode(ids), visible_spaces_as_spaces(s)) << "iteration " << iter;
  }
}

// The whole WikiText-2 test file: the same ids as the reference (count and SHA-256 of the int32 ids).
TEST(TokenizerSpm, WikiTextFile) {
  const nlohmann::json& doc = fixture();
  if (!doc.contains("whole_file")) GTEST_SKIP() << "fixture has no whole-file reference";
  const std::string path = data_dir() + "/wikitext-2/wiki.test.raw";
  if (!std::filesystem::exists(path)) GTEST_SKIP() << path << " not present (set KVDIAL_DATA_DIR)";
  const std::string text = read_file(path);
  const auto t0 = std::chrono::steady_clock::now();
  const Ids ids = ref_tokenizer().encode(text, false, false);
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("wiki.test.raw (spm 4k): %zu bytes -> %zu tokens in %.3f s\n", text.size(), ids.size(), secs);
  const auto& w = doc["whole_file"];
  const std::string key = w.contains("llama_cpp_count") ? "llama_cpp" : "sp";
  EXPECT_EQ(ids.size(), w.at(key + "_count").get<size_t>());
  std::vector<uint8_t> le;  // the ids as int32 little-endian, as the generator hashed them
  for (int32_t id : ids) {
    for (int k = 0; k < 4; ++k) le.push_back(static_cast<uint8_t>(static_cast<uint32_t>(id) >> (8 * k)));
  }
  EXPECT_EQ(kvd::sha256_hex(le.data(), le.size()), w.at(key + "_sha256").get<std::string>());
  EXPECT_EQ(ref_tokenizer().decode(ids), text);
  EXPECT_LT(secs, 10.0);
}

// ---- merge rules on a hand-built vocabulary ----

Vocab small_vocab(std::vector<std::pair<std::string, float>> pieces) {
  Vocab v;
  v.model = "llama";
  v.tokens = {"<unk>", "<s>", "</s>"};
  v.scores = {0, 0, 0};
  v.token_types = {2, 3, 3};
  for (int b = 0; b < 256; ++b) {
    char name[8];
    std::snprintf(name, sizeof name, "<0x%02X>", b);
    v.tokens.push_back(name);
    v.scores.push_back(0);
    v.token_types.push_back(6);
  }
  for (auto& [p, s] : pieces) {
    v.tokens.push_back(p);
    v.scores.push_back(s);
    v.token_types.push_back(1);
  }
  v.bos_id = 1;
  v.eos_id = 2;
  v.unk_id = 0;
  v.add_bos = true;
  return v;
}

std::vector<std::string> pieces(const Tokenizer& t, const Ids& ids) {
  std::vector<std::string> out;
  for (int32_t id : ids) out.push_back(t.vocab().tokens[id]);
  return out;
}

using Strs = std::vector<std::string>;
const std::string kS = "\xE2\x96\x81";

TEST(TokenizerSpmRules, HigherScoreMergesFirst) {
  // "▁abc": ▁a, then either "ab"+"c" or "a"+"bc" decides.
  Tokenizer left(
      small_vocab({{kS, -1}, {"a", -1}, {"b", -1}, {"c", -1}, {"ab", -2}, {"bc", -3}, {kS + "ab", -4}}));
  EXPECT_EQ(pieces(left, left.encode("abc", false)), (Strs{kS + "ab", "c"}));
  Tokenizer right(
      small_vocab({{kS, -1}, {"a", -1}, {"b", -1}, {"c", -1}, {"ab", -3}, {"bc", -2}, {kS + "a", -4}}));
  EXPECT_EQ(pieces(right, right.encode("abc", false)), (Strs{kS + "a", "bc"}));
}

TEST(TokenizerSpmRules, TiesGoToTheLeftmostPair) {
  Tokenizer t(small_vocab({{kS, -1}, {"a", -1}, {"aa", -2}}));
  EXPECT_EQ(pieces(t, t.encode("aaa", false)), (Strs{kS, "aa", "a"}));
  EXPECT_EQ(pieces(t, t.encode("aaaa", false)), (Strs{kS, "aa", "aa"}));
}

// A piece with "▁" inside: merges then run across words (no word-by-word shortcut).
TEST(TokenizerSpmRules, PieceSpanningASpace) {
  Tokenizer t(small_vocab({{kS, -1}, {"a", -1}, {"b", -1}, {"a" + kS, -2}, {"a" + kS + "b", -3}}));
  EXPECT_EQ(pieces(t, t.encode("a b", false)), (Strs{kS, "a" + kS + "b"}));
  EXPECT_EQ(t.decode(t.encode("a b a", false)), "a b a");
  Tokenizer words(small_vocab({{kS, -1}, {"a", -1}, {"b", -1}, {kS + kS, -2}, {kS + "a", -3}}));
  EXPECT_EQ(pieces(words, words.encode("a  b", false)), (Strs{kS + "a", kS + kS, "b"}));
}

TEST(TokenizerSpmRules, ByteFallbackAndPrefix) {
  Tokenizer t(small_vocab({{kS, -1}, {"h", -1}, {"i", -1}, {kS + "h", -2}}));
  EXPECT_EQ(pieces(t, t.encode("hi\xC3\xA9", false)), (Strs{kS + "h", "i", "<0xC3>", "<0xA9>"}));
  Vocab v = small_vocab({{kS, -1}, {"h", -1}});
  v.add_space_prefix = false;
  Tokenizer np(v);
  EXPECT_EQ(pieces(np, np.encode("h h", false)), (Strs{"h", kS, "h"}));
  EXPECT_EQ(np.decode(np.encode(" h", false)), " h");
}

TEST(TokenizerSpmRules, UserDefinedSplitEvenWithoutParseSpecial) {
  Vocab v = small_vocab({{kS, -1}, {"x", -1}, {"[T]", 0}});
  v.token_types.back() = 4;
  Tokenizer t(v);
  const Ids ids = t.encode("x[T]x", false, false);
  EXPECT_EQ(pieces(t, ids), (Strs{kS, "x", "[T]", kS, "x"}));
  EXPECT_EQ(t.decode(ids), "x[T] x");
}

TEST(TokenizerSpmRules, MissingByteTokenIsAnError) {
  Vocab v = small_vocab({{kS, -1}, {"a", -1}});
  // Drop <0xC3>: spell it differently so nothing else changes.
  v.tokens[3 + 0xC3] = "unused-c3";
  v.token_types[3 + 0xC3] = 5;
  Tokenizer t(v);
  EXPECT_NO_THROW(t.encode("a\xA9", false));
  try {
    t.encode("a\xC3\xA9", false);
    FAIL() << "expected kvd::Error";
  } catch (const kvd::Error& e) {
    EXPECT_NE(std::string(e.what()).find("<0xC3>"), std::string::npos) << e.what();
  }
}

// ---- malformed vocabularies ----

TEST(TokenizerSpmRules, MalformedVocabularies) {
  auto error_of = [](const Vocab& v) -> std::string {
    try {
      Tokenizer t(v);
    } catch (const kvd::Error& e) {
      return e.what();
    }
    return "";
  };
  const Vocab good = small_vocab({{kS, -1}});
  EXPECT_EQ(error_of(good), "");
  Vocab v = good;
  v.scores.clear();
  EXPECT_NE(error_of(v).find("scores"), std::string::npos);
  v = good;
  v.scores.pop_back();
  EXPECT_NE(error_of(v).find("scores"), std::string::npos);
  v = good;
  v.scores[5] = std::nanf("");
  EXPECT_NE(error_of(v).find("NaN"), std::string::npos);
  v = good;
  v.token_types.pop_back();
  EXPECT_NE(error_of(v).find("token types"), std::string::npos);
  v = good;
  v.token_types[7] = 9;
  EXPECT_NE(error_of(v).find("token type 9"), std::string::npos);
  v = good;
  v.tokens[10] = "0x07";  // type byte, wrong spelling
  EXPECT_NE(error_of(v).find("<0xXX>"), std::string::npos);
  v = good;
  v.bos_id = -1;
  EXPECT_NE(error_of(v).find("BOS"), std::string::npos);
  v.add_bos = false;
  EXPECT_EQ(error_of(v), "");
  v = good;
  v.tokens.clear();
  v.scores.clear();
  v.token_types.clear();
  EXPECT_NE(error_of(v).find("empty"), std::string::npos);
}

// A minimal GGUF v3 writer for vocabulary-only files.
struct GgufWriter {
  std::string out;
  uint64_t n_kv = 0;
  void u32(uint32_t x) { out.append(reinterpret_cast<const char*>(&x), 4); }
  void u64(uint64_t x) { out.append(reinterpret_cast<const char*>(&x), 8); }
  void str(const std::string& s) {
    u64(s.size());
    out += s;
  }
  void key(const std::string& k, uint32_t type) {
    str(k);
    u32(type);
    ++n_kv;
  }
  void kv_str(const std::string& k, const std::string& v) {
    key(k, 8);
    str(v);
  }
  void kv_strs(const std::string& k, const std::vector<std::string>& v) {
    key(k, 9);
    u32(8);
    u64(v.size());
    for (const auto& s : v) str(s);
  }
  void kv_f32s(const std::string& k, const std::vector<float>& v) {
    key(k, 9);
    u32(6);
    u64(v.size());
    for (float f : v) out.append(reinterpret_cast<const char*>(&f), 4);
  }
  void kv_i32s(const std::string& k, const std::vector<int32_t>& v) {
    key(k, 9);
    u32(5);
    u64(v.size());
    for (int32_t x : v) u32(static_cast<uint32_t>(x));
  }
  std::vector<uint8_t> bytes() const {
    GgufWriter h;
    h.out = "GGUF";
    h.u32(3);
    h.u64(0);
    h.u64(n_kv);
    std::string all = h.out + out;
    return {all.begin(), all.end()};
  }
};

std::string load_error(const std::vector<uint8_t>& bytes) {
  try {
    const auto f = kvd::gguf::File::parse(bytes.data(), bytes.size(), "bad.gguf");
    Tokenizer t(kvd::vocab_from_gguf(*f));
    t.encode("hello \xF0\x9F\x98\x80", true);
  } catch (const kvd::Error& e) {
    const std::string msg = e.what();
    EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
    return msg;
  }
  return "";
}

TEST(TokenizerSpmGguf, MalformedFiles) {
  const Vocab v = small_vocab({{kS, -1}, {"h", -1}});
  auto file = [&](int omit, const std::vector<float>* scores, const std::vector<int32_t>* types) {
    GgufWriter w;
    w.kv_str("tokenizer.ggml.model", "llama");
    w.kv_strs("tokenizer.ggml.tokens", v.tokens);
    if (omit != 1) w.kv_f32s("tokenizer.ggml.scores", scores ? *scores : v.scores);
    if (omit != 2) w.kv_i32s("tokenizer.ggml.token_type", types ? *types : v.token_types);
    return w.bytes();
  };
  EXPECT_EQ(load_error(file(0, nullptr, nullptr)), "");
  EXPECT_EQ(load_error(file(2, nullptr, nullptr)), "")
      << "token types are optional (all normal), as in llama.cpp";
  EXPECT_NE(load_error(file(1, nullptr, nullptr)).find("tokenizer.ggml.scores is missing"),
            std::string::npos);
  const std::vector<float> short_scores(v.scores.begin(), v.scores.end() - 1);
  EXPECT_NE(load_error(file(0, &short_scores, nullptr)).find("tokenizer.ggml.scores has"), std::string::npos);
  std::vector<int32_t> bad_types = v.token_types;
  bad_types[4] = 77;
  EXPECT_NE(load_error(file(0, nullptr, &bad_types)).find("token_type[4] is 77"), std::string::npos);
  const std::vector<int32_t> short_types(v.token_types.begin(), v.token_types.end() - 2);
  EXPECT_NE(load_error(file(0, nullptr, &short_types)).find("token_type has"), std::string::npos);
  GgufWriter other;
  other.kv_str("tokenizer.ggml.model", "bert");
  EXPECT_NE(load_error(other.bytes()).find("unsupported tokenizer.ggml.model 'bert'"), std::string::npos);
}

}  // namespace

namespace {

// Runs the kvdial command and returns its standard output.
std::string run_kvdial(const std::string& args) {
  const std::string cmd = std::string(KVDIAL_BINARY) + " " + args + " 2>&1";
  std::string out;
  if (FILE* p = popen(cmd.c_str(), "r")) {
    char buf[4096];
    for (size_t n; (n = fread(buf, 1, sizeof buf, p)) > 0;) out.append(buf, n);
    pclose(p);
  }
  return out;
}

// `kvdial tokenize` on the vocab-only file: BOS plus llama.cpp's ids; `kvdial info` names the tokenizer.
TEST(TokenizerSpmCli, TokenizeAndInfo) {
  Ids want = {1};
  for (const auto& c : fixture().at("cases")) {
    if (c.contains("text") && c["text"] == "Hello world") {
      const Ids ids = c.at("llama_cpp").get<Ids>();
      want.insert(want.end(), ids.begin(), ids.end());
    }
  }
  ASSERT_GT(want.size(), 1u);
  EXPECT_EQ(run_kvdial("tokenize -m " + gguf_path() + " -p 'Hello world'"), show(want) + "\n");
  const std::string pieces = run_kvdial("tokenize -m " + gguf_path() + " -p 'Hello world' --show-pieces");
  EXPECT_NE(pieces.find("     1 -> '<s>'"), std::string::npos) << pieces;
  EXPECT_NE(pieces.find("' world'"), std::string::npos) << pieces;
  const std::string info = run_kvdial("info " + gguf_path());
  EXPECT_NE(info.find("SentencePiece (llama.cpp SPM rules), 4000 tokens, 256 byte tokens"), std::string::npos)
      << info;
}

}  // namespace
