// Tests of the byte-level BPE tokenizer and its pre-tokenizers: a small hand-built vocabulary, the
// SmolLM2 vocabulary read with vocab_from_gguf (edge cases, random bytes, special tokens, ids checked
// against Hugging Face), the reference fixture tests/fixtures/tokenizer_ref.json and WikiText speed.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "gguf/gguf.h"
#include "tokenizer/pretokenize.h"
#include "tokenizer/tokenizer.h"
#include "util/error.h"

namespace {

using kvd::Tokenizer;
using kvd::Vocab;
using Ids = std::vector<int32_t>;

std::string source_dir() {
  const char* env = std::getenv("KVDIAL_SOURCE_DIR");
  return env ? env : KVDIAL_SOURCE_DIR;
}

std::string model_path() { return source_dir() + "/models/SmolLM2-135M-Instruct.Q4_1.gguf"; }

std::string data_dir() {
  const char* env = std::getenv("KVDIAL_DATA_DIR");
  return env ? env : source_dir() + "/../shared/data";
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::vector<std::string> split_words(kvd::pretok::Scheme scheme, std::string_view text) {
  std::vector<size_t> ends;
  kvd::pretok::split(scheme, text, ends);
  std::vector<std::string> words;
  size_t b = 0;
  for (size_t e : ends) {
    words.emplace_back(text.substr(b, e - b));
    b = e;
  }
  return words;
}

// A tiny byte-level vocabulary: the 256 byte tokens (GPT-2 spelling), a few merges, two specials.
Vocab tiny_vocab() {
  Vocab v;
  v.pre = "gpt2";
  auto spell = [](unsigned b) {
    unsigned n = 0, cp = 0;
    for (unsigned x = 0; x <= b; ++x) {
      const bool printable = (x >= '!' && x <= '~') || (x >= 0xA1 && x <= 0xAC) || (x >= 0xAE);
      cp = printable ? x : 256 + n++;
    }
    std::string s;
    if (cp < 0x80) {
      s += static_cast<char>(cp);
    } else {
      s += static_cast<char>(0xC0 | (cp >> 6));
      s += static_cast<char>(0x80 | (cp & 0x3F));
    }
    return s;
  };
  for (unsigned b = 0; b < 256; ++b) v.tokens.push_back(spell(b));
  // "Ġ" is the spelling of the space byte.
  v.merges = {"l o", "lo w", "Ġ low", "e r", "low er", "a a"};
  for (const char* t : {"lo", "low", "Ġlow", "er", "lower", "aa", "<|s|>", "<|s|>x"}) v.tokens.push_back(t);
  v.token_types.assign(v.tokens.size(), 1);
  v.token_types[v.tokens.size() - 2] = static_cast<int32_t>(kvd::TokenType::CONTROL);
  v.token_types[v.tokens.size() - 1] = static_cast<int32_t>(kvd::TokenType::USER_DEFINED);
  v.bos_id = static_cast<int32_t>(v.tokens.size() - 2);
  v.eos_id = v.bos_id;
  return v;
}

// The SmolLM2 tokenizer, loaded once; null when the model file is absent.
const Tokenizer* smollm() {
  static const std::unique_ptr<Tokenizer> tok = []() -> std::unique_ptr<Tokenizer> {
    if (!std::filesystem::exists(model_path())) return nullptr;
    auto file = kvd::gguf::File::open(model_path());
    return std::make_unique<Tokenizer>(kvd::vocab_from_gguf(*file));
  }();
  return tok.get();
}

#define REQUIRE_MODEL(tok)         \
  const Tokenizer* tok = smollm(); \
  if (tok == nullptr) GTEST_SKIP() << model_path() << " not present"

// ---------------------------------------------------------------------------------------------
// Pre-tokenizers (expected splits checked against Hugging Face tokenizers 0.23).

TEST(TokenizerPretok, Gpt2Splits) {
  using S = kvd::pretok::Scheme;
  using W = std::vector<std::string>;
  EXPECT_EQ(split_words(S::kGpt2, "Hello world"), (W{"Hello", " world"}));
  EXPECT_EQ(split_words(S::kGpt2, "don't"), (W{"don", "'t"}));
  EXPECT_EQ(split_words(S::kGpt2, "DON'T 'S"), (W{"DON", "'", "T", " '", "S"}));
  EXPECT_EQ(split_words(S::kGpt2, "a  1"), (W{"a", " ", " 1"}));
  EXPECT_EQ(split_words(S::kGpt2, "x  \n\n  y"), (W{"x", "  \n\n ", " y"}));
  EXPECT_EQ(split_words(S::kGpt2, "a\tb "), (W{"a", "\t", "b", " "}));
  EXPECT_EQ(split_words(S::kGpt2, "12345 ab12"), (W{"12345", " ab", "12"}));
  EXPECT_EQ(split_words(S::kGpt2, "  ...?!x"), (W{" ", " ...?!", "x"}));
  EXPECT_EQ(split_words(S::kGpt2, ""), W{});
}

TEST(TokenizerPretok, DigitsThenGpt2) {
  using S = kvd::pretok::Scheme;
  using W = std::vector<std::string>;
  // Digits are isolated first, so the spaces before them stay by themselves.
  EXPECT_EQ(split_words(S::kDigitsGpt2, "a  1"), (W{"a", "  ", "1"}));
  EXPECT_EQ(split_words(S::kDigitsGpt2, "12345"), (W{"1", "2", "3", "4", "5"}));
  EXPECT_EQ(split_words(S::kDigitsGpt2, "year 2024."), (W{"year", " ", "2", "0", "2", "4", "."}));
  EXPECT_EQ(split_words(S::kDigitsGpt2, "\xC2\xBD x"), (W{"\xC2\xBD", " x"}));  // ½ is \p{N}
}

TEST(TokenizerPretok, Llama3AndQwen2Splits) {
  using S = kvd::pretok::Scheme;
  using W = std::vector<std::string>;
  EXPECT_EQ(split_words(S::kLlama3, "I'VE 12345 (hi)\n\n  x"),
            (W{"I", "'VE", " ", "123", "45", " (", "hi", ")\n\n", " ", " x"}));
  EXPECT_EQ(split_words(S::kQwen2, "ab 123"), (W{"ab", " ", "1", "2", "3"}));
  EXPECT_EQ(split_words(S::kLlama3, "  \n \n  y"), (W{"  \n \n", " ", " y"}));
  EXPECT_EQ(split_words(S::kLlama3, "\tword"), (W{"\tword"}));
}

TEST(TokenizerPretok, DefaultSplits) {
  using S = kvd::pretok::Scheme;
  using W = std::vector<std::string>;
  EXPECT_EQ(split_words(S::kDefault, "x=1234567, y"), (W{"x", "=", "123", "456", "7", ",", " y"}));
}

TEST(TokenizerPretok, InvalidUtf8IsOther) {
  using S = kvd::pretok::Scheme;
  using W = std::vector<std::string>;
  // Lone continuation bytes, an overlong encoding and a truncated sequence group like punctuation.
  EXPECT_EQ(split_words(S::kGpt2, "ab\x80\xBF cd \xC0\xAF!"), (W{"ab", "\x80\xBF", " cd", " \xC0\xAF!"}));
  EXPECT_EQ(split_words(S::kGpt2, "\xE6\x97"), (W{"\xE6\x97"}));
}

TEST(TokenizerPretok, RandomBytesTile) {
  using S = kvd::pretok::Scheme;
  std::mt19937 rng(3);
  for (S scheme : {S::kGpt2, S::kDigitsGpt2, S::kLlama3, S::kQwen2, S::kDefault}) {
    for (int iter = 0; iter < 300; ++iter) {
      std::string s(rng() % 80, '\0');
      for (char& c : s) c = static_cast<char>((rng() & 1) ? " \t\n\r'sa1.\xC3\xA9"[rng() % 11] : rng());
      std::vector<size_t> ends;
      kvd::pretok::split(scheme, s, ends);
      size_t prev = 0;
      for (size_t e : ends) {
        ASSERT_GT(e, prev);
        prev = e;
      }
      ASSERT_EQ(prev, s.size());
    }
  }
}

TEST(TokenizerPretok, UnicodeClasses) {
  EXPECT_EQ(kvd::pretok::classify('a'), 1);
  EXPECT_EQ(kvd::pretok::classify('7'), 2);
  EXPECT_EQ(kvd::pretok::classify('\t'), 4);
  EXPECT_EQ(kvd::pretok::classify(0x1C), 0);     // not White_Space, though Python's isspace() says so
  EXPECT_EQ(kvd::pretok::classify(0x3000), 4);   // ideographic space
  EXPECT_EQ(kvd::pretok::classify(0x65E5), 1);   // 日
  EXPECT_EQ(kvd::pretok::classify(0x0663), 2);   // Arabic-Indic three
  EXPECT_EQ(kvd::pretok::classify(0x1F600), 0);  // emoji
  EXPECT_EQ(kvd::pretok::classify(0x110000), 0);
}

TEST(TokenizerPretok, UnknownPreIsRejected) {
  try {
    kvd::pretok::scheme_from_name("xyz");
    FAIL() << "no error";
  } catch (const kvd::Error& e) {
    EXPECT_STREQ(e.what(), "unsupported tokenizer.ggml.pre 'xyz'");
  }
  Vocab v = tiny_vocab();
  v.pre = "xyz";
  EXPECT_THROW(Tokenizer{v}, kvd::Error);
  for (const char* name : {"default", "gpt2", "smollm", "llama3", "llama-bpe", "qwen2", "starcoder"}) {
    EXPECT_NO_THROW(kvd::pretok::scheme_from_name(name)) << name;
  }
}

// ---------------------------------------------------------------------------------------------
// A hand-built vocabulary.

TEST(TokenizerTiny, MergesByRank) {
  Tokenizer tok(tiny_vocab());
  const int32_t lower = tok.find("lower"), glow = tok.find("Ġlow"), aa = tok.find("aa");
  ASSERT_GE(lower, 0);
  EXPECT_EQ(tok.encode("lower", false), (Ids{lower}));
  EXPECT_EQ(tok.encode(" lower", false), (Ids{glow, tok.find("er")}));
  EXPECT_EQ(tok.encode("aaa", false), (Ids{aa, tok.find("a")}));  // leftmost pair first
  // A long word takes the heap path; it must agree with the short-word loop.
  EXPECT_EQ(tok.encode(std::string(101, 'a'), false), [&] {
    Ids ids(50, aa);
    ids.push_back(tok.find("a"));
    return ids;
  }());
  EXPECT_EQ(tok.decode(tok.encode(" lower lo low", false)), " lower lo low");
}

TEST(TokenizerTiny, SpecialTokens) {
  Vocab v = tiny_vocab();
  v.add_bos = true;
  Tokenizer tok(v);
  const int32_t s = tok.find("<|s|>"), sx = tok.find("<|s|>x");
  EXPECT_TRUE(tok.is_control(s));
  EXPECT_FALSE(tok.is_control(sx));  // user-defined
  // Longest special token first; never split.
  EXPECT_EQ(tok.encode("<|s|>x<|s|>", false), (Ids{sx, s}));
  EXPECT_EQ(tok.encode("lo", true), (Ids{s, tok.find("lo")}));
  // parse_special=false spells the text out.
  const Ids plain = tok.encode("<|s|>", false, false);
  EXPECT_GT(plain.size(), 1u);
  EXPECT_EQ(tok.decode(plain), "<|s|>");
  // Control tokens are dropped on decode unless asked for; user-defined ones are text.
  EXPECT_EQ(tok.decode({s, tok.find("lo"), sx}), "lo<|s|>x");
  EXPECT_EQ(tok.decode({s, tok.find("lo")}, true), "<|s|>lo");
  EXPECT_THROW(tok.decode({-1}), kvd::Error);
  EXPECT_THROW(tok.decode({static_cast<int32_t>(tok.vocab_size())}), kvd::Error);
}

TEST(TokenizerTiny, AnyBytesRoundTrip) {
  Tokenizer tok(tiny_vocab());  // has a token for each of the 256 bytes
  std::mt19937 rng(7);
  for (int iter = 0; iter < 300; ++iter) {
    std::string s(rng() % 64, '\0');
    for (char& c : s) c = static_cast<char>(rng() & 0xFF);
    ASSERT_EQ(tok.decode(tok.encode(s, false)), s);
  }
}

// ---------------------------------------------------------------------------------------------
// The SmolLM2 vocabulary from the GGUF file.

TEST(TokenizerSmolLM, VocabFromGguf) {
  REQUIRE_MODEL(tok);
  const Vocab& v = tok->vocab();
  EXPECT_EQ(v.model, "gpt2");
  EXPECT_EQ(v.pre, "smollm");
  EXPECT_EQ(tok->vocab_size(), 49152u);
  EXPECT_EQ(v.merges.size(), 48900u);
  EXPECT_EQ(tok->bos(), 1);
  EXPECT_EQ(tok->eos(), 2);
  EXPECT_EQ(v.unk_id, 0);
  EXPECT_EQ(v.pad_id, 2);
  EXPECT_FALSE(v.add_bos);
  EXPECT_FALSE(v.add_eos);
  EXPECT_EQ(tok->find("<|im_start|>"), 1);
  EXPECT_TRUE(tok->is_control(2));
  EXPECT_FALSE(tok->is_control(tok->find("Hello")));
  EXPECT_EQ(tok->token_bytes(tok->find("Ġworld")), " world");
  EXPECT_EQ(tok->token_bytes(tok->find("Ċ")), "\n");
}

TEST(TokenizerSmolLM, MatchesHuggingFace) {
  REQUIRE_MODEL(tok);
  // Ids from Hugging Face tokenizers with SmolLM2's pipeline (Digits(individual_digits) then
  // ByteLevel), add_special_tokens=False.
  EXPECT_EQ(tok->encode("Hello world"), (Ids{19556, 905}));
  EXPECT_EQ(tok->encode("The year 2024 had  12 months."),
            (Ids{504, 713, 216, 34, 32, 34, 36, 761, 256, 33, 34, 2704, 30}));
  EXPECT_EQ(tok->encode("don't 'S"), (Ids{12420, 982, 637, 67}));
  EXPECT_EQ(tok->encode("  x\n\n\ty"), (Ids{216, 1792, 1116, 197, 105}));
  EXPECT_EQ(tok->encode("caf\xC3\xA9 \xE6\x97\xA5\xE6\x9C\xAC\xE8\xAA\x9E \xF0\x9F\x98\x80"),
            (Ids{83, 1939, 2756, 17097, 241, 115, 40993, 179, 120, 248, 40303, 218}));
  EXPECT_EQ(tok->encode("<|im_start|>user\nHi!<|im_end|>\n"), (Ids{1, 4093, 198, 26843, 17, 2, 198}));
  EXPECT_EQ(tok->encode("a  1"), (Ids{81, 256, 33}));
  EXPECT_EQ(tok->encode(""), Ids{});
}

TEST(TokenizerSmolLM, EdgeCasesRoundTrip) {
  REQUIRE_MODEL(tok);
  const std::vector<std::string> cases = {
      "",
      "12345",
      "3.14159 and 1,000,000",
      "   ",
      "a   b    c",
      "\n",
      "\n\n\n",
      "line\r\nnext\r\n",
      "trailing spaces   ",
      "\ttab\t\tseparated\t",
      "caf\xC3\xA9 na\xC3\xAFve r\xC3\xA9sum\xC3\xA9 A\xCC\x8A",  // accents, combining ring
      "\xE6\x97\xA5\xE6\x9C\xAC\xE8\xAA\x9E\xE3\x81\xAE\xE6\x96\x87 \xE4\xB8\xAD\xE6\x96\x87",  // CJK
      "\xF0\x9F\x98\x80\xF0\x9F\x91\x8D\xF0\x9F\x8F\xBD",                          // emoji, skin tone
      "\xF0\x9F\x91\xA8\xE2\x80\x8D\xF0\x9F\x91\xA9\xE2\x80\x8D\xF0\x9F\x91\xA7",  // ZWJ family
      "don't can't I'm we'll they're I've he'd",
      "'S 'LL DON'T",
      "mixed \xD1\x80\xD1\x83\xD1\x81\xD1\x81\xD0\xBA\xD0\xB8\xD0\xB9 English "
      "\xD8\xB9\xD8\xB1\xD8\xA8\xD9\x8A 42",
      "\xC2\xA0nbsp\xE2\x80\xA8sep\xE3\x80\x80ideo",
      "ab\x80\xFF\xC0 cd \xED\xA0\x80 \xF4\x90\x80\x80 \xE6\x97",  // invalid UTF-8
      std::string("nul\0byte", 8),
      "http://example.com/a?b=1&c=2#frag",
      std::string(300, 'x'),
      std::string(200, ' ') + "x",
  };
  for (const std::string& s : cases) {
    const Ids ids = tok->encode(s);
    // SmolLM2's vocabulary lacks a few bytes (0xC0, 0xFF among them); those are dropped, as in HF.
    std::string expected;
    for (char c : s) {
      if (c != '\xC0' && c != '\xFF') expected += c;
    }
    EXPECT_EQ(tok->decode(ids), expected) << "case: " << s;
  }
}

TEST(TokenizerSmolLM, RandomBytesRoundTrip) {
  REQUIRE_MODEL(tok);
  // Bytes without a one-byte token can not come back; everything else must, whatever the bytes.
  std::vector<bool> covered(256);
  for (int b = 0; b < 256; ++b) {
    const Ids ids = tok->encode(std::string(1, static_cast<char>(b)));
    covered[b] = ids.size() == 1;
    if (!covered[b]) {
      EXPECT_TRUE(ids.empty()) << b;
    }
  }
  std::mt19937 rng(12345);
  for (int iter = 0; iter < 2000; ++iter) {
    std::string s(rng() % 48, '\0'), kept;
    for (char& c : s) {
      // Mix plain ASCII, UTF-8 lead/continuation bytes and anything at all.
      const unsigned r = rng();
      c = static_cast<char>((r & 3) == 0   ? 0x20 + (r >> 8) % 95
                            : (r & 3) == 1 ? 0x80 + (r >> 8) % 0x40
                                           : r >> 8);
      if (covered[static_cast<unsigned char>(c)]) kept += c;
    }
    ASSERT_EQ(tok->decode(tok->encode(s)), kept);
  }
  // Random code points (valid UTF-8) from several scripts round-trip exactly, unless they use a
  // missing byte (0xF1/0xF2 leads: planes 4-11, not generated here).
  const uint32_t blocks[][2] = {{0x20, 0x7E},     {0xA0, 0x24F},    {0x370, 0x52F},
                                {0x600, 0x6FF},   {0x900, 0x97F},   {0x3000, 0x30FF},
                                {0x4E00, 0x9FFF}, {0xAC00, 0xD7A3}, {0x1F300, 0x1FAFF}};
  for (int iter = 0; iter < 1000; ++iter) {
    std::string s;
    const size_t n = rng() % 30;
    for (size_t i = 0; i < n; ++i) {
      const auto& blk = blocks[rng() % std::size(blocks)];
      const uint32_t cp = blk[0] + rng() % (blk[1] - blk[0] + 1);
      if (cp < 0x80) {
        s += static_cast<char>(cp);
      } else if (cp < 0x800) {
        s += static_cast<char>(0xC0 | (cp >> 6));
        s += static_cast<char>(0x80 | (cp & 0x3F));
      } else if (cp < 0x10000) {
        s += static_cast<char>(0xE0 | (cp >> 12));
        s += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
        s += static_cast<char>(0x80 | (cp & 0x3F));
      } else {
        s += static_cast<char>(0xF0 | (cp >> 18));
        s += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
        s += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
        s += static_cast<char>(0x80 | (cp & 0x3F));
      }
    }
    ASSERT_EQ(tok->decode(tok->encode(s)), s);
  }
}

TEST(TokenizerSmolLM, SpecialTokens) {
  REQUIRE_MODEL(tok);
  const std::string chat = "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n";
  const Ids ids = tok->encode(chat);
  EXPECT_EQ(ids.front(), 1);
  EXPECT_EQ(std::count(ids.begin(), ids.end(), 1), 2);
  EXPECT_EQ(std::count(ids.begin(), ids.end(), 2), 2);
  EXPECT_EQ(tok->decode(ids, true), chat);
  EXPECT_EQ(tok->decode(ids), "system\nBe brief.\nuser\n2+2?\n");
  // Not parsed: plain text, no control ids.
  const Ids plain = tok->encode(chat, true, false);
  for (int32_t id : plain) EXPECT_FALSE(tok->is_control(id));
  EXPECT_EQ(tok->decode(plain), chat);
  // Adjacent and partial special tokens.
  EXPECT_EQ(tok->encode("<|endoftext|><|endoftext|>"), (Ids{0, 0}));
  EXPECT_EQ(tok->decode(tok->encode("<|im_start")), "<|im_start");
  // add_special follows the vocabulary: no BOS/EOS for SmolLM2; with the flags set they appear.
  EXPECT_EQ(tok->encode("hi", true), tok->encode("hi", false));
  Vocab v = tok->vocab();
  v.add_bos = v.add_eos = true;
  Tokenizer with(v);
  const Ids wrapped = with.encode("hi");
  ASSERT_GE(wrapped.size(), 3u);
  EXPECT_EQ(wrapped.front(), 1);
  EXPECT_EQ(wrapped.back(), 2);
  EXPECT_EQ(with.decode(wrapped), "hi");
}

// Resolves a fixture case's text: literal, or a field of a line of a data file.
bool case_text(const nlohmann::json& c, std::string& text, std::string& why) {
  if (c.contains("text")) {
    text = c["text"].get<std::string>();
    return true;
  }
  const auto& src = c.at("source");
  const std::string path = data_dir() + "/" + src.at("file").get<std::string>();
  static std::map<std::string, std::vector<std::string>> cache;
  auto it = cache.find(path);
  if (it == cache.end()) {
    if (!std::filesystem::exists(path)) {
      why = path + " not present";
      return false;
    }
    std::vector<std::string> lines;
    std::string data = read_file(path);
    size_t b = 0;
    while (b < data.size()) {
      size_t e = data.find('\n', b);
      if (e == std::string::npos) e = data.size();
      lines.push_back(data.substr(b, e - b));
      b = e + 1;
    }
    it = cache.emplace(path, std::move(lines)).first;
  }
  const auto line_no = src.at("line").get<size_t>();
  if (line_no == 0 || line_no > it->second.size()) throw std::runtime_error("line out of range in " + path);
  std::string line = it->second[line_no - 1];
  const std::string field = src.at("field").get<std::string>();
  if (field == "line") {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    text = line;
    return true;
  }
  const auto obj = nlohmann::json::parse(line);
  if (field.rfind("endings[", 0) == 0 && field.back() == ']') {
    text = obj.at("endings").at(std::stoul(field.substr(8, field.size() - 9))).get<std::string>();
  } else {
    text = obj.at(field).get<std::string>();
  }
  return true;
}

TEST(TokenizerSmolLM, ReferenceFixture) {
  const std::string fixture = source_dir() + "/tests/fixtures/tokenizer_ref.json";
  if (!std::filesystem::exists(fixture)) GTEST_SKIP() << fixture << " not present";
  REQUIRE_MODEL(tok);
  const auto doc = nlohmann::json::parse(read_file(fixture));
  size_t compared = 0, skipped = 0, mismatched = 0, alternate = 0;
  std::string skip_why;
  for (const auto& c : doc.at("cases")) {
    std::string text;
    if (!case_text(c, text, skip_why)) {
      ++skipped;
      continue;
    }
    // transformers' GGUF converter ignores tokenizer.ggml.pre = "smollm" (it does not split digits
    // off first); where that changes the ids the fixture also holds the ids of the file's own rule
    // (same vocabulary and merges, digit split first), which llama.cpp and SmolLM2's tokenizer.json follow.
    const bool alt = c.contains("ids_smollm_pre");
    alternate += alt;
    const Ids expected = c.at(alt ? "ids_smollm_pre" : "ids").get<Ids>();
    const Ids got = tok->encode(text, false, true);
    ++compared;
    if (got != expected) {
      ++mismatched;
      size_t k = 0;
      while (k < got.size() && k < expected.size() && got[k] == expected[k]) ++k;
      ADD_FAILURE() << "case " << c.dump().substr(0, 200) << ": first difference at token " << k << " of "
                    << expected.size() << " (got " << (k < got.size() ? got[k] : -1) << ", want "
                    << (k < expected.size() ? expected[k] : -1) << ")";
    }
  }
  std::printf("tokenizer fixture: %zu cases compared (%zu against ids_smollm_pre), %zu mismatched, %zu skipped\n",
              compared, alternate, mismatched, skipped);
  if (skipped > 0) GTEST_SKIP() << skipped << " cases need data: " << skip_why << " (set KVDIAL_DATA_DIR)";
}

TEST(TokenizerSmolLM, WikiTextSpeed) {
  REQUIRE_MODEL(tok);
  const std::string path = data_dir() + "/wikitext-2/wiki.test.raw";
  if (!std::filesystem::exists(path)) GTEST_SKIP() << path << " not present (set KVDIAL_DATA_DIR)";
  const std::string text = read_file(path);
  const auto t0 = std::chrono::steady_clock::now();
  const Ids ids = tok->encode(text, false, false);
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("wiki.test.raw: %zu bytes -> %zu tokens in %.3f s\n", text.size(), ids.size(), secs);
  EXPECT_EQ(ids.size(), 309187u);  // Hugging Face gives the same count
  EXPECT_EQ(tok->decode(ids), text);
  EXPECT_LT(secs, 5.0);
}

}  // namespace
