// Byte-level BPE tokenizer: vocabulary from GGUF metadata, special tokens split out first, then the
// pre-tokenizer named by tokenizer.ggml.pre, the GPT-2 byte-to-unicode mapping and merges by rank.
// Decoding concatenates the raw bytes of the tokens. SentencePiece vocabularies go to spm.cpp.
#include "tokenizer/tokenizer.h"

#include <algorithm>
#include <array>
#include <cstring>
#include <queue>

#include "gguf/gguf.h"
#include "tokenizer/pretokenize.h"
#include "tokenizer/spm.h"
#include "util/error.h"

namespace kvd {
namespace {

// GPT-2's bytes_to_unicode: printable Latin-1 bytes stand for themselves, the others for 256 + n.
const std::array<uint32_t, 256>& byte_to_cp() {
  static const std::array<uint32_t, 256> table = [] {
    std::array<uint32_t, 256> t{};
    uint32_t n = 0;
    for (uint32_t b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      t[b] = printable ? b : 256 + n++;
    }
    return t;
  }();
  return table;
}

// Inverse of byte_to_cp (all its code points are below 324), -1 elsewhere.
const std::array<int16_t, 324>& cp_to_byte() {
  static const std::array<int16_t, 324> table = [] {
    std::array<int16_t, 324> t;
    t.fill(-1);
    for (int b = 0; b < 256; ++b) t[byte_to_cp()[b]] = static_cast<int16_t>(b);
    return t;
  }();
  return table;
}

void append_utf8(std::string& s, uint32_t cp) {
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

// The byte-level spelling of raw bytes (what vocabulary entries look like).
std::string to_byte_level(std::string_view raw) {
  std::string s;
  s.reserve(raw.size() * 2);
  for (unsigned char c : raw) append_utf8(s, byte_to_cp()[c]);
  return s;
}

// Undoes the byte-level spelling of a token. A character outside the byte alphabet (or an invalid
// UTF-8 byte) is kept as it is written.
std::string from_byte_level(std::string_view tok) {
  std::string out;
  out.reserve(tok.size());
  const auto* p = reinterpret_cast<const unsigned char*>(tok.data());
  size_t i = 0;
  while (i < tok.size()) {
    uint32_t cp = p[i];
    size_t len = 1;
    if (p[i] >= 0xC0 && p[i] < 0xE0 && i + 1 < tok.size() && (p[i + 1] & 0xC0) == 0x80) {
      cp = (p[i] & 0x1F) << 6 | (p[i + 1] & 0x3F);
      len = 2;
    } else if (p[i] >= 0x80) {
      // Longer sequences are never in the byte alphabet: copy the whole sequence through.
      len = p[i] >= 0xF0 ? 4 : p[i] >= 0xE0 ? 3 : 1;
      len = std::min(len, tok.size() - i);
      out.append(tok.substr(i, len));
      i += len;
      continue;
    }
    if (cp < cp_to_byte().size() && cp_to_byte()[cp] >= 0) {
      out += static_cast<char>(cp_to_byte()[cp]);
    } else {
      out.append(tok.substr(i, len));
    }
    i += len;
  }
  return out;
}

struct Candidate {
  int32_t rank;
  int32_t left;  // symbol index
  int32_t right;
  int32_t left_id, right_id;
  bool operator>(const Candidate& o) const { return rank != o.rank ? rank > o.rank : left > o.left; }
};

}  // namespace

namespace {

// tokenizer.ggml.tokens and tokenizer.ggml.token_type (optional, one type per token, 0..6).
void read_tokens(const gguf::File& file, Vocab& v) {
  const gguf::Array& tokens = file.get("tokenizer.ggml.tokens").as_array();
  v.tokens.reserve(tokens.size());
  for (const gguf::Value& t : tokens) v.tokens.push_back(t.as_string());
  if (const gguf::Value* types = file.find("tokenizer.ggml.token_type")) {
    const gguf::Array& a = types->as_array();
    if (a.size() != v.tokens.size()) {
      throw Error(file.path() + ": tokenizer.ggml.token_type has " + std::to_string(a.size()) +
                  " entries for " + std::to_string(v.tokens.size()) + " tokens");
    }
    v.token_types.reserve(a.size());
    for (size_t i = 0; i < a.size(); ++i) {
      const int64_t t = a[i].as_int();
      if (t < 0 || t > static_cast<int64_t>(TokenType::BYTE)) {
        throw Error(file.path() + ": tokenizer.ggml.token_type[" + std::to_string(i) + "] is " +
                    std::to_string(t) + ", not a token type (0..6)");
      }
      v.token_types.push_back(static_cast<int32_t>(t));
    }
  }
}

// A token id key: `fallback` when absent or outside the vocabulary (llama.cpp keeps its default).
int32_t token_id(const gguf::File& file, const Vocab& v, const char* key, int32_t fallback) {
  const int64_t n = static_cast<int64_t>(v.tokens.size());
  if (const gguf::Value* val = file.find(key)) {
    const int64_t i = val->as_int();
    if (i >= 0 && i < n) return static_cast<int32_t>(i);
  }
  return fallback >= 0 && fallback < n ? fallback : -1;
}

bool flag(const gguf::File& file, const char* key, bool fallback) {
  const gguf::Value* val = file.find(key);
  return val ? val->as_bool() : fallback;
}

// SentencePiece ("llama"): scores are required; llama.cpp's defaults: BOS 1, EOS 2, UNK 0, BOS added,
// a space prefixed.
Vocab spm_vocab_from_gguf(const gguf::File& file, Vocab v) {
  read_tokens(file, v);
  const gguf::Value* scores = file.find("tokenizer.ggml.scores");
  if (!scores) {
    throw Error(file.path() +
                ": tokenizer.ggml.scores is missing (a SentencePiece vocabulary needs a score per token)");
  }
  const gguf::Array& a = scores->as_array();
  if (a.size() != v.tokens.size()) {
    throw Error(file.path() + ": tokenizer.ggml.scores has " + std::to_string(a.size()) + " entries for " +
                std::to_string(v.tokens.size()) + " tokens");
  }
  v.scores.reserve(a.size());
  for (const gguf::Value& x : a) v.scores.push_back(static_cast<float>(x.as_float()));
  v.bos_id = token_id(file, v, "tokenizer.ggml.bos_token_id", 1);
  v.eos_id = token_id(file, v, "tokenizer.ggml.eos_token_id", 2);
  v.unk_id = token_id(file, v, "tokenizer.ggml.unknown_token_id", 0);
  v.pad_id = token_id(file, v, "tokenizer.ggml.padding_token_id", -1);
  v.add_bos = flag(file, "tokenizer.ggml.add_bos_token", true);
  v.add_eos = flag(file, "tokenizer.ggml.add_eos_token", false);
  v.add_space_prefix = flag(file, "tokenizer.ggml.add_space_prefix", true);
  return v;
}

}  // namespace

Vocab vocab_from_gguf(const gguf::File& file) {
  Vocab v;
  v.model = file.get("tokenizer.ggml.model").as_string();
  if (v.model == "llama") return spm_vocab_from_gguf(file, std::move(v));
  if (v.model != "gpt2") {
    throw Error(file.path() + ": unsupported tokenizer.ggml.model '" + v.model +
                "' (implemented: byte-level BPE 'gpt2' and SentencePiece 'llama')");
  }
  if (const gguf::Value* pre = file.find("tokenizer.ggml.pre")) v.pre = pre->as_string();
  const pretok::SchemeInfo info = pretok::scheme_from_name(v.pre);

  read_tokens(file, v);
  const gguf::Array& merges = file.get("tokenizer.ggml.merges").as_array();
  v.merges.reserve(merges.size());
  for (const gguf::Value& m : merges) v.merges.push_back(m.as_string());

  v.bos_id = token_id(file, v, "tokenizer.ggml.bos_token_id", -1);
  v.eos_id = token_id(file, v, "tokenizer.ggml.eos_token_id", -1);
  v.unk_id = token_id(file, v, "tokenizer.ggml.unknown_token_id", -1);
  v.pad_id = token_id(file, v, "tokenizer.ggml.padding_token_id", -1);
  v.add_bos = flag(file, "tokenizer.ggml.add_bos_token", info.default_add_bos);
  v.add_eos = flag(file, "tokenizer.ggml.add_eos_token", false);
  return v;
}

Tokenizer::Tokenizer(Vocab vocab) : vocab_(std::move(vocab)) {
  if (vocab_.model == "llama") {
    spm_ = std::make_shared<const SpmTokenizer>(vocab_);
    token_to_id_.reserve(vocab_.tokens.size());
    for (size_t i = 0; i < vocab_.tokens.size(); ++i)
      token_to_id_[vocab_.tokens[i]] = static_cast<int32_t>(i);
    for (int32_t* id : {&vocab_.bos_id, &vocab_.eos_id, &vocab_.unk_id, &vocab_.pad_id}) {
      if (*id < 0 || static_cast<size_t>(*id) >= vocab_.tokens.size()) *id = -1;
    }
    return;
  }
  if (vocab_.model != "gpt2") throw Error("unsupported tokenizer model '" + vocab_.model + "'");
  const pretok::SchemeInfo info = pretok::scheme_from_name(vocab_.pre);
  scheme_ = static_cast<int>(info.scheme);
  ignore_merges_ = info.ignore_merges;
  const size_t n = vocab_.tokens.size();
  if (n >= (size_t{1} << 31)) throw Error("vocabulary too large");
  if (!vocab_.token_types.empty() && vocab_.token_types.size() != n) {
    throw Error("tokenizer: " + std::to_string(vocab_.token_types.size()) + " token types for " +
                std::to_string(n) + " tokens");
  }
  for (int32_t* id : {&vocab_.bos_id, &vocab_.eos_id, &vocab_.unk_id, &vocab_.pad_id}) {
    if (*id < 0 || static_cast<size_t>(*id) >= n) *id = -1;
  }

  token_to_id_.reserve(n);
  id_to_bytes_.resize(n);
  for (size_t i = 0; i < n; ++i) {
    const std::string& tok = vocab_.tokens[i];
    token_to_id_[tok] = static_cast<int32_t>(i);  // a duplicate maps to its last id, as in HF and llama.cpp
    const int32_t type = vocab_.token_types.empty() ? 1 : vocab_.token_types[i];
    const bool special = type == static_cast<int32_t>(TokenType::CONTROL) ||
                         type == static_cast<int32_t>(TokenType::USER_DEFINED);
    // Special tokens are stored as their text; the others in the byte alphabet.
    id_to_bytes_[i] = special ? tok : from_byte_level(tok);
    if (special && !tok.empty()) special_ids_.push_back(static_cast<int32_t>(i));
  }

  byte_token_.assign(256, -1);
  for (int b = 0; b < 256; ++b) {
    std::string s;
    append_utf8(s, byte_to_cp()[b]);
    auto it = token_to_id_.find(s);
    byte_token_[b] = it != token_to_id_.end() ? it->second : -1;  // dropped, as HF and llama.cpp do
  }

  merges_.reserve(vocab_.merges.size());
  std::string joined;
  for (size_t r = 0; r < vocab_.merges.size(); ++r) {
    const std::string& m = vocab_.merges[r];
    const size_t sp = m.find(' ', 1);
    if (sp == std::string::npos) continue;
    auto l = token_to_id_.find(m.substr(0, sp));
    auto rt = token_to_id_.find(m.substr(sp + 1));
    if (l == token_to_id_.end() || rt == token_to_id_.end()) continue;
    joined.assign(m, 0, sp);
    joined.append(m, sp + 1);
    auto j = token_to_id_.find(joined);
    if (j == token_to_id_.end()) continue;
    const uint64_t key = static_cast<uint64_t>(l->second) << 32 | static_cast<uint32_t>(rt->second);
    merges_.emplace(key, Merge{static_cast<int32_t>(r), j->second});  // keeps the first (best) rank
  }

  std::stable_sort(special_ids_.begin(), special_ids_.end(),
                   [&](int32_t a, int32_t b) { return vocab_.tokens[a].size() > vocab_.tokens[b].size(); });
  special_by_byte_.assign(256, {});
  for (size_t k = 0; k < special_ids_.size(); ++k) {
    const auto first = static_cast<unsigned char>(vocab_.tokens[special_ids_[k]][0]);
    special_by_byte_[first].push_back(static_cast<int32_t>(k));
  }
}

const Tokenizer::Merge* Tokenizer::find_merge(int32_t left, int32_t right) const {
  auto it = merges_.find(static_cast<uint64_t>(left) << 32 | static_cast<uint32_t>(right));
  return it != merges_.end() ? &it->second : nullptr;
}

void Tokenizer::bpe(std::string_view word, std::vector<int32_t>& out) const {
  if (word.empty()) return;
  if (ignore_merges_ && word.size() > 1) {
    auto it = token_to_id_.find(to_byte_level(word));
    if (it != token_to_id_.end()) {
      out.push_back(it->second);
      return;
    }
  }
  // A byte without a token is dropped before merging, so its neighbours may merge (as in HF).
  std::vector<int32_t> ids;
  ids.reserve(word.size());
  for (unsigned char c : word) {
    if (byte_token_[c] >= 0) ids.push_back(byte_token_[c]);
  }
  const size_t n = ids.size();
  if (n == 0) return;

  if (n <= 48) {
    // Short words: rescan for the best pair after each merge.
    size_t len = n;
    while (len > 1) {
      int32_t best_rank = INT32_MAX, best_id = -1;
      size_t best = 0;
      for (size_t i = 0; i + 1 < len; ++i) {
        const Merge* m = find_merge(ids[i], ids[i + 1]);
        if (m && m->rank < best_rank) {
          best_rank = m->rank;
          best_id = m->id;
          best = i;
        }
      }
      if (best_id < 0) break;
      ids[best] = best_id;
      ids.erase(ids.begin() + static_cast<ptrdiff_t>(best) + 1);
      --len;
    }
    out.insert(out.end(), ids.begin(), ids.begin() + static_cast<ptrdiff_t>(len));
    return;
  }

  // Long words: a heap of candidate pairs over a linked list of symbols, O(n log n).
  std::vector<int32_t> prev(n), next(n);
  for (size_t i = 0; i < n; ++i) {
    prev[i] = static_cast<int32_t>(i) - 1;
    next[i] = i + 1 < n ? static_cast<int32_t>(i + 1) : -1;
  }
  std::priority_queue<Candidate, std::vector<Candidate>, std::greater<Candidate>> heap;
  auto push = [&](int32_t l, int32_t r) {
    if (l < 0 || r < 0) return;
    if (const Merge* m = find_merge(ids[l], ids[r])) heap.push({m->rank, l, r, ids[l], ids[r]});
  };
  for (size_t i = 0; i + 1 < n; ++i) push(static_cast<int32_t>(i), static_cast<int32_t>(i + 1));
  while (!heap.empty()) {
    const Candidate c = heap.top();
    heap.pop();
    if (next[c.left] != c.right || ids[c.left] != c.left_id || ids[c.right] != c.right_id) continue;
    ids[c.left] = find_merge(c.left_id, c.right_id)->id;
    ids[c.right] = -1;  // dead
    next[c.left] = next[c.right];
    if (next[c.right] >= 0) prev[next[c.right]] = c.left;
    push(prev[c.left], c.left);
    push(c.left, next[c.left]);
  }
  for (int32_t i = 0; i >= 0; i = next[i]) out.push_back(ids[i]);
}

void Tokenizer::encode_plain(std::string_view text, std::vector<int32_t>& out) const {
  std::vector<size_t> ends;
  pretok::split(static_cast<pretok::Scheme>(scheme_), text, ends);
  size_t b = 0;
  for (size_t e : ends) {
    bpe(text.substr(b, e - b), out);
    b = e;
  }
}

std::vector<int32_t> Tokenizer::encode(std::string_view text, bool add_special, bool parse_special) const {
  if (spm_) return spm_->encode(text, add_special, parse_special);
  std::vector<int32_t> out;
  out.reserve(text.size() / 3 + 2);
  if (add_special && vocab_.add_bos && vocab_.bos_id >= 0) out.push_back(vocab_.bos_id);
  if (!parse_special || special_ids_.empty()) {
    encode_plain(text, out);
  } else {
    // Leftmost-longest match of the special tokens; the text between goes through BPE.
    size_t plain = 0, i = 0;
    while (i < text.size()) {
      const auto& cands = special_by_byte_[static_cast<unsigned char>(text[i])];
      int32_t hit = -1;
      for (int32_t k : cands) {
        const std::string& tok = vocab_.tokens[special_ids_[k]];
        if (text.compare(i, tok.size(), tok) == 0) {
          hit = special_ids_[k];
          break;
        }
      }
      if (hit < 0) {
        ++i;
        continue;
      }
      encode_plain(text.substr(plain, i - plain), out);
      out.push_back(hit);
      i += vocab_.tokens[hit].size();
      plain = i;
    }
    encode_plain(text.substr(plain), out);
  }
  if (add_special && vocab_.add_eos && vocab_.eos_id >= 0) out.push_back(vocab_.eos_id);
  return out;
}

std::string Tokenizer::decode(const std::vector<int32_t>& ids, bool keep_special) const {
  if (spm_) return spm_->decode(ids, keep_special);
  std::string out;
  for (int32_t id : ids) {
    if (id < 0 || static_cast<size_t>(id) >= id_to_bytes_.size()) {
      throw Error("decode: token id " + std::to_string(id) + " is outside the vocabulary (" +
                  std::to_string(id_to_bytes_.size()) + " tokens)");
    }
    if (!keep_special && is_control(id)) continue;
    out += id_to_bytes_[id];
  }
  return out;
}

std::string Tokenizer::token_bytes(int32_t id) const {
  if (spm_) return spm_->token_bytes(id);
  if (id < 0 || static_cast<size_t>(id) >= id_to_bytes_.size()) {
    throw Error("token id " + std::to_string(id) + " is outside the vocabulary");
  }
  return id_to_bytes_[id];
}

bool Tokenizer::is_control(int32_t id) const {
  if (id < 0 || static_cast<size_t>(id) >= vocab_.token_types.size()) return false;
  return vocab_.token_types[id] == static_cast<int32_t>(TokenType::CONTROL);
}

std::string Tokenizer::summary() const {
  const std::string n = std::to_string(vocab_.tokens.size()) + " tokens";
  auto id = [&](int32_t i) {
    return i >= 0 ? std::to_string(i) + " '" + vocab_.tokens[i] + "'" : std::string("-");
  };
  const std::string ids = ", BOS " + id(vocab_.bos_id) + ", EOS " + id(vocab_.eos_id) +
                          (vocab_.add_bos ? ", BOS added" : ", no BOS added") +
                          (vocab_.add_eos ? ", EOS added" : "");
  if (spm_) {
    return "SentencePiece (llama.cpp SPM rules), " + n + ", " + std::to_string(spm_->n_byte_tokens()) +
           " byte tokens" + ids + (vocab_.add_space_prefix ? ", space prefix" : ", no space prefix");
  }
  return "byte-level BPE, pre-tokenizer '" + vocab_.pre + "', " + n + ", " + std::to_string(merges_.size()) +
         " merges" + ids;
}

int32_t Tokenizer::find(std::string_view token) const {
  auto it = token_to_id_.find(std::string(token));
  return it != token_to_id_.end() ? it->second : -1;
}

}  // namespace kvd
