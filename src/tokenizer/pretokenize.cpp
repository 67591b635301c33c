// Hand-written pre-tokenizer regexes (GPT-2, Llama 3 / Qwen 2, digit and punctuation splits) over
// code points decoded leniently from UTF-8. Each stage splits every fragment of the previous stage
// on its own, so a lookahead never sees past a fragment, as in Hugging Face and llama.cpp.
#include "tokenizer/pretokenize.h"

#include <algorithm>
#include <array>
#include <string>

#include "tokenizer/unicode_tables.h"
#include "util/error.h"

namespace kvd::pretok {
namespace {

namespace ut = unicode_tables;

constexpr uint8_t kL = ut::kLetter, kN = ut::kNumber, kS = ut::kSpace, kP = ut::kPunct;
// A unit that is not a code point: an invalid UTF-8 byte, as 0x110000 + byte. It has no class.
constexpr uint32_t kInvalidBase = 0x110000;

uint8_t classify_slow(uint32_t cp) {
  // Last range whose first code point is <= cp.
  unsigned lo = 0, hi = ut::kRangeCount;
  while (lo < hi) {
    unsigned mid = (lo + hi) / 2;
    if ((ut::kRanges[mid][0] >> 8) <= cp) {
      lo = mid + 1;
    } else {
      hi = mid;
    }
  }
  if (lo == 0) return 0;
  const uint32_t* r = ut::kRanges[lo - 1];
  return cp <= r[1] ? static_cast<uint8_t>(r[0] & 0xFF) : 0;
}

const std::array<uint8_t, 128>& ascii_flags() {
  static const std::array<uint8_t, 128> table = [] {
    std::array<uint8_t, 128> t{};
    for (uint32_t c = 0; c < 128; ++c) t[c] = classify_slow(c);
    return t;
  }();
  return table;
}

bool is_other(uint8_t f) { return (f & (kL | kN | kS)) == 0; }
bool is_cr_lf(uint32_t c) { return c == '\r' || c == '\n'; }
uint32_t ascii_lower(uint32_t c) { return (c >= 'A' && c <= 'Z') ? c + 32 : c; }

// The text as units: a code point per valid UTF-8 sequence, one unit per invalid byte.
struct Units {
  std::vector<uint32_t> cp;
  std::vector<uint8_t> fl;
  std::vector<size_t> pos;  // byte offset of each unit, plus one past the end
};

void decode(std::string_view s, Units& u) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const size_t n = s.size();
  u.cp.clear();
  u.fl.clear();
  u.pos.clear();
  u.cp.reserve(n);
  u.fl.reserve(n);
  u.pos.reserve(n + 1);
  const auto& ascii = ascii_flags();
  auto cont = [&](size_t i) { return i < n && (p[i] & 0xC0) == 0x80; };
  size_t i = 0;
  while (i < n) {
    const unsigned b = p[i];
    uint32_t cp = kInvalidBase + b;
    size_t len = 1;
    if (b < 0x80) {
      cp = b;
    } else if (b >= 0xC2 && b <= 0xDF && cont(i + 1)) {
      cp = (b & 0x1F) << 6 | (p[i + 1] & 0x3F);
      len = 2;
    } else if (b >= 0xE0 && b <= 0xEF && cont(i + 1) && cont(i + 2)) {
      const unsigned b1 = p[i + 1];
      if ((b != 0xE0 || b1 >= 0xA0) && (b != 0xED || b1 < 0xA0)) {  // no overlongs, no surrogates
        cp = (b & 0x0F) << 12 | (b1 & 0x3F) << 6 | (p[i + 2] & 0x3F);
        len = 3;
      }
    } else if (b >= 0xF0 && b <= 0xF4 && cont(i + 1) && cont(i + 2) && cont(i + 3)) {
      const unsigned b1 = p[i + 1];
      if ((b != 0xF0 || b1 >= 0x90) && (b != 0xF4 || b1 < 0x90)) {  // no overlongs, <= U+10FFFF
        cp = (b & 0x07) << 18 | (b1 & 0x3F) << 12 | (p[i + 2] & 0x3F) << 6 | (p[i + 3] & 0x3F);
        len = 4;
      }
    }
    u.cp.push_back(cp);
    u.fl.push_back(cp < 128 ? ascii[cp] : classify(cp));
    u.pos.push_back(i);
    i += len;
  }
  u.pos.push_back(n);
}

// Runs `stage(begin, end, out)` on every fragment [prev end, end) of `in`; it appends the unit
// indices where its pieces end, the last being `end`.
template <class Stage>
void apply(const std::vector<size_t>& in, std::vector<size_t>& out, Stage&& stage) {
  out.clear();
  out.reserve(in.size() * 2);
  size_t b = 0;
  for (size_t e : in) {
    if (e > b) stage(b, e, out);
    b = e;
  }
}

// Every unit with one of `flags` becomes its own piece (HF Digits(individual_digits=true)).
void isolate_each(const Units& u, uint8_t flags, size_t b, size_t e, std::vector<size_t>& out) {
  for (size_t i = b; i < e; ++i) {
    if (u.fl[i] & flags) {
      if (i > b && (out.empty() || out.back() != i)) out.push_back(i);
      out.push_back(i + 1);
    }
  }
  if (out.empty() || out.back() != e) out.push_back(e);
}

// Maximal runs of units matching `pred` become pieces; what lies between too.
template <class Pred>
void isolate_runs(size_t b, size_t e, std::vector<size_t>& out, Pred&& pred) {
  size_t i = b;
  while (i < e) {
    size_t j = i;
    const bool m = pred(i);
    while (j < e && pred(j) == m) ++j;
    out.push_back(j);
    i = j;
  }
}

// [0-9][0-9][0-9], leftmost non-overlapping.
void ascii_triples(const Units& u, size_t b, size_t e, std::vector<size_t>& out) {
  auto digit = [&](size_t i) { return u.cp[i] >= '0' && u.cp[i] <= '9'; };
  size_t last = b;
  for (size_t i = b; i + 3 <= e;) {
    if (digit(i) && digit(i + 1) && digit(i + 2)) {
      if (i > last) out.push_back(i);
      out.push_back(i + 3);
      last = i + 3;
      i += 3;
    } else {
      ++i;
    }
  }
  if (last < e) out.push_back(e);
}

// Length of the contraction 's 't 're 've 'm 'll 'd at i (0 when none); `fold`: any ASCII case.
size_t contraction(const Units& u, size_t i, size_t e, bool fold) {
  if (u.cp[i] != '\'' || i + 1 >= e) return 0;
  auto at = [&](size_t k) { return fold ? ascii_lower(u.cp[k]) : u.cp[k]; };
  const uint32_t c1 = at(i + 1);
  if (c1 == 's' || c1 == 't' || c1 == 'm' || c1 == 'd') return 2;
  if (i + 2 >= e) return 0;
  const uint32_t c2 = at(i + 2);
  if ((c1 == 'r' && c2 == 'e') || (c1 == 'v' && c2 == 'e') || (c1 == 'l' && c2 == 'l')) return 3;
  return 0;
}

// The GPT-2 regex: 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
void gpt2(const Units& u, size_t b, size_t e, std::vector<size_t>& out) {
  size_t i = b;
  while (i < e) {
    if (size_t c = contraction(u, i, e, false)) {
      i += c;
      out.push_back(i);
      continue;
    }
    const bool space = u.cp[i] == ' ' && i + 1 < e;
    const uint8_t f = space ? u.fl[i + 1] : u.fl[i];
    const size_t start = i + (space ? 1 : 0);
    size_t j = start;
    if (f & kL) {
      while (j < e && (u.fl[j] & kL)) ++j;
    } else if (f & kN) {
      while (j < e && (u.fl[j] & kN)) ++j;
    } else if (is_other(f)) {
      while (j < e && is_other(u.fl[j])) ++j;
    }
    if (j > start) {
      i = j;
      out.push_back(i);
      continue;
    }
    // u.cp[i] is white space here.
    size_t k = i;
    while (k < e && (u.fl[k] & kS)) ++k;
    i = (k - i > 1 && k < e) ? k - 1 : k;  // \s+(?!\S) leaves the last space for the next word
    out.push_back(i);
  }
}

// The Llama 3 regex (max_digits 3) and Qwen 2's (max_digits 1):
// (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,N}| ?[^\s\p{L}\p{N}]+[\r\n]*|
// \s*[\r\n]+|\s+(?!\S)|\s+
void llama3(const Units& u, size_t b, size_t e, size_t max_digits, std::vector<size_t>& out) {
  size_t i = b;
  while (i < e) {
    if (size_t c = contraction(u, i, e, true)) {
      i += c;
      out.push_back(i);
      continue;
    }
    const uint32_t cp = u.cp[i];
    const uint8_t f = u.fl[i];
    // [^\r\n\p{L}\p{N}]?\p{L}+
    if ((f & kL) || (!is_cr_lf(cp) && !(f & kN) && i + 1 < e && (u.fl[i + 1] & kL))) {
      ++i;
      while (i < e && (u.fl[i] & kL)) ++i;
      out.push_back(i);
      continue;
    }
    // \p{N}{1,max}
    if (f & kN) {
      size_t j = i;
      while (j < e && j - i < max_digits && (u.fl[j] & kN)) ++j;
      i = j;
      out.push_back(i);
      continue;
    }
    // ' ?[^\s\p{L}\p{N}]+[\r\n]*'
    const bool space = cp == ' ' && i + 1 < e && is_other(u.fl[i + 1]);
    if (space || is_other(f)) {
      size_t j = i + (space ? 1 : 0);
      while (j < e && is_other(u.fl[j])) ++j;
      while (j < e && is_cr_lf(u.cp[j])) ++j;
      i = j;
      out.push_back(i);
      continue;
    }
    // White space: \s*[\r\n]+ ends after the run's last \r or \n; else \s+(?!\S) or \s+.
    size_t k = i, last_crlf = 0;
    while (k < e && (u.fl[k] & kS)) {
      if (is_cr_lf(u.cp[k])) last_crlf = k + 1;
      ++k;
    }
    if (last_crlf) {
      i = last_crlf;
    } else {
      i = (k - i > 1 && k < e) ? k - 1 : k;
    }
    out.push_back(i);
  }
}

}  // namespace

