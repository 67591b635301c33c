// GGUF (v2, v3) reader: maps the file read-only, then parses the header, the metadata and the tensor
// table with every read checked against the file size and all size arithmetic checked for overflow.
// Any problem becomes a kvd::Error with one line: "<file>: <what is wrong>".
#include "gguf/gguf.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <charconv>
#include <cstdio>
#include <cstring>
#include <limits>
#include <system_error>
#include <utility>

namespace kvd::gguf {
namespace {

constexpr uint64_t kDefaultAlignment = 32;
constexpr int kMaxArrayDepth = 8;  // arrays of arrays nest at most this deep
// Each element becomes a Value of about 64 bytes, so a file of 1-byte elements would need 64 times its size
// in memory. Real vocabularies have well under a million entries; this caps memory at about 1 GiB.
constexpr uint64_t kMaxTotalElements = uint64_t{1} << 24;
constexpr uint32_t kMaxDims = 4;
constexpr uint32_t kMaxValueType = static_cast<uint32_t>(ValueType::FLOAT64);
constexpr size_t kHeaderBytes = 4 + 4 + 8 + 8;  // magic, version, tensor count, kv count
// Smallest possible encodings, used to reject counts that could not fit in the file before allocating.
// Keys and tensor names are never empty.
constexpr uint64_t kMinKvBytes = 8 + 1 + 4 + 1;  // key length and key, value type, value
constexpr uint64_t kMinTensorInfoBytes =
    8 + 1 + 4 + 8 + 4 + 8;  // name length and name, n_dims, dim, type, offset

// Bytes from the file shown in a message: non-printable bytes escaped so the message stays one line.
std::string printable(std::string_view s, size_t max_len = 96) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (i == max_len) {
      out += "...";
      break;
    }
    const auto c = static_cast<unsigned char>(s[i]);
    if (c >= 0x20 && c < 0x7f && c != '\\' && c != '\'') {
      out += static_cast<char>(c);
    } else {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02x", c);
      out += buf;
    }
  }
  return out;
}

std::string quoted(std::string_view s) { return "'" + printable(s) + "'"; }

std::string num(uint64_t v) { return std::to_string(v); }

// ggml's names for its type numbers, including those this reader rejects (for the error message).
const char* ggml_type_name(uint32_t raw) {
  static constexpr const char* kNames[] = {
      "F32",    "F16",   "Q4_0",  "Q4_1",   nullptr, nullptr, "Q5_0",    "Q5_1",   "Q8_0",    "Q8_1",
      "Q2_K",   "Q3_K",  "Q4_K",  "Q5_K",   "Q6_K",  "Q8_K",  "IQ2_XXS", "IQ2_XS", "IQ3_XXS", "IQ1_S",
      "IQ4_NL", "IQ3_S", "IQ2_S", "IQ4_XS", "I8",    "I16",   "I32",     "I64",    "F64",     "IQ1_M",
      "BF16",   nullptr, nullptr, nullptr,  "TQ1_0", "TQ2_0", nullptr,   nullptr,  nullptr,   "MXFP4",
  };
  if (raw >= std::size(kNames) || kNames[raw] == nullptr) return nullptr;
  return kNames[raw];
}

bool is_unsigned(ValueType t) {
  return t == ValueType::UINT8 || t == ValueType::UINT16 || t == ValueType::UINT32 || t == ValueType::UINT64;
}
bool is_signed(ValueType t) {
  return t == ValueType::INT8 || t == ValueType::INT16 || t == ValueType::INT32 || t == ValueType::INT64;
}
bool is_float(ValueType t) { return t == ValueType::FLOAT32 || t == ValueType::FLOAT64; }

// Smallest number of bytes one value of this type takes in the file.
uint64_t min_encoded_size(ValueType t) {
  switch (t) {
    case ValueType::UINT8:
    case ValueType::INT8:
    case ValueType::BOOL:
      return 1;
    case ValueType::UINT16:
    case ValueType::INT16:
      return 2;
    case ValueType::UINT32:
    case ValueType::INT32:
    case ValueType::FLOAT32:
      return 4;
    case ValueType::UINT64:
    case ValueType::INT64:
    case ValueType::FLOAT64:
    case ValueType::STRING:  // the length
      return 8;
    case ValueType::ARRAY:  // element type and length
      return 12;
  }
  return 1;
}

