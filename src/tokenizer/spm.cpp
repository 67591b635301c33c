// SentencePiece-style tokenization as llama.cpp does it for "llama" vocabularies: special tokens split
// out first (longest first), then per stretch of text a bigram priority queue over UTF-8 characters
// that merges the adjacent pair whose concatenation is the best-scoring vocabulary entry (ties: the
// leftmost pair), and byte tokens for whatever is left without a token.
#include "tokenizer/spm.h"

#include <algorithm>
#include <cmath>
#include <queue>

#include "util/error.h"

namespace kvd {
namespace {

constexpr std::string_view kSpace = "\xE2\x96\x81";  // U+2581, SentencePiece's visible space

constexpr int32_t type_of(TokenType t) { return static_cast<int32_t>(t); }

// Bytes in the UTF-8 sequence that starts with `lead`, from its high nibble (a stray continuation
// byte counts as one character, as in llama.cpp).
size_t utf8_len(unsigned char lead) {
  static constexpr size_t kLen[16] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4};
  return kLen[lead >> 4];
}

int hex_digit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  return -1;
}

// The byte a "<0xXX>" piece stands for, or -1 when the piece is not spelled that way.
int parse_byte_piece(std::string_view p) {
  if (p.size() != 6 || p.substr(0, 3) != "<0x" || p[5] != '>') return -1;
  const int hi = hex_digit(p[3]), lo = hex_digit(p[4]);
  return hi < 0 || lo < 0 ? -1 : hi * 16 + lo;
}

struct Symbol {
  int32_t prev, next;
  size_t offset, length;  // length 0: merged into its left neighbour
};

struct Bigram {
  float score;
  int32_t left, right;
  size_t length;  // bytes of the two symbols together when the pair was queued
};

// Highest score on top; among equal scores the leftmost pair.
struct BigramOrder {
  bool operator()(const Bigram& a, const Bigram& b) const {
    return a.score != b.score ? a.score < b.score : a.left > b.left;
  }
};

}  // namespace

SpmTokenizer::SpmTokenizer(const Vocab& v)
    : pieces_(v.tokens),
      scores_(v.scores),
      types_(v.token_types),
      add_bos_(v.add_bos),
      add_eos_(v.add_eos),
      add_space_prefix_(v.add_space_prefix) {
  const size_t n = pieces_.size();
  if (n == 0) throw Error("SentencePiece vocabulary: tokenizer.ggml.tokens is empty");
  if (n >= (size_t{1} << 31)) throw Error("SentencePiece vocabulary: too many tokens");
  if (scores_.size() != n) {
    throw Error("SentencePiece vocabulary: " + std::to_string(scores_.size()) + " scores for " +
                std::to_string(n) + " tokens (tokenizer.ggml.scores needs one per token)");
  }
  if (!types_.empty() && types_.size() != n) {
    throw Error("SentencePiece vocabulary: " + std::to_string(types_.size()) + " token types for " +
                std::to_string(n) + " tokens");
  }
  if (types_.empty()) types_.assign(n, type_of(TokenType::NORMAL));  // as llama.cpp: all normal

  token_to_id_.reserve(n);
  for (size_t i = 0; i < n; ++i) {
    const std::string& p = pieces_[i];
    if (std::isnan(scores_[i]))
      throw Error("SentencePiece vocabulary: score of token " + std::to_string(i) + " is NaN");
    const int32_t t = types_[i];
    if (t < 0 || t > type_of(TokenType::BYTE)) {
      throw Error("SentencePiece vocabulary: token " + std::to_string(i) + " has token type " +
                  std::to_string(t) +
                  " (known: 0 undefined, 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte)");
    }
    if (t == type_of(TokenType::BYTE) && parse_byte_piece(p) < 0) {
      throw Error("SentencePiece vocabulary: token " + std::to_string(i) + " has type byte but is spelled '" +
                  p + "', not <0xXX>");
    }
    if (p.empty()) continue;  // cannot be matched; decodes to nothing
    max_piece_ = std::max(max_piece_, p.size());
    token_to_id_[std::string_view(p)] = static_cast<int32_t>(i);  // a duplicate: its last id, as llama.cpp
    if (t == type_of(TokenType::CONTROL) || t == type_of(TokenType::USER_DEFINED) ||
        t == type_of(TokenType::UNKNOWN)) {
      specials_.push_back(static_cast<int32_t>(i));
    }
  }
  // Merges never cross a "▁" that follows something else when no token holds "▁" after other text
  // (SentencePiece splits words at spaces in training, so real vocabularies qualify); tokenize_escaped
  // then merges each word on its own (same result, smaller queues).
  words_independent_ = true;
  for (const std::string& p : pieces_) {
    for (size_t at = p.find(kSpace, 1); at != std::string::npos && words_independent_;
         at = p.find(kSpace, at + 1)) {
      words_independent_ = at >= kSpace.size() && p.compare(at - kSpace.size(), kSpace.size(), kSpace) == 0;
    }
    if (!words_independent_) break;
  }
  std::stable_sort(specials_.begin(), specials_.end(),
                   [&](int32_t a, int32_t b) { return pieces_[a].size() > pieces_[b].size(); });

  byte_token_.assign(256, -1);
  static constexpr char kHex[] = "0123456789ABCDEF";
  for (int b = 0; b < 256; ++b) {
    const char spelled[6] = {'<', '0', 'x', kHex[b >> 4], kHex[b & 15], '>'};
    int32_t id = lookup(std::string_view(spelled, 6));
    const char raw = static_cast<char>(b);
    if (id < 0) id = lookup(std::string_view(&raw, 1));  // else the byte itself, as llama.cpp
    byte_token_[b] = id;
  }

  auto valid = [&](int32_t id) { return id >= 0 && static_cast<size_t>(id) < n; };
  bos_ = valid(v.bos_id) ? v.bos_id : -1;
  eos_ = valid(v.eos_id) ? v.eos_id : -1;
  if (add_bos_ && bos_ < 0) {
    throw Error(
        "SentencePiece vocabulary: add_bos_token is set but the BOS id (tokenizer.ggml.bos_token_id) is "
        "not a token");
  }
  if (add_eos_ && eos_ < 0) {
    throw Error(
        "SentencePiece vocabulary: add_eos_token is set but the EOS id (tokenizer.ggml.eos_token_id) is "
        "not a token");
  }
}