uint8_t classify(uint32_t cp) {
  if (cp < 128) return ascii_flags()[cp];
  if (cp > 0x10FFFF) return 0;
  return classify_slow(cp);
}

SchemeInfo scheme_from_name(std::string_view pre) {
  auto any = [&](std::initializer_list<std::string_view> names) {
    return std::find(names.begin(), names.end(), pre) != names.end();
  };
  if (any({"gpt2", "gpt-2", "phi-2", "mpt", "olmo", "jais", "roberta-bpe", "gigachat", "jina-es", "jina-de",
           "jina-v1-en", "jina-v2-es", "jina-v2-de", "jina-v2-code"})) {
    return {Scheme::kGpt2, false, false};
  }
  if (any({"smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva-7b"})) {
    return {Scheme::kDigitsGpt2, false, false};
  }
  if (any({"llama3", "llama-v3", "llama-bpe", "falcon3"})) return {Scheme::kLlama3, true, true};
  if (any({"dbrx", "smaug-bpe", "chatglm-bpe"})) return {Scheme::kLlama3, false, false};
  if (any({"qwen2", "deepseek-r1-qwen", "stablelm2", "megrez"})) return {Scheme::kQwen2, false, false};
  if (pre == "default") return {Scheme::kDefault, false, false};
  throw Error("unsupported tokenizer.ggml.pre '" + std::string(pre) + "'");
}