std::string type_desc(const Value& v) {
  std::string s = value_type_name(v.type);
  if (v.type == ValueType::ARRAY) s += std::string(" of ") + value_type_name(v.array_type);
  return s;
}

[[noreturn]] void type_error(const Value& v, const char* expected) {
  const std::string where = v.origin ? *v.origin : std::string("metadata value");
  throw Error(where + " has type " + type_desc(v) + ", expected " + expected);
}

// What parsing produces; moved into the File once everything checked out.
struct Parsed {
  uint32_t version = 0;
  uint64_t alignment = kDefaultAlignment;
  std::map<std::string, Value> kv;
  std::vector<TensorInfo> tensors;
  std::map<std::string, size_t, std::less<>> tensor_index;
};

class Parser {
 public:
  Parser(const uint8_t* base, size_t size, const std::string& name, bool any_type)
      : base_(base), size_(size), name_(name), any_type_(any_type) {}

  Parsed run() {
    Parsed out;
    header(out);
    for (uint64_t i = 0; i < kv_count_; ++i) key_value(out, i);
    alignment(out);
    for (uint64_t i = 0; i < tensor_count_; ++i) tensor_info(out, i);
    data_section(out);
    return out;
  }

 private:
  [[noreturn]] void fail(const std::string& msg) const { throw Error(name_ + ": " + msg); }

  // The item being read, e.g. "metadata key #3 'general.name'[5]", for messages.
  std::string where() const {
    std::string w = where_;
    for (uint64_t i : elem_path_) w += "[" + num(i) + "]";
    return w;
  }

  uint64_t remaining() const { return size_ - pos_; }

  // `what` and `what2` together name the field; two parts so that no string is built unless it fails.
  void need(uint64_t n, const char* what, const char* what2 = "") const {
    if (n > remaining()) {
      fail("truncated: " + where() + " " + what + what2 + " (" + num(n) +
           " bytes) runs past end of file (offset " + num(pos_) + ", file size " + num(size_) + ")");
    }
  }

  // Little-endian read of an n-byte unsigned integer, whatever the host byte order.
  uint64_t read_le(unsigned n, const char* what, const char* what2 = "") {
    need(n, what, what2);
    uint64_t v = 0;
    for (unsigned i = 0; i < n; ++i) v |= static_cast<uint64_t>(base_[pos_ + i]) << (8 * i);
    pos_ += n;
    return v;
  }
  uint8_t u8(const char* what) { return static_cast<uint8_t>(read_le(1, what)); }
  uint16_t u16(const char* what) { return static_cast<uint16_t>(read_le(2, what)); }
  uint32_t u32(const char* what) { return static_cast<uint32_t>(read_le(4, what)); }
  uint64_t u64(const char* what) { return read_le(8, what); }

  std::string str(const char* what) {
    const size_t start = pos_;
    const uint64_t len = read_le(8, what, " length");
    if (len > remaining()) {
      fail("truncated: " + where() + " " + what + " length " + num(len) + " runs past end of file (offset " +
           num(start) + ", file size " + num(size_) + ")");
    }
    std::string s(reinterpret_cast<const char*>(base_ + pos_), static_cast<size_t>(len));
    pos_ += static_cast<size_t>(len);
    return s;
  }