int32_t SpmTokenizer::lookup(std::string_view piece) const {
  auto it = token_to_id_.find(piece);
  return it != token_to_id_.end() ? it->second : -1;
}

size_t SpmTokenizer::n_byte_tokens() const {
  size_t k = 0;
  for (int32_t t : types_) k += t == type_of(TokenType::BYTE);
  return k;
}

void SpmTokenizer::split_specials(std::string_view text, bool parse_special,
                                  std::vector<Fragment>& frags) const {
  frags.clear();
  if (text.empty()) return;
  frags.push_back({0, text.size(), -1});
  std::vector<Fragment> next;
  for (int32_t id : specials_) {
    const int32_t t = types_[id];
    if (!parse_special && (t == type_of(TokenType::CONTROL) || t == type_of(TokenType::UNKNOWN))) continue;
    const std::string_view tok = pieces_[id];
    if (text.find(tok) == std::string_view::npos) continue;
    next.clear();
    for (const Fragment& f : frags) {
      if (f.token >= 0) {
        next.push_back(f);
        continue;
      }
      const size_t end = f.offset + f.length;
      const std::string_view window = text.substr(0, end);
      size_t pos = f.offset;
      for (size_t m; (m = window.find(tok, pos)) != std::string_view::npos; pos = m + tok.size()) {
        if (m > pos) next.push_back({pos, m - pos, -1});
        next.push_back({m, tok.size(), id});
      }
      if (pos < end) next.push_back({pos, end - pos, -1});
    }
    frags.swap(next);
  }
}

