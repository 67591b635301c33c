// Plain text (e.g. WikiText-2's wiki.test.raw) cut into examples for kvdial collect -f: the whole file is
// tokenized once, the first skip_tokens tokens are dropped, and the rest is cut into runs of `chunk`
// tokens (the last one shorter), each its own sequence.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "tokenizer/tokenizer.h"

namespace kvd {

struct TextChunk {
  int index = 0;            // 1-based: the example id in collect's outputs
  int64_t first_token = 0;  // offset of its first token in the file's token stream
  std::vector<int32_t> ids;
};

// Throws kvd::Error "FILE: ..." for a file that cannot be read, is empty, or has no more than
// skip_tokens + 1 tokens; chunk must be >= 2 and skip_tokens >= 0.
std::vector<TextChunk> text_chunks(const Tokenizer& tok, const std::string& path, int64_t skip_tokens,
                                   int chunk);

}  // namespace kvd