  void header(Parsed& out) {
    if (size_ == 0) fail("empty file");
    static constexpr char kMagic[4] = {'G', 'G', 'U', 'F'};
    const size_t n = std::min<size_t>(size_, 4);
    if (std::memcmp(base_, kMagic, n) != 0) {
      fail("not a GGUF file: bad magic " + quoted(std::string_view(reinterpret_cast<const char*>(base_), n)) +
           " (expected 'GGUF')");
    }
    if (size_ < 4) fail("truncated: file is " + num(size_) + " bytes, shorter than the GGUF magic");
    where_ = "header";
    pos_ = 4;
    out.version = u32("version");
    if (out.version != 2 && out.version != 3) {
      // A big-endian writer puts the version's bytes the other way round.
      if (out.version == 0x02000000 || out.version == 0x03000000) {
        fail("unsupported GGUF version " + num(out.version) +
             ": this looks like a big-endian file; only little-endian files are supported");
      }
      fail("unsupported GGUF version " + num(out.version) + " (only versions 2 and 3 are supported)");
    }
    if (size_ < kHeaderBytes) {
      fail("truncated: file is " + num(size_) + " bytes, shorter than the " + num(kHeaderBytes) +
           "-byte GGUF header");
    }
    tensor_count_ = u64("tensor count");
    kv_count_ = u64("metadata count");
    // Reject counts that could not possibly fit before reserving memory for them.
    const uint64_t left = remaining();
    if (kv_count_ > left / kMinKvBytes) {
      fail("absurd metadata key/value count " + num(kv_count_) + ": each needs at least " + num(kMinKvBytes) +
           " bytes but only " + num(left) + " bytes follow the header");
    }
    if (tensor_count_ > left / kMinTensorInfoBytes) {
      fail("absurd tensor count " + num(tensor_count_) + ": each tensor info needs at least " +
           num(kMinTensorInfoBytes) + " bytes but only " + num(left) + " bytes follow the header");
    }
    // Both products are at most `left` here, so the sum cannot overflow.
    if (kv_count_ * kMinKvBytes + tensor_count_ * kMinTensorInfoBytes > left) {
      fail("absurd counts: " + num(kv_count_) + " metadata key/values and " + num(tensor_count_) +
           " tensor infos need more than the " + num(left) + " bytes that follow the header");
    }
  }

  void key_value(Parsed& out, uint64_t i) {
    where_ = "metadata key #" + num(i);
    std::string key = str("name");
    if (key.empty()) fail(where_ + ": empty key name");
    where_ += " " + quoted(key);
    if (out.kv.count(key) != 0) fail(where_ + ": duplicate metadata key (it appears earlier in the file)");
    const uint32_t raw = u32("value type");
    if (raw > kMaxValueType) fail(where_ + ": unknown value type " + num(raw));
    key_quoted_ = quoted(key);
    origin_ = std::make_shared<const std::string>(name_ + ": metadata key " + key_quoted_);
    elem_origin_.reset();
    Value v = value(static_cast<ValueType>(raw), 0);
    out.kv.emplace(std::move(key), std::move(v));
  }

  // Reads one value of a known-valid type; `depth` is the number of enclosing arrays.
  Value value(ValueType t, int depth) {
    Value v;
    v.type = t;
    v.origin = depth == 0 ? origin_ : elem_origin_;
    switch (t) {
      case ValueType::UINT8:
        v.data = uint64_t{u8("uint8 value")};
        break;
      case ValueType::INT8:
        v.data = int64_t{static_cast<int8_t>(u8("int8 value"))};
        break;
      case ValueType::UINT16:
        v.data = uint64_t{u16("uint16 value")};
        break;
      case ValueType::INT16:
        v.data = int64_t{static_cast<int16_t>(u16("int16 value"))};
        break;
      case ValueType::UINT32:
        v.data = uint64_t{u32("uint32 value")};
        break;
      case ValueType::INT32:
        v.data = int64_t{static_cast<int32_t>(u32("int32 value"))};
        break;
      case ValueType::UINT64:
        v.data = u64("uint64 value");
        break;
      case ValueType::INT64:
        v.data = static_cast<int64_t>(u64("int64 value"));
        break;
      case ValueType::FLOAT32:
        v.data = double{std::bit_cast<float>(u32("float32 value"))};
        break;
      case ValueType::FLOAT64:
        v.data = std::bit_cast<double>(u64("float64 value"));
        break;
      case ValueType::BOOL: {
        const uint8_t b = u8("bool value");
        if (b > 1) fail(where() + ": invalid bool value " + num(b) + " (must be 0 or 1)");
        v.data = b == 1;
        break;
      }
      case ValueType::STRING:
        v.data = str("string");
        break;
      case ValueType::ARRAY:
        array(v, depth);
        break;
    }
    return v;
  }