void SpmTokenizer::tokenize_escaped(std::string_view text, std::vector<int32_t>& out) const {
  if (text.empty()) return;
  if (text.size() >= (size_t{1} << 31))
    throw Error("tokenizer: text of " + std::to_string(text.size()) + " bytes is too long");
  std::vector<Symbol> sym;
  sym.reserve(text.size());
  std::vector<int32_t> starts = {0};  // first symbol of each independent segment
  for (size_t off = 0; off < text.size();) {
    const size_t len = std::min(utf8_len(static_cast<unsigned char>(text[off])), text.size() - off);
    const auto i = static_cast<int32_t>(sym.size());
    // A "▁" that does not follow one starts a new segment when no token spans such a place.
    const bool cut = words_independent_ && i > 0 && text.compare(off, len, kSpace) == 0 &&
                     (off < kSpace.size() || text.compare(off - kSpace.size(), kSpace.size(), kSpace) != 0);
    if (cut) {
      sym.back().next = -1;
      starts.push_back(i);
    }
    sym.push_back({cut ? -1 : i - 1, off + len == text.size() ? -1 : i + 1, off, len});
    off += len;
  }

  std::vector<Bigram> storage;
  std::priority_queue<Bigram, std::vector<Bigram>, BigramOrder> queue(BigramOrder{}, std::move(storage));
  auto try_pair = [&](int32_t l, int32_t r) {
    if (l < 0 || r < 0) return;
    const size_t len = sym[l].length + sym[r].length;
    if (len > max_piece_) return;
    const int32_t id = lookup(text.substr(sym[l].offset, len));
    if (id >= 0) queue.push({scores_[id], l, r, len});
  };

  for (const int32_t first : starts) {
    for (int32_t i = first; sym[i].next >= 0; i = sym[i].next) try_pair(i, sym[i].next);
    while (!queue.empty()) {
      const Bigram b = queue.top();
      queue.pop();
      Symbol& l = sym[b.left];
      Symbol& r = sym[b.right];
      // Stale: one side was merged away or grew since the pair was queued.
      if (l.length == 0 || r.length == 0 || l.length + r.length != b.length) continue;
      l.length += r.length;
      r.length = 0;
      l.next = r.next;
      if (r.next >= 0) sym[r.next].prev = b.left;
      try_pair(l.prev, b.left);
      try_pair(b.left, l.next);
    }

    // Every merged symbol is a vocabulary entry; a single character may not be: its bytes then.
    for (int32_t i = first; i != -1; i = sym[i].next) {
      const std::string_view piece = text.substr(sym[i].offset, sym[i].length);
      const int32_t id = lookup(piece);
      if (id >= 0) {
        out.push_back(id);
        continue;
      }
      for (unsigned char c : piece) {
        if (byte_token_[c] < 0) {
          static constexpr char kHex[] = "0123456789ABCDEF";
          throw Error(std::string("tokenizer: the vocabulary has no byte token <0x") + kHex[c >> 4] +
                      kHex[c & 15] + "> for a character it cannot spell (SentencePiece byte fallback)");
        }
        out.push_back(byte_token_[c]);
      }
    }
  }
}

std::vector<int32_t> SpmTokenizer::encode(std::string_view text, bool add_special, bool parse_special) const {
  std::vector<int32_t> out;
  out.reserve(text.size() / 3 + 2);
  if (add_special && add_bos_) out.push_back(bos_);
  std::vector<Fragment> frags;
  split_specials(text, parse_special, frags);
  bool after_special = true;  // the start of the text counts as following a special token
  std::string escaped;
  for (const Fragment& f : frags) {
    if (f.token >= 0) {
      out.push_back(f.token);
      after_special = true;
      continue;
    }
    escaped.clear();
    if (add_space_prefix_ && after_special) escaped += kSpace;
    for (char c : text.substr(f.offset, f.length)) {
      if (c == ' ') {
        escaped += kSpace;
      } else {
        escaped += c;
      }
    }
    tokenize_escaped(escaped, out);
    after_special = false;
  }
  if (add_special && add_eos_) out.push_back(eos_);
  return out;
}

std::string SpmTokenizer::token_bytes(int32_t id) const {
  if (id < 0 || static_cast<size_t>(id) >= pieces_.size()) {
    throw Error("token id " + std::to_string(id) + " is outside the vocabulary");
  }
  const std::string& p = pieces_[id];
  switch (static_cast<TokenType>(types_[id])) {
    case TokenType::NORMAL: {
      std::string s;
      s.reserve(p.size());
      for (size_t i = 0; i < p.size();) {
        if (p.compare(i, kSpace.size(), kSpace) == 0) {
          s += ' ';
          i += kSpace.size();
        } else {
          s += p[i++];
        }
      }
      return s;
    }
    case TokenType::BYTE:
      return std::string(1, static_cast<char>(parse_byte_piece(p)));
    case TokenType::CONTROL:
    case TokenType::UNKNOWN:
    case TokenType::USER_DEFINED:
      return p;
    default:  // unused, undefined: nothing, as llama.cpp
      return {};
  }
}

std::string SpmTokenizer::decode(const std::vector<int32_t>& ids, bool keep_special) const {
  std::string out;
  bool strip_space = add_space_prefix_;  // only ever the first token's
  for (int32_t id : ids) {
    if (id < 0 || static_cast<size_t>(id) >= pieces_.size()) {
      throw Error("decode: token id " + std::to_string(id) + " is outside the vocabulary (" +
                  std::to_string(pieces_.size()) + " tokens)");
    }
    const int32_t t = types_[id];
    const bool hidden =
        !keep_special && (t == type_of(TokenType::CONTROL) || t == type_of(TokenType::UNKNOWN));
    if (!hidden) {
      const std::string piece = token_bytes(id);
      out.append(piece, strip_space && !piece.empty() && piece[0] == ' ' ? 1 : 0);
    }
    strip_space = false;
  }
  return out;
}

}  // namespace kvd
