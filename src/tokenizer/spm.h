// SentencePiece-style tokenizer for GGUF files with tokenizer.ggml.model = "llama" (Llama 1/2, Mistral):
// the rules of llama.cpp's SPM vocabulary type. Spaces become U+2581 ("▁"), one is prepended to each
// stretch of text that starts the input or follows a special token (add_space_prefix), and adjacent
// symbols (initially UTF-8 characters) merge while their concatenation is a vocabulary entry, the
// entry with the highest score first. A character left without a token is emitted as byte tokens
// "<0xXX>" (byte fallback).
#pragma once
#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "tokenizer/tokenizer.h"

namespace kvd {

class SpmTokenizer {
 public:
  // Checks the vocabulary (scores and token types, one per token; byte tokens spelled <0xXX>; BOS /
  // EOS ids present when they are to be added) and throws a one-line kvd::Error naming the problem.
  explicit SpmTokenizer(const Vocab& vocab);
  SpmTokenizer(const SpmTokenizer&) = delete;  // token_to_id_ points into pieces_
  SpmTokenizer& operator=(const SpmTokenizer&) = delete;

  // add_special: BOS / EOS as the vocab says. parse_special: text spelling a CONTROL or UNKNOWN token
  // becomes that token; USER_DEFINED tokens are split out of the text either way (as in llama.cpp).
  // Throws kvd::Error when a character needs byte fallback and the vocabulary lacks its byte token.
  std::vector<int32_t> encode(std::string_view text, bool add_special, bool parse_special) const;
  // llama.cpp's detokenize: "▁" -> " ", byte tokens -> their byte, CONTROL / UNKNOWN tokens dropped
  // unless keep_special, UNUSED ones always. With add_space_prefix the first token loses one
  // leading space, except when the ids start with BOS (then the space after it stays).
  std::string decode(const std::vector<int32_t>& ids, bool keep_special) const;
  // The text of one token as decode shows it (no space stripping), special tokens as written.
  std::string token_bytes(int32_t id) const;
  // Id of the token for one byte (<0xXX>, else the one-character token), or -1.
  int32_t byte_token(unsigned char b) const { return byte_token_[b]; }
  size_t n_byte_tokens() const;

 private:
  struct Fragment {
    size_t offset, length;
    int32_t token;  // -1: raw text
  };
  // Splits raw-text fragments at each occurrence of the special tokens, longest token first.
  void split_specials(std::string_view text, bool parse_special, std::vector<Fragment>& frags) const;
  // Tokenizes text already escaped (spaces as "▁"), appending ids to `out`.
  void tokenize_escaped(std::string_view text, std::vector<int32_t>& out) const;
  int32_t lookup(std::string_view piece) const;

  std::vector<std::string> pieces_;
  std::vector<float> scores_;
  std::vector<int32_t> types_;
  std::unordered_map<std::string_view, int32_t> token_to_id_;
  std::vector<int32_t> byte_token_;  // 256 entries
  std::vector<int32_t> specials_;    // CONTROL / USER_DEFINED / UNKNOWN ids, longest text first
  bool words_independent_ = false;   // no token holds a "▁" after other text: merge word by word
  size_t max_piece_ = 0;             // bytes of the longest token
  int32_t bos_ = -1, eos_ = -1;
  bool add_bos_ = true, add_eos_ = false, add_space_prefix_ = true;
};

}  // namespace kvd