  void array(Value& v, int depth) {
    if (depth >= kMaxArrayDepth) fail(where() + ": arrays nested more than " + num(kMaxArrayDepth) + " deep");
    const uint32_t raw = u32("array element type");
    if (raw > kMaxValueType) fail(where() + ": array of unknown value type " + num(raw));
    const auto et = static_cast<ValueType>(raw);
    const size_t start = pos_;
    const uint64_t n = u64("array length");
    const uint64_t min = min_encoded_size(et);
    if (n > remaining() / min) {
      fail("truncated: " + where() + " array length " + num(n) + " of " + value_type_name(et) +
           " (at least " + num(min) + " bytes each) runs past end of file (offset " + num(start) +
           ", file size " + num(size_) + ")");
    }
    total_elements_ += n;  // cannot overflow: n and the running total are both bounded by the file size
    if (total_elements_ > kMaxTotalElements) {
      fail(where() + ": array length " + num(n) + " brings the metadata to " + num(total_elements_) +
           " array elements in all, more than the limit of " + num(kMaxTotalElements));
    }
    if (!elem_origin_) {
      elem_origin_ = std::make_shared<const std::string>(name_ + ": element of metadata key " + key_quoted_);
    }
    v.array_type = et;
    auto arr = std::make_shared<Array>();
    arr->reserve(static_cast<size_t>(n));  // bounded by the file size, checked above
    elem_path_.push_back(0);
    for (uint64_t j = 0; j < n; ++j) {
      elem_path_.back() = j;
      arr->push_back(value(et, depth + 1));
    }
    elem_path_.pop_back();
    v.data = std::move(arr);
  }

  void alignment(Parsed& out) {
    where_ = "general.alignment";
    const auto it = out.kv.find("general.alignment");
    if (it == out.kv.end()) return;
    const Value& a = it->second;
    uint64_t al = 0;
    if (const auto* u = std::get_if<uint64_t>(&a.data); u && is_unsigned(a.type)) {
      al = *u;
    } else if (const auto* s = std::get_if<int64_t>(&a.data); s && is_signed(a.type) && *s >= 0) {
      al = static_cast<uint64_t>(*s);
    } else {
      fail("bad general.alignment: has type " + type_desc(a) + " value " + printable(a.to_string(2), 40) +
           ", expected a non-negative integer");
    }
    if (al == 0 || (al & (al - 1)) != 0) {
      fail("bad general.alignment " + num(al) + ": must be a non-zero power of two");
    }
    out.alignment = al;
  }