void split(Scheme scheme, std::string_view text, std::vector<size_t>& ends) {
  if (text.empty()) return;
  Units u;
  decode(text, u);
  const size_t n = u.cp.size();
  std::vector<size_t> a{n}, b;
  switch (scheme) {
    case Scheme::kGpt2:
      apply(a, b, [&](size_t s, size_t e, std::vector<size_t>& o) { gpt2(u, s, e, o); });
      break;
    case Scheme::kDigitsGpt2:
      apply(a, b, [&](size_t s, size_t e, std::vector<size_t>& o) { isolate_each(u, kN, s, e, o); });
      a.swap(b);
      apply(a, b, [&](size_t s, size_t e, std::vector<size_t>& o) { gpt2(u, s, e, o); });
      break;
    case Scheme::kLlama3:
    case Scheme::kQwen2: {
      const size_t max_digits = scheme == Scheme::kLlama3 ? 3 : 1;
      apply(a, b, [&](size_t s, size_t e, std::vector<size_t>& o) { llama3(u, s, e, max_digits, o); });
      break;
    }
    case Scheme::kDefault: {
      auto punct = [&](size_t i) {
        const uint32_t c = u.cp[i];
        return (u.fl[i] & kP) || c == '$' || c == '+' || c == '<' || c == '=' || c == '>' || c == '^' ||
               c == '~' || c == '|';
      };
      apply(a, b, [&](size_t s, size_t e, std::vector<size_t>& o) { isolate_runs(s, e, o, punct); });
      a.swap(b);
      apply(a, b, [&](size_t s, size_t e, std::vector<size_t>& o) { gpt2(u, s, e, o); });
      a.swap(b);
      apply(a, b, [&](size_t s, size_t e, std::vector<size_t>& o) {
        isolate_runs(s, e, o, [&](size_t i) { return (u.fl[i] & kN) != 0; });
      });
      a.swap(b);
      apply(a, b, [&](size_t s, size_t e, std::vector<size_t>& o) { ascii_triples(u, s, e, o); });
      break;
    }
  }
  ends.reserve(ends.size() + b.size());
  for (size_t e : b) ends.push_back(u.pos[e]);
}

}  // namespace kvd::pretok
