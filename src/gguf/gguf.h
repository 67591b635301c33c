// GGUF (v2, v3) reader: maps the file, parses metadata and the tensor table, and hands out
// bounds-checked views. Every read is checked against the file size; any problem throws kvd::Error
// with a one-line message naming the file and what is wrong.
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "util/error.h"

namespace kvd::gguf {

// clang-format off
// Metadata value types, numbered as in the GGUF specification.
enum class ValueType : uint32_t {
  UINT8 = 0, INT8 = 1, UINT16 = 2, INT16 = 3, UINT32 = 4, INT32 = 5, FLOAT32 = 6, BOOL = 7,
  STRING = 8, ARRAY = 9, UINT64 = 10, INT64 = 11, FLOAT64 = 12,
};

// Tensor data types, numbered as in ggml. Only the listed ones are supported; others are an error.
enum class TensorType : uint32_t {
  F32 = 0, F16 = 1, Q4_0 = 2, Q4_1 = 3, Q5_0 = 6, Q5_1 = 7, Q8_0 = 8, Q2_K = 10, Q3_K = 11, Q4_K = 12,
  Q5_K = 13, Q6_K = 14, IQ4_NL = 20, IQ4_XS = 23, BF16 = 30,
};
// clang-format on

// "uint8", "string", "array", ...; "unknown" for numbers outside the specification.
const char* value_type_name(ValueType t);

// "F32", "Q4_K", ...; also names ggml types this reader does not support, "unknown" otherwise.
const char* tensor_type_name(TensorType t);
// Elements per block and bytes per block of a tensor type.
struct BlockInfo {
  uint32_t elems;
  uint32_t bytes;
};
BlockInfo block_info(TensorType t);  // throws kvd::Error for unsupported types
bool tensor_type_supported(uint32_t raw);
// "F32, F16, BF16, Q8_0, ..." (the supported types, for messages).
const char* supported_tensor_types();
// Block size of any ggml type number this reader knows by name (supported or not), e.g. IQ2_XXS; nullopt
// for numbers it does not know.
std::optional<BlockInfo> ggml_block_info(uint32_t raw);

struct Value;
using Array = std::vector<Value>;
// One metadata value. Arrays of scalars and strings hold their elements as Values (nested arrays too).
struct Value {
  ValueType type = ValueType::UINT8;
  std::variant<uint64_t, int64_t, double, bool, std::string, std::shared_ptr<Array>> data;
  ValueType array_type = ValueType::UINT8;  // element type when type == ARRAY
  // Where the value came from, e.g. "model.gguf: metadata key 'llama.block_count'", so that accessor
  // errors name the file and key. Shared by all elements of an array; null for values built by hand.
  std::shared_ptr<const std::string> origin;

  int64_t as_int() const;   // any integer type (throws kvd::Error otherwise)
  double as_float() const;  // any numeric type
  bool as_bool() const;
  const std::string& as_string() const;
  const Array& as_array() const;
  std::string to_string(size_t max_items = 8) const;  // for printing
};

struct TensorInfo {
  std::string name;
  std::vector<uint64_t> dims;  // ggml order: dims[0] is the contiguous (row) length
  TensorType type = TensorType::F32;
  uint64_t offset = 0;  // relative to the data section
  uint64_t n_elements = 0;
  uint64_t n_bytes = 0;
  const uint8_t* data = nullptr;  // points into the mapping, inside the file (checked)
  // False only in files opened with any_type for a type this reader cannot decode (then `type` holds the
  // raw ggml number, which block_info rejects; n_bytes and the bounds come from ggml_block_info).
  bool supported = true;
};

class File {
 public:
  // Maps (or, with use_mmap false, reads into memory this process owns, as llama.cpp's --no-mmap) and
  // parses the file at `path`. Throws kvd::Error on any problem.
  // any_type: accept tensors of every ggml type known by name (for `kvdial info`), marking the ones this
  // reader cannot decode instead of failing on them.
  static std::unique_ptr<File> open(const std::string& path, bool use_mmap = true, bool any_type = false);
  // Parses an in-memory image (used by tests and the fuzzer); the buffer must outlive the File.
  static std::unique_ptr<File> parse(const uint8_t* data, size_t size, const std::string& name,
                                     bool any_type = false);
  ~File();
  File(const File&) = delete;
  File& operator=(const File&) = delete;

  uint32_t version() const { return version_; }
  uint64_t alignment() const { return alignment_; }
  size_t file_size() const { return size_; }
  const std::string& path() const { return name_; }

  const std::map<std::string, Value>& metadata() const { return kv_; }
  const Value* find(std::string_view key) const;
  // Required key of the given kind: throws kvd::Error naming the key when missing or of wrong type.
  const Value& get(std::string_view key) const;
  int64_t get_int(std::string_view key) const { return get(key).as_int(); }
  int64_t get_int(std::string_view key, int64_t fallback) const;
  double get_float(std::string_view key, double fallback) const;
  bool get_bool(std::string_view key, bool fallback) const;
  std::string get_string(std::string_view key, const std::string& fallback) const;

  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  const TensorInfo* find_tensor(std::string_view name) const;
  const TensorInfo& tensor(std::string_view name) const;  // throws when missing

 private:
  File() = default;
  void parse_all(bool any_type);

  std::string name_;
  const uint8_t* base_ = nullptr;
  size_t size_ = 0;
  void* mapping_ = nullptr;  // non-null when we own an mmap
  struct FreeBytes {
    void operator()(uint8_t* p) const { std::free(p); }
  };
  std::unique_ptr<uint8_t, FreeBytes> owned_;  // the file's bytes when read instead of mapped
  uint32_t version_ = 0;
  uint64_t alignment_ = 32;
  std::map<std::string, Value> kv_;
  std::vector<TensorInfo> tensors_;
  std::map<std::string, size_t, std::less<>> tensor_index_;
};

}  // namespace kvd::gguf