  void tensor_info(Parsed& out, uint64_t i) {
    where_ = "tensor #" + num(i);
    TensorInfo t;
    t.name = str("name");
    if (t.name.empty()) fail(where_ + ": empty tensor name");
    where_ += " " + quoted(t.name);
    const uint32_t n_dims = u32("n_dims");
    if (n_dims == 0 || n_dims > kMaxDims) {
      fail(where_ + ": n_dims " + num(n_dims) + " out of range (must be 1 to " + num(kMaxDims) + ")");
    }
    t.dims.resize(n_dims);
    uint64_t n_elements = 1;
    bool overflow = false;
    for (uint32_t d = 0; d < n_dims; ++d) {
      t.dims[d] = u64("dimension");
      if (t.dims[d] == 0) fail(where_ + ": dimension " + num(d) + " is zero");
      overflow = overflow || __builtin_mul_overflow(n_elements, t.dims[d], &n_elements);
    }
    // ggml counts elements in int64_t, so the product must fit there too.
    if (overflow || n_elements > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      std::string dims;
      for (uint64_t d : t.dims) dims += (dims.empty() ? "" : ", ") + num(d);
      fail(where_ + ": dimensions {" + dims + "} overflow the element count");
    }
    t.n_elements = n_elements;
    const uint32_t raw = u32("type");
    t.supported = tensor_type_supported(raw);
    if (!t.supported && !(any_type_ && ggml_block_info(raw))) {
      const char* known = ggml_type_name(raw);
      if (known != nullptr) {
        fail(where_ + ": unsupported tensor type " + num(raw) + " (" + known +
             "); supported: " + supported_tensor_types());
      }
      fail(where_ + ": unknown tensor type " + num(raw));
    }
    t.type = static_cast<TensorType>(raw);
    const BlockInfo bi = t.supported ? block_info(t.type) : *ggml_block_info(raw);
    if (t.dims[0] % bi.elems != 0) {
      fail(where_ + ": dims[0] = " + num(t.dims[0]) + " is not a multiple of the " +
           tensor_type_name(t.type) + " block size " + num(bi.elems));
    }
    if (__builtin_mul_overflow(n_elements / bi.elems, uint64_t{bi.bytes}, &t.n_bytes)) {
      fail(where_ + ": data size of " + num(n_elements) + " elements overflows");
    }
    t.offset = u64("data offset");
    if (t.offset % out.alignment != 0) {
      fail(where_ + ": data offset " + num(t.offset) + " is not a multiple of the alignment " +
           num(out.alignment));
    }
    if (const auto it = out.tensor_index.find(t.name); it != out.tensor_index.end()) {
      fail(where_ + ": duplicate tensor name (also tensor #" + num(it->second) + ")");
    }
    out.tensor_index.emplace(t.name, out.tensors.size());
    out.tensors.push_back(std::move(t));
  }

  void data_section(Parsed& out) {
    where_ = "data section";
    if (out.tensors.empty()) return;  // nothing to locate; the file may end right after the header
    // Round the header end up to the alignment without overflowing.
    uint64_t start = pos_;
    if (const uint64_t r = start % out.alignment; r != 0) {
      if (__builtin_add_overflow(start, out.alignment - r, &start) || start > size_) {
        fail("truncated: data section starts past end of file (header ends at offset " + num(pos_) +
             ", alignment " + num(out.alignment) + ", file size " + num(size_) + ")");
      }
    }
    const uint64_t avail = size_ - start;
    for (size_t i = 0; i < out.tensors.size(); ++i) {
      TensorInfo& t = out.tensors[i];
      if (t.offset > avail || t.n_bytes > avail - t.offset) {
        fail("truncated: tensor #" + num(i) + " " + quoted(t.name) + " data (" + num(t.n_bytes) +
             " bytes at data offset " + num(t.offset) + ", file offset " + num(start) + " + " +
             num(t.offset) + ") runs past end of file (file size " + num(size_) + ")");
      }
      t.data = base_ + start + t.offset;
    }
    // Tensors must not share bytes: sort by offset and compare neighbours.
    std::vector<size_t> order(out.tensors.size());
    for (size_t i = 0; i < order.size(); ++i) order[i] = i;
    std::sort(order.begin(), order.end(), [&](size_t a, size_t b) {
      return std::pair(out.tensors[a].offset, a) < std::pair(out.tensors[b].offset, b);
    });
    for (size_t k = 1; k < order.size(); ++k) {
      const TensorInfo& a = out.tensors[order[k - 1]];
      const TensorInfo& b = out.tensors[order[k]];
      if (a.offset + a.n_bytes > b.offset) {  // both are inside the file: no overflow
        fail("tensor #" + num(order[k - 1]) + " " + quoted(a.name) + " data (data offsets " + num(a.offset) +
             " to " + num(a.offset + a.n_bytes) + ") overlaps tensor #" + num(order[k]) + " " +
             quoted(b.name) + " (from data offset " + num(b.offset) + ")");
      }
    }
  }

  const uint8_t* base_;
  size_t size_;
  const std::string& name_;
  bool any_type_;
  size_t pos_ = 0;
  uint64_t kv_count_ = 0;
  uint64_t tensor_count_ = 0;
  uint64_t total_elements_ = 0;  // array elements read so far, over all keys
  std::string where_;
  std::vector<uint64_t> elem_path_;            // indices of the array elements being read, innermost last
  std::string key_quoted_;                     // the current key, as shown in messages
  std::shared_ptr<const std::string> origin_;  // of the current key's value
  std::shared_ptr<const std::string> elem_origin_;  // of its array elements, made on first use
};

