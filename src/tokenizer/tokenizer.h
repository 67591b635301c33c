// Tokenizer built from GGUF metadata (tokenizer.ggml.*). Byte-level BPE ("gpt2"): the GPT-2
// byte-to-unicode mapping, a pre-tokenizer chosen by tokenizer.ggml.pre, merges by rank, special tokens
// kept whole. SentencePiece ("llama"): delegated to SpmTokenizer (spm.h).
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace kvd::gguf {
class File;
}

namespace kvd {

class SpmTokenizer;

// Token types as GGUF stores them (tokenizer.ggml.token_type).
enum class TokenType : int32_t {
  NORMAL = 1,
  UNKNOWN = 2,
  CONTROL = 3,
  USER_DEFINED = 4,
  UNUSED = 5,
  BYTE = 6
};

struct Vocab {
  std::string model = "gpt2";   // tokenizer.ggml.model
  std::string pre = "default";  // tokenizer.ggml.pre
  std::vector<std::string> tokens;
  std::vector<int32_t> token_types;  // may be empty (then all NORMAL)
  std::vector<std::string> merges;   // "left right", in rank order (gpt2 only)
  std::vector<float> scores;         // one per token (llama only: tokenizer.ggml.scores)
  int32_t bos_id = -1, eos_id = -1, unk_id = -1, pad_id = -1;
  bool add_bos = false, add_eos = false;
  bool add_space_prefix = true;  // llama only: tokenizer.ggml.add_space_prefix
};

// Reads tokenizer.ggml.* from a GGUF file; throws kvd::Error when a required key is missing or
// malformed, or the model is neither byte-level BPE ("gpt2") nor SentencePiece ("llama").
Vocab vocab_from_gguf(const gguf::File& file);

class Tokenizer {
 public:
  // Throws kvd::Error for a model other than "gpt2" / "llama", a pre-tokenizer it does not implement
  // ("unsupported tokenizer.ggml.pre 'xyz'"; there is no silent fallback to another regex) or a
  // malformed SentencePiece vocabulary.
  explicit Tokenizer(Vocab vocab);

  // Text to ids. add_special: prepend BOS / append EOS as the vocab says. parse_special: text that
  // spells a CONTROL or USER_DEFINED token (e.g. "<|im_start|>") becomes that token.
  std::vector<int32_t> encode(std::string_view text, bool add_special = true,
                              bool parse_special = true) const;
  // SentencePiece: CONTROL / UNKNOWN / USER_DEFINED text is split out as in llama.cpp (see spm.h).
  // Ids to text. Control tokens are dropped unless keep_special. Bytes that do not form valid UTF-8
  // are passed through as they are, so decode(encode(s)) == s for any byte string s whose bytes all
  // have a one-byte token. (SmolLM2's vocabulary lacks 21 bytes, e.g. 0x1D and 0xC0; encode drops
  // them, as Hugging Face and llama.cpp do.) SentencePiece: see SpmTokenizer::decode.
  std::string decode(const std::vector<int32_t>& ids, bool keep_special = false) const;
  // The raw bytes one token stands for (its piece after undoing the byte-to-unicode mapping;
  // SentencePiece: "▁" as a space, a byte token as its byte).
  std::string token_bytes(int32_t id) const;

  size_t vocab_size() const { return vocab_.tokens.size(); }
  int32_t bos() const { return vocab_.bos_id; }
  int32_t eos() const { return vocab_.eos_id; }
  bool is_control(int32_t id) const;
  const Vocab& vocab() const { return vocab_; }
  bool is_spm() const { return spm_ != nullptr; }
  // A one-line description: the kind, token count, merges or byte tokens, BOS / prefix settings.
  std::string summary() const;
  // Id of an exact token string, or -1.
  int32_t find(std::string_view token) const;

 private:
  struct Merge {
    int32_t rank;
    int32_t id;  // the merged token
  };
  // Appends the ids of one pre-tokenized word (raw bytes) to `out`.
  void bpe(std::string_view word, std::vector<int32_t>& out) const;
  // Pre-tokenizes and merges text that holds no special token.
  void encode_plain(std::string_view text, std::vector<int32_t>& out) const;
  const Merge* find_merge(int32_t left, int32_t right) const;

  Vocab vocab_;
  std::shared_ptr<const SpmTokenizer> spm_;  // set for "llama" vocabularies; immutable, shared by copies
  int scheme_ = 0;                           // pretok::Scheme
  bool ignore_merges_ = false;
  std::unordered_map<std::string, int32_t> token_to_id_;
  std::unordered_map<uint64_t, Merge> merges_;  // (left id << 32 | right id) -> merge
  std::vector<int32_t> byte_token_;             // byte -> id of its one-byte token, or -1
  std::vector<std::string> id_to_bytes_;
  std::vector<int32_t> special_ids_;                   // CONTROL / USER_DEFINED tokens, longest first
  std::vector<std::vector<int32_t>> special_by_byte_;  // first byte -> indices into special_ids_
};

}  // namespace kvd
