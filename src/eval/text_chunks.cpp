// Reading, tokenizing and chunking a plain-text file for kvdial collect -f.
#include "eval/text_chunks.h"

#include <fstream>
#include <sstream>

#include "util/error.h"

namespace kvd {

std::vector<TextChunk> text_chunks(const Tokenizer& tok, const std::string& path, int64_t skip_tokens,
                                   int chunk) {
  if (chunk < 2) throw Error("--chunk must be at least 2 tokens");
  if (skip_tokens < 0) throw Error("--skip-tokens must be >= 0");
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(path + ": cannot open file");
  std::stringstream ss;
  ss << in.rdbuf();
  if (in.bad()) throw Error(path + ": read error");
  const std::string text = ss.str();
  if (text.empty()) throw Error(path + ": empty file");
  // Special-token spellings in the text are not parsed (as perplexity does).
  const std::vector<int32_t> ids = tok.encode(text, true, false);
  if (static_cast<int64_t>(ids.size()) < skip_tokens + 2)
    throw Error(path + ": " + std::to_string(ids.size()) + " tokens, not enough to skip " +
                std::to_string(skip_tokens) + " and keep two");
  std::vector<TextChunk> out;
  for (int64_t b = skip_tokens; b + 1 < static_cast<int64_t>(ids.size()); b += chunk) {
    const int64_t e = std::min<int64_t>(b + chunk, static_cast<int64_t>(ids.size()));
    TextChunk c;
    c.index = static_cast<int>(out.size()) + 1;
    c.first_token = b;
    c.ids.assign(ids.begin() + b, ids.begin() + e);
    out.push_back(std::move(c));
  }
  return out;
}

}  // namespace kvd