// Closes a file descriptor on every path out of File::open.
struct Fd {
  int fd;
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
};

std::string errno_text(int err) { return std::error_code(err, std::generic_category()).message(); }

}  // namespace

const char* value_type_name(ValueType t) {
  switch (t) {
    case ValueType::UINT8:
      return "uint8";
    case ValueType::INT8:
      return "int8";
    case ValueType::UINT16:
      return "uint16";
    case ValueType::INT16:
      return "int16";
    case ValueType::UINT32:
      return "uint32";
    case ValueType::INT32:
      return "int32";
    case ValueType::FLOAT32:
      return "float32";
    case ValueType::BOOL:
      return "bool";
    case ValueType::STRING:
      return "string";
    case ValueType::ARRAY:
      return "array";
    case ValueType::UINT64:
      return "uint64";
    case ValueType::INT64:
      return "int64";
    case ValueType::FLOAT64:
      return "float64";
  }
  return "unknown";
}

const char* tensor_type_name(TensorType t) {
  const char* name = ggml_type_name(static_cast<uint32_t>(t));
  return name != nullptr ? name : "unknown";
}

BlockInfo block_info(TensorType t) {
  switch (t) {
    case TensorType::F32:
      return {1, 4};
    case TensorType::F16:
      return {1, 2};
    case TensorType::BF16:
      return {1, 2};
    case TensorType::Q4_0:
      return {32, 18};
    case TensorType::Q4_1:
      return {32, 20};
    case TensorType::Q8_0:
      return {32, 34};
    case TensorType::Q5_0:
      return {32, 22};
    case TensorType::Q5_1:
      return {32, 24};
    case TensorType::IQ4_NL:
      return {32, 18};
    case TensorType::Q2_K:
      return {256, 84};
    case TensorType::Q3_K:
      return {256, 110};
    case TensorType::Q4_K:
      return {256, 144};
    case TensorType::Q5_K:
      return {256, 176};
    case TensorType::Q6_K:
      return {256, 210};
    case TensorType::IQ4_XS:
      return {256, 136};
  }
  throw Error("block_info: unsupported tensor type " + num(static_cast<uint32_t>(t)) + " (" +
              tensor_type_name(t) + ")");
}

bool tensor_type_supported(uint32_t raw) {
  switch (static_cast<TensorType>(raw)) {
    case TensorType::F32:
    case TensorType::F16:
    case TensorType::BF16:
    case TensorType::Q4_0:
    case TensorType::Q4_1:
    case TensorType::Q8_0:
    case TensorType::Q5_0:
    case TensorType::Q5_1:
    case TensorType::IQ4_NL:
    case TensorType::Q2_K:
    case TensorType::Q3_K:
    case TensorType::Q4_K:
    case TensorType::Q5_K:
    case TensorType::Q6_K:
    case TensorType::IQ4_XS:
      return true;
  }
  return false;
}

std::optional<BlockInfo> ggml_block_info(uint32_t raw) {
  // ggml's block sizes (elements, bytes) by type number (as gguf-py's GGML_QUANT_SIZES); {0, 0}: no such
  // type, or Q8_1 (an activation format, never stored in model files).
  static constexpr BlockInfo kBlocks[] = {
      {1, 4},    {1, 2},    {32, 18},  {32, 20},   {0, 0},     {0, 0},     {32, 22},   {32, 24},
      {32, 34},  {0, 0},    {256, 84}, {256, 110}, {256, 144}, {256, 176}, {256, 210}, {256, 292},
      {256, 66}, {256, 74}, {256, 98}, {256, 50},  {32, 18},   {256, 110}, {256, 82},  {256, 136},
      {1, 1},    {1, 2},    {1, 4},    {1, 8},     {1, 8},     {256, 56},  {1, 2},     {0, 0},
      {0, 0},    {0, 0},    {256, 54}, {256, 66},  {0, 0},     {0, 0},     {0, 0},     {32, 17},
  };
  if (raw >= std::size(kBlocks) || kBlocks[raw].elems == 0 || ggml_type_name(raw) == nullptr)
    return std::nullopt;
  return kBlocks[raw];
}

