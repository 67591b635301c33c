// Pre-tokenizers for byte-level BPE: split text into words the way the regexes named by
// tokenizer.ggml.pre do (GPT-2, digits + GPT-2, Llama 3, Qwen 2, llama.cpp's default), hand-written
// over Unicode class tables. Invalid UTF-8 bytes count as single code points of class "other".
#pragma once
#include <cstddef>
#include <cstdint>
#include <string_view>
#include <vector>

namespace kvd::pretok {

enum class Scheme {
  kGpt2,        // 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
  kDigitsGpt2,  // each \p{N} isolated first (HF Digits(individual_digits)), then kGpt2
  kLlama3,   // (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|...
  kQwen2,    // as kLlama3 but \p{N} one at a time
  kDefault,  // llama.cpp's fallback: [\p{P}$+<=>^~|]+, then kGpt2, then \p{N}+, then [0-9]{3}
};

struct SchemeInfo {
  Scheme scheme = Scheme::kGpt2;
  bool ignore_merges = false;    // a word that is itself a token is not run through the merges
  bool default_add_bos = false;  // llama.cpp's default when tokenizer.ggml.add_bos_token is absent
};

// The scheme for a tokenizer.ggml.pre value (names as llama.cpp spells them). Throws kvd::Error
// "unsupported tokenizer.ggml.pre 'xyz'" for a name it does not know.
SchemeInfo scheme_from_name(std::string_view pre);

// Class flags of a code point (see unicode_tables.h): letter 1, number 2, White_Space 4, punct 8.
uint8_t classify(uint32_t cp);

// Splits `text` into words that tile it; appends the byte offset where each word ends to `ends`.
void split(Scheme scheme, std::string_view text, std::vector<size_t>& ends);

}  // namespace kvd::pretok
