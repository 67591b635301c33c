// libFuzzer target for the GGUF reader: parses the input as a GGUF image and reads every metadata value
// and every tensor byte, dequantizes the first blocks of every tensor, runs every tensor's first rows
// through the matmul kernels of its type (plain, decode with fp32 and int8 activations, GEMM), then builds
// the tokenizer from its tokenizer.ggml.* keys (byte-level BPE or SentencePiece) and round-trips a few
// texts through it. Only kvd::Error may escape; anything else (a crash, a sanitizer report, another
// exception) is a bug.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "gguf/gguf.h"
#include "kernels/cpu/matmul_internal.h"
#include "kernels/kernels.h"
#include "tokenizer/tokenizer.h"
#include "util/thread_pool.h"

namespace {

// Reads a value through every accessor and walks arrays; the sum keeps the reads from being optimized out.
uint64_t touch(const kvd::gguf::Value& v) {
  uint64_t h = v.to_string(4).size();
  try {
    h += static_cast<uint64_t>(v.as_int());
  } catch (const kvd::Error&) {
  }
  try {
    h += static_cast<uint64_t>(v.as_float() > 0);
  } catch (const kvd::Error&) {
  }
  try {
    h += v.as_bool();
  } catch (const kvd::Error&) {
  }
  try {
    h += v.as_string().size();
  } catch (const kvd::Error&) {
  }
  try {
    for (const kvd::gguf::Value& e : v.as_array()) h += touch(e);
  } catch (const kvd::Error&) {
  }
  return h;
}

// Tokenizer from the file's vocabulary (when it has one): encode texts with specials, spaces, bytes
// that need byte fallback and the input's own tail, and decode the ids again.
uint64_t touch_tokenizer(const kvd::gguf::File& f, const uint8_t* data, size_t size) {
  if (!f.find("tokenizer.ggml.model")) return 0;
  uint64_t h = 0;
  try {
    const kvd::Tokenizer tok(kvd::vocab_from_gguf(f));
    const std::string tail(reinterpret_cast<const char*>(data) + size - std::min<size_t>(size, 48),
                           std::min<size_t>(size, 48));
    for (const std::string& text :
         {std::string("<s>Hello  world\n\t\xC3\xA9 <|sep|>\xF0\x9F\x98\x80 ab"), tail}) {
      for (bool special : {false, true}) {
        const std::vector<int32_t> ids = tok.encode(text, special, special);
        h += ids.size() + tok.decode(ids, special).size();
        for (int32_t id : ids) h += tok.token_bytes(id).size();
      }
    }
    h += tok.summary().size();
  } catch (const kvd::Error&) {
  }
  return h;
}

// The first rows (at most 8, at most 64 Ki elements in all) of a tensor as a weight matrix of dims[0]
// columns, multiplied with 1 token (the decode kernels, fp32 and int8 activations) and kGemmMinTokens
// tokens (the GEMM) by the fast kernels and by the plain reference. Each kernel reads rows * row_bytes
// bytes from t.data: no more than the n_bytes the reader checked against the file size.
uint64_t matmul_rows(const kvd::gguf::TensorInfo& t, kvd::ThreadPool& pool) {
  const kvd::gguf::BlockInfo bi = kvd::gguf::block_info(t.type);
  const auto cols = static_cast<int64_t>(t.dims[0]);
  if (cols > (int64_t{1} << 16)) return 0;
  const int64_t rows = std::min<int64_t>({static_cast<int64_t>(t.n_elements) / cols, 8, (1 << 16) / cols});
  kvd::WeightView w;
  w.type = t.type;
  w.data = t.data;
  w.rows = rows;
  w.cols = cols;
  w.row_bytes = static_cast<size_t>(cols / bi.elems) * bi.bytes;
  const int64_t nt = kvd::cpu::kGemmMinTokens;
  std::vector<float> x(static_cast<size_t>(nt * cols)), y(static_cast<size_t>(nt * rows)), y_ref(y.size());
  for (size_t i = 0; i < x.size(); ++i) x[i] = static_cast<float>(static_cast<int>(i % 17) - 8) * 0.125f;
  uint64_t h = 0;
  kvd::ref::matmul(w, x.data(), y_ref.data(), nt);
  for (int64_t n : {int64_t{1}, nt}) {
    kvd::cpu::matmul(w, x.data(), y.data(), n, pool, kvd::ActQuant::F32);
    for (int64_t i = 0; i < n * rows; ++i) h += y[static_cast<size_t>(i)] == y_ref[static_cast<size_t>(i)];
  }
  if (cols % 32 == 0) {
    kvd::cpu::matmul(w, x.data(), y.data(), 1, pool, kvd::ActQuant::Q8);
    for (int64_t i = 0; i < rows; ++i) h += y[static_cast<size_t>(i)] > 0;
  }
  return h;
}

volatile uint64_t g_sink;

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static kvd::ThreadPool pool(2);
  try {
    const auto f = kvd::gguf::File::parse(data, size, "fuzz.gguf");
    uint64_t h = f->version() + f->alignment();
    for (const auto& [key, v] : f->metadata()) {
      h += key.size() + touch(v);
      const kvd::gguf::Value* found = f->find(key);
      h += found != nullptr;
    }
    for (const kvd::gguf::TensorInfo& t : f->tensors()) {
      h += f->tensor(t.name).n_elements;
      h += kvd::gguf::block_info(t.type).bytes + kvd::gguf::tensor_type_name(t.type)[0];
      for (uint64_t i = 0; i < t.n_bytes; ++i) h += t.data[i];
      // Decode the first blocks of the tensor (every supported type) with the plain and the SIMD
      // dequantizer: the block reads must stay inside the bytes the reader vouched for.
      const kvd::gguf::BlockInfo bi = kvd::gguf::block_info(t.type);
      const uint64_t n = std::min<uint64_t>(t.n_elements, 4 * 256) / bi.elems * bi.elems;
      std::vector<float> a(n), b(n);
      kvd::ref::dequantize_row(t.type, t.data, a.data(), static_cast<int64_t>(n));
      kvd::cpu::dequantize_row_fast(t.type, t.data, b.data(), static_cast<int64_t>(n));
      for (uint64_t i = 0; i < n; ++i) h += a[i] == b[i];
      h += matmul_rows(t, pool);
    }
    h += static_cast<uint64_t>(f->get_int("general.alignment", 0));
    h += touch_tokenizer(*f, data, size);
    g_sink = h;
  } catch (const kvd::Error&) {
  }
  return 0;
}