const char* supported_tensor_types() {
  return "F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_NL, IQ4_XS";
}

// ---- Value ----

int64_t Value::as_int() const {
  if (const auto* u = std::get_if<uint64_t>(&data); u && is_unsigned(type)) {
    if (*u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      throw Error((origin ? *origin : std::string("metadata value")) + " value " + num(*u) +
                  " does not fit in a signed 64-bit integer");
    }
    return static_cast<int64_t>(*u);
  }
  if (const auto* s = std::get_if<int64_t>(&data); s && is_signed(type)) return *s;
  type_error(*this, "an integer");
}

double Value::as_float() const {
  if (const auto* d = std::get_if<double>(&data); d && is_float(type)) return *d;
  if (const auto* u = std::get_if<uint64_t>(&data); u && is_unsigned(type)) return static_cast<double>(*u);
  if (const auto* s = std::get_if<int64_t>(&data); s && is_signed(type)) return static_cast<double>(*s);
  type_error(*this, "a number");
}

bool Value::as_bool() const {
  if (const auto* b = std::get_if<bool>(&data); b && type == ValueType::BOOL) return *b;
  type_error(*this, "a bool");
}

const std::string& Value::as_string() const {
  if (const auto* s = std::get_if<std::string>(&data); s && type == ValueType::STRING) return *s;
  type_error(*this, "a string");
}

const Array& Value::as_array() const {
  if (const auto* a = std::get_if<std::shared_ptr<Array>>(&data); a && *a && type == ValueType::ARRAY)
    return **a;
  type_error(*this, "an array");
}

std::string Value::to_string(size_t max_items) const {
  if (const auto* d = std::get_if<double>(&data); d && is_float(type)) {
    // Shortest text that reads back to the same value, at the precision it was stored in.
    char buf[64];
    const auto r = type == ValueType::FLOAT32 ? std::to_chars(buf, buf + sizeof buf, static_cast<float>(*d))
                                              : std::to_chars(buf, buf + sizeof buf, *d);
    return std::string(buf, r.ptr);
  }
  if (const auto* u = std::get_if<uint64_t>(&data); u && is_unsigned(type)) return num(*u);
  if (const auto* s = std::get_if<int64_t>(&data); s && is_signed(type)) return std::to_string(*s);
  if (const auto* b = std::get_if<bool>(&data); b && type == ValueType::BOOL) return *b ? "true" : "false";
  if (const auto* s = std::get_if<std::string>(&data); s && type == ValueType::STRING) {
    std::string out = "\"";
    for (char ch : *s) {
      const auto c = static_cast<unsigned char>(ch);
      if (c == '"' || c == '\\') {
        out += '\\';
        out += ch;
      } else if (c == '\n') {
        out += "\\n";
      } else if (c < 0x20 || c == 0x7f) {
        char buf[8];
        std::snprintf(buf, sizeof buf, "\\x%02x", c);
        out += buf;
      } else {
        out += ch;  // UTF-8 passes through
      }
    }
    return out + "\"";
  }
  if (const auto* a = std::get_if<std::shared_ptr<Array>>(&data); a && *a && type == ValueType::ARRAY) {
    const Array& arr = **a;
    std::string out = "[";
    for (size_t i = 0; i < arr.size() && i < max_items; ++i) {
      if (i > 0) out += ", ";
      out += arr[i].to_string(max_items);
    }
    if (arr.size() > max_items) out += (max_items > 0 ? ", ... (" : "... (") + num(arr.size()) + " items)";
    return out + "]";
  }
  return "<invalid " + type_desc(*this) + " value>";
}

// ---- File ----

std::unique_ptr<File> File::open(const std::string& path, bool use_mmap, bool any_type) {
  Fd fd{::open(path.c_str(), O_RDONLY | O_CLOEXEC)};
  if (fd.fd < 0) throw Error(path + ": cannot open: " + errno_text(errno));
  struct stat st {};
  if (::fstat(fd.fd, &st) != 0) throw Error(path + ": cannot stat: " + errno_text(errno));
  if (!S_ISREG(st.st_mode)) throw Error(path + ": not a regular file");
  if (st.st_size == 0) throw Error(path + ": empty file");
  if (static_cast<uint64_t>(st.st_size) > std::numeric_limits<size_t>::max()) {
    throw Error(path + ": file too large to map");
  }
  const auto size = static_cast<size_t>(st.st_size);
  std::unique_ptr<File> f(new File());  // owns the mapping or buffer from here, also if parsing throws
  if (use_mmap) {
    void* m = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd.fd, 0);
    if (m == MAP_FAILED) throw Error(path + ": cannot map: " + errno_text(errno));
    f->mapping_ = m;
    f->base_ = static_cast<const uint8_t*>(m);
  } else {
    // Pages this process touches first (on its own NUMA node), instead of the page cache's.
    f->owned_.reset(static_cast<uint8_t*>(std::aligned_alloc(64, (size + 63) / 64 * 64)));
    if (!f->owned_) throw Error(path + ": cannot allocate " + std::to_string(size) + " bytes to read it");
    for (size_t done = 0; done < size;) {
      const ssize_t got = ::pread(fd.fd, f->owned_.get() + done, size - done, static_cast<off_t>(done));
      if (got < 0 && errno == EINTR) continue;
      if (got <= 0)
        throw Error(path + ": cannot read: " + (got < 0 ? errno_text(errno) : "file shrank while reading"));
      done += static_cast<size_t>(got);
    }
    f->base_ = f->owned_.get();
  }
  f->size_ = size;
  f->name_ = path;
  f->parse_all(any_type);
  return f;
}

std::unique_ptr<File> File::parse(const uint8_t* data, size_t size, const std::string& name, bool any_type) {
  KVD_ASSERT(data != nullptr || size == 0);
  std::unique_ptr<File> f(new File());
  f->base_ = data;
  f->size_ = size;
  f->name_ = name;
  f->parse_all(any_type);
  return f;
}

File::~File() {
  if (mapping_ != nullptr) ::munmap(mapping_, size_);
}

void File::parse_all(bool any_type) {
  Parsed p = Parser(base_, size_, name_, any_type).run();
  version_ = p.version;
  alignment_ = p.alignment;
  kv_ = std::move(p.kv);
  tensors_ = std::move(p.tensors);
  tensor_index_ = std::move(p.tensor_index);
}

const Value* File::find(std::string_view key) const {
  const auto it = kv_.find(std::string(key));
  return it == kv_.end() ? nullptr : &it->second;
}

const Value& File::get(std::string_view key) const {
  const Value* v = find(key);
  if (v == nullptr) throw Error(name_ + ": missing metadata key " + quoted(key));
  return *v;
}

int64_t File::get_int(std::string_view key, int64_t fallback) const {
  const Value* v = find(key);
  return v != nullptr ? v->as_int() : fallback;
}

double File::get_float(std::string_view key, double fallback) const {
  const Value* v = find(key);
  return v != nullptr ? v->as_float() : fallback;
}

bool File::get_bool(std::string_view key, bool fallback) const {
  const Value* v = find(key);
  return v != nullptr ? v->as_bool() : fallback;
}

std::string File::get_string(std::string_view key, const std::string& fallback) const {
  const Value* v = find(key);
  return v != nullptr ? v->as_string() : fallback;
}

const TensorInfo* File::find_tensor(std::string_view name) const {
  const auto it = tensor_index_.find(name);
  return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

const TensorInfo& File::tensor(std::string_view name) const {
  const TensorInfo* t = find_tensor(name);
  if (t == nullptr) throw Error(name_ + ": missing tensor " + quoted(name));
  return *t;
}

}  // namespace kvd::gguf
