// Tests of the GGUF reader: a small in-test GGUF writer builds good files (every metadata type, nested
// arrays, several tensor types with alignment padding, v2 and v3) and broken ones (one per kind of
// problem, every truncation, byte flips, huge lengths); plus the real default model when it is present.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <bit>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <optional>
#include <string>
#include <vector>

#include "gguf/gguf.h"

namespace kvd::gguf {
namespace {

constexpr uint32_t vt(ValueType t) { return static_cast<uint32_t>(t); }
constexpr uint32_t tt(TensorType t) { return static_cast<uint32_t>(t); }

// Little-endian byte buffer, the building block of the writer.
class Bytes {
 public:
  Bytes& u8(uint8_t v) {
    b_.push_back(v);
    return *this;
  }
  Bytes& u16(uint16_t v) { return le(v, 2); }
  Bytes& u32(uint32_t v) { return le(v, 4); }
  Bytes& u64(uint64_t v) { return le(v, 8); }
  Bytes& f32(float v) { return u32(std::bit_cast<uint32_t>(v)); }
  Bytes& f64(double v) { return u64(std::bit_cast<uint64_t>(v)); }
  Bytes& chars(std::string_view s) {
    b_.insert(b_.end(), s.begin(), s.end());
    return *this;
  }
  Bytes& str(std::string_view s) { return u64(s.size()).chars(s); }
  Bytes& raw(const Bytes& o) {
    b_.insert(b_.end(), o.b_.begin(), o.b_.end());
    return *this;
  }
  Bytes& zeros(size_t n) {
    b_.resize(b_.size() + n, 0);
    return *this;
  }
  size_t size() const { return b_.size(); }
  std::vector<uint8_t>& vec() { return b_; }

 private:
  Bytes& le(uint64_t v, int n) {
    for (int i = 0; i < n; ++i) b_.push_back(static_cast<uint8_t>(v >> (8 * i)));
    return *this;
  }
  std::vector<uint8_t> b_;
};

// Payload of an array value: element type, count, then the encoded elements.
Bytes array_of(ValueType et, uint64_t n, const Bytes& elems) {
  Bytes b;
  b.u32(vt(et)).u64(n).raw(elems);
  return b;
}

// Elements and bytes per block, kept separate from the reader's own table on purpose.
std::pair<uint64_t, uint64_t> test_block(uint32_t type) {
  switch (type) {
    case 0:
      return {1, 4};
    case 1:
    case 30:
      return {1, 2};
    case 2:
      return {32, 18};
    case 3:
      return {32, 20};
    case 6:
      return {32, 22};
    case 7:
      return {32, 24};
    case 8:
      return {32, 34};
    case 20:
      return {32, 18};
    case 10:
      return {256, 84};
    case 11:
      return {256, 110};
    case 12:
      return {256, 144};
    case 13:
      return {256, 176};
    case 14:
      return {256, 210};
    case 23:
      return {256, 136};
    case 16:  // IQ2_XXS (unsupported; for the any_type test)
      return {256, 66};
    default:
      return {1, 1};
  }
}

// Data sizes above this are not written out (those tensors are meant to be rejected).
constexpr uint64_t kMaxWritten = 1 << 20;

uint64_t round_up(uint64_t x, uint64_t a) { return (x + a - 1) / a * a; }

uint8_t pattern(size_t tensor, uint64_t byte) { return static_cast<uint8_t>(tensor * 37 + byte * 7 + 1); }

struct TensorSpec {
  std::string name;
  std::vector<uint64_t> dims;
  uint32_t type = 0;
  std::optional<uint64_t> offset;  // laid out after the previous tensor when unset
  std::optional<uint32_t> n_dims;  // written instead of dims.size() when set

  uint64_t data_bytes() const {
    auto [elems, bytes] = test_block(type);
    unsigned __int128 n = 1;
    for (uint64_t d : dims) {
      n *= d;
      if (n > kMaxWritten) return 0;
    }
    if (dims.empty() || dims[0] % elems != 0) return 0;
    return static_cast<uint64_t>(n / elems * bytes);
  }
};

struct Layout {
  size_t header_end = 0;
  size_t data_start = 0;
  std::vector<uint64_t> offsets;
};

// A tiny GGUF writer. Fields can be set to wrong values to make broken files.
struct Builder {
  uint32_t version = 3;
  uint64_t alignment = 32;  // layout only; set_alignment() also writes the key
  std::optional<uint64_t> tensor_count, kv_count;
  std::vector<std::pair<std::string, Bytes>> kvs;  // key -> value type and payload
  std::vector<TensorSpec> tensors;

  Builder& kv(const std::string& key, ValueType t, const Bytes& payload) {
    return kv_raw(key, vt(t), payload);
  }
  Builder& kv_raw(const std::string& key, uint32_t type, const Bytes& payload) {
    Bytes b;
    b.u32(type).raw(payload);
    kvs.emplace_back(key, b);
    return *this;
  }
  Builder& kv_u32(const std::string& key, uint32_t v) { return kv(key, ValueType::UINT32, Bytes().u32(v)); }
  Builder& kv_str(const std::string& key, std::string_view v) {
    return kv(key, ValueType::STRING, Bytes().str(v));
  }
  Builder& set_alignment(uint64_t a) {
    alignment = a;
    return kv_u32("general.alignment", static_cast<uint32_t>(a));
  }
  Builder& tensor(const std::string& name, std::vector<uint64_t> dims, TensorType type) {
    tensors.push_back({name, std::move(dims), tt(type), std::nullopt, std::nullopt});
    return *this;
  }

  std::vector<uint8_t> build(Layout* layout = nullptr) const {
    Bytes b;
    b.chars("GGUF")
        .u32(version)
        .u64(tensor_count.value_or(tensors.size()))
        .u64(kv_count.value_or(kvs.size()));
    for (const auto& [key, payload] : kvs) b.str(key).raw(payload);
    Layout lay;
    uint64_t next = 0;
    for (const TensorSpec& t : tensors) {
      const uint64_t off = t.offset.value_or(round_up(next, alignment));
      lay.offsets.push_back(off);
      if (off < kMaxWritten) next = std::max(next, off + t.data_bytes());
    }
    for (size_t i = 0; i < tensors.size(); ++i) {
      const TensorSpec& t = tensors[i];
      b.str(t.name).u32(t.n_dims.value_or(static_cast<uint32_t>(t.dims.size())));
      for (uint64_t d : t.dims) b.u64(d);
      b.u32(t.type).u64(lay.offsets[i]);
    }
    lay.header_end = b.size();
    lay.data_start = round_up(b.size(), alignment);
    std::vector<uint8_t> out = std::move(b.vec());
    // The file ends right after the last tensor's data (so any truncation loses data).
    if (!tensors.empty()) {
      out.resize(lay.data_start + next, 0);
      for (size_t i = 0; i < tensors.size(); ++i) {
        const uint64_t n = tensors[i].data_bytes();
        if (lay.offsets[i] >= kMaxWritten) continue;
        for (uint64_t k = 0; k < n; ++k) out[lay.data_start + lay.offsets[i] + k] = pattern(i, k);
      }
    }
    if (layout != nullptr) *layout = lay;
    return out;
  }
};

// One of each metadata type plus arrays, nested arrays and a few tensors of different types.
Builder good_builder(uint32_t version = 3) {
  Builder g;
  g.version = version;
  g.kv_str("general.architecture", "llama")
      .kv_str("general.name", std::string("tiny\0model", 10))
      .kv("u8", ValueType::UINT8, Bytes().u8(255))
      .kv("i8", ValueType::INT8, Bytes().u8(0x80))
      .kv("u16", ValueType::UINT16, Bytes().u16(65535))
      .kv("i16", ValueType::INT16, Bytes().u16(0x8000))
      .kv_u32("u32", 4294967295u)
      .kv("i32", ValueType::INT32, Bytes().u32(0x80000000u))
      .kv("f32", ValueType::FLOAT32, Bytes().f32(1.5f))
      .kv("bool.t", ValueType::BOOL, Bytes().u8(1))
      .kv("bool.f", ValueType::BOOL, Bytes().u8(0))
      .kv("u64", ValueType::UINT64, Bytes().u64(std::numeric_limits<uint64_t>::max()))
      .kv("i64", ValueType::INT64, Bytes().u64(uint64_t{1} << 63))
      .kv("f64", ValueType::FLOAT64, Bytes().f64(-2.25))
      .kv_str("utf8", "h\xc3\xa9llo \"q\"\n")
      .kv_str("empty.str", "")
      .kv("arr.u8", ValueType::ARRAY, array_of(ValueType::UINT8, 3, Bytes().u8(1).u8(2).u8(3)))
      .kv("arr.i16", ValueType::ARRAY, array_of(ValueType::INT16, 2, Bytes().u16(0xffff).u16(7)))
      .kv("arr.f32", ValueType::ARRAY, array_of(ValueType::FLOAT32, 2, Bytes().f32(0.5f).f32(-1e-5f)))
      .kv("arr.i64", ValueType::ARRAY, array_of(ValueType::INT64, 1, Bytes().u64(~uint64_t{0})))
      .kv("arr.f64", ValueType::ARRAY, array_of(ValueType::FLOAT64, 1, Bytes().f64(3.0)))
      .kv("arr.bool", ValueType::ARRAY, array_of(ValueType::BOOL, 2, Bytes().u8(1).u8(0)))
      .kv("arr.str", ValueType::ARRAY, array_of(ValueType::STRING, 3, Bytes().str("a").str("").str("ccc")))
      .kv("arr.empty", ValueType::ARRAY, array_of(ValueType::UINT32, 0, Bytes()));
  // [[1, 2], [3], []] as arrays of int32.
  Bytes inner;
  inner.raw(array_of(ValueType::INT32, 2, Bytes().u32(1).u32(2)))
      .raw(array_of(ValueType::INT32, 1, Bytes().u32(3)))
      .raw(array_of(ValueType::INT32, 0, Bytes()));
  g.kv("arr.nested", ValueType::ARRAY, array_of(ValueType::ARRAY, 3, inner));
  // Eight levels of arrays (the limit), the innermost holding 42.
  Bytes deep = array_of(ValueType::UINT16, 1, Bytes().u16(42));
  for (int level = 1; level < 8; ++level) deep = array_of(ValueType::ARRAY, 1, deep);
  g.kv("arr.deep", ValueType::ARRAY, deep);
  g.set_alignment(64);
  g.tensor("token_embd.weight", {64, 3}, TensorType::Q8_0)
      .tensor("norm.weight", {5}, TensorType::F32)
      .tensor("a.f16", {3, 2}, TensorType::F16)
      .tensor("a.bf16", {7}, TensorType::BF16)
      .tensor("a.q4_0", {32, 2}, TensorType::Q4_0)
      .tensor("a.q4_1", {32}, TensorType::Q4_1)
      .tensor("a.q4_k", {256, 1, 1, 2}, TensorType::Q4_K)
      .tensor("a.q6_k", {512}, TensorType::Q6_K);
  return g;
}

std::unique_ptr<File> parse(const std::vector<uint8_t>& bytes, const std::string& name = "t.gguf") {
  return File::parse(bytes.data(), bytes.size(), name);
}

// Parses and expects a kvd::Error: one line, starting with the file name, containing `needle`.
void expect_error(const std::vector<uint8_t>& bytes, const std::string& needle) {
  try {
    parse(bytes);
    ADD_FAILURE() << "no error; expected one containing \"" << needle << "\"";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find(needle), std::string::npos) << "message: " << msg;
    EXPECT_EQ(msg.rfind("t.gguf: ", 0), 0u) << "message: " << msg;
    EXPECT_EQ(msg.find('\n'), std::string::npos) << "message: " << msg;
  }
}

std::string error_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

// Reads every value and every tensor byte, as a caller would; the point is that nothing crashes.
size_t touch(const Value& v) {
  size_t h = v.to_string(3).size();
  try {
    h += static_cast<size_t>(v.as_int());
  } catch (const Error&) {
  }
  try {
    h += static_cast<size_t>(v.as_float() != 0);
  } catch (const Error&) {
  }
  if (v.type == ValueType::ARRAY) {
    for (const Value& e : v.as_array()) h += touch(e);
  }
  return h;
}

size_t touch(const File& f) {
  size_t h = 0;
  for (const auto& [key, v] : f.metadata()) h += key.size() + touch(v);
  for (const TensorInfo& t : f.tensors()) {
    for (uint64_t i = 0; i < t.n_bytes; ++i) h += t.data[i];
    h += block_info(t.type).bytes;
  }
  return h;
}

// ---- types ----

TEST(GgufTypes, NamesBlocksAndSupport) {
  EXPECT_STREQ(tensor_type_name(TensorType::Q4_K), "Q4_K");
  EXPECT_STREQ(tensor_type_name(TensorType::BF16), "BF16");
  EXPECT_STREQ(tensor_type_name(static_cast<TensorType>(13)), "Q5_K");
  EXPECT_STREQ(tensor_type_name(static_cast<TensorType>(4)), "unknown");
  EXPECT_STREQ(tensor_type_name(static_cast<TensorType>(1000)), "unknown");
  EXPECT_STREQ(value_type_name(ValueType::FLOAT64), "float64");
  EXPECT_STREQ(value_type_name(static_cast<ValueType>(99)), "unknown");
  const std::vector<std::pair<TensorType, BlockInfo>> want = {
      {TensorType::F32, {1, 4}},      {TensorType::F16, {1, 2}},      {TensorType::BF16, {1, 2}},
      {TensorType::Q4_0, {32, 18}},   {TensorType::Q4_1, {32, 20}},   {TensorType::Q8_0, {32, 34}},
      {TensorType::Q4_K, {256, 144}}, {TensorType::Q6_K, {256, 210}}, {TensorType::Q5_0, {32, 22}},
      {TensorType::Q5_1, {32, 24}},   {TensorType::IQ4_NL, {32, 18}}, {TensorType::Q2_K, {256, 84}},
      {TensorType::Q3_K, {256, 110}}, {TensorType::Q5_K, {256, 176}}, {TensorType::IQ4_XS, {256, 136}},
  };
  for (const auto& [t, bi] : want) {
    SCOPED_TRACE(tensor_type_name(t));
    EXPECT_TRUE(tensor_type_supported(tt(t)));
    EXPECT_EQ(block_info(t).elems, bi.elems);
    EXPECT_EQ(block_info(t).bytes, bi.bytes);
  }
  int supported = 0;
  for (uint32_t raw = 0; raw < 64; ++raw) supported += tensor_type_supported(raw);
  EXPECT_EQ(supported, 15);
  EXPECT_FALSE(tensor_type_supported(0xffffffffu));
  for (uint32_t raw : {9u, 15u, 16u, 17u, 18u, 19u, 21u, 22u, 24u, 29u, 34u, 35u, 39u}) {
    SCOPED_TRACE(raw);
    EXPECT_FALSE(tensor_type_supported(raw));
    EXPECT_THROW(block_info(static_cast<TensorType>(raw)), Error);
  }
}

// ---- good files ----

TEST(GgufParse, EveryMetadataType) {
  const auto bytes = good_builder().build();
  const auto f = parse(bytes);
  EXPECT_EQ(f->version(), 3u);
  EXPECT_EQ(f->alignment(), 64u);
  EXPECT_EQ(f->file_size(), bytes.size());
  EXPECT_EQ(f->path(), "t.gguf");
  EXPECT_EQ(f->metadata().size(), 27u);

  EXPECT_EQ(f->get_string("general.architecture", ""), "llama");
  EXPECT_EQ(f->get("general.name").as_string(), std::string("tiny\0model", 10));
  EXPECT_EQ(f->get_int("u8"), 255);
  EXPECT_EQ(f->get_int("i8"), -128);
  EXPECT_EQ(f->get_int("u16"), 65535);
  EXPECT_EQ(f->get_int("i16"), -32768);
  EXPECT_EQ(f->get_int("u32"), 4294967295);
  EXPECT_EQ(f->get_int("i32"), -2147483648LL);
  EXPECT_EQ(f->get("f32").as_float(), 1.5);
  EXPECT_TRUE(f->get("bool.t").as_bool());
  EXPECT_FALSE(f->get("bool.f").as_bool());
  EXPECT_EQ(std::get<uint64_t>(f->get("u64").data), std::numeric_limits<uint64_t>::max());
  EXPECT_EQ(f->get_int("i64"), std::numeric_limits<int64_t>::min());
  EXPECT_EQ(f->get("f64").as_float(), -2.25);
  EXPECT_EQ(f->get("i8").as_float(), -128.0);  // integers are numbers too
  EXPECT_EQ(f->get_string("utf8", ""), "h\xc3\xa9llo \"q\"\n");
  EXPECT_EQ(f->get_string("empty.str", "x"), "");
  EXPECT_EQ(f->get("u8").type, ValueType::UINT8);
  EXPECT_EQ(f->get("f64").type, ValueType::FLOAT64);

  const Array& u8s = f->get("arr.u8").as_array();
  EXPECT_EQ(f->get("arr.u8").array_type, ValueType::UINT8);
  ASSERT_EQ(u8s.size(), 3u);
  EXPECT_EQ(u8s[2].as_int(), 3);
  EXPECT_EQ(f->get("arr.i16").as_array()[0].as_int(), -1);
  EXPECT_EQ(f->get("arr.f32").as_array()[1].as_float(), static_cast<double>(-1e-5f));
  EXPECT_EQ(f->get("arr.i64").as_array()[0].as_int(), -1);
  EXPECT_EQ(f->get("arr.f64").as_array()[0].as_float(), 3.0);
  EXPECT_TRUE(f->get("arr.bool").as_array()[0].as_bool());
  const Array& strs = f->get("arr.str").as_array();
  ASSERT_EQ(strs.size(), 3u);
  EXPECT_EQ(strs[0].as_string(), "a");
  EXPECT_EQ(strs[1].as_string(), "");
  EXPECT_EQ(strs[2].as_string(), "ccc");
  EXPECT_TRUE(f->get("arr.empty").as_array().empty());
  EXPECT_EQ(f->get("arr.empty").array_type, ValueType::UINT32);

  const Value& nested = f->get("arr.nested");
  EXPECT_EQ(nested.array_type, ValueType::ARRAY);
  ASSERT_EQ(nested.as_array().size(), 3u);
  EXPECT_EQ(nested.as_array()[0].array_type, ValueType::INT32);
  EXPECT_EQ(nested.as_array()[0].as_array()[1].as_int(), 2);
  EXPECT_EQ(nested.as_array()[1].as_array()[0].as_int(), 3);
  EXPECT_TRUE(nested.as_array()[2].as_array().empty());

  const Value* deep = &f->get("arr.deep");
  for (int level = 1; level < 8; ++level) {
    ASSERT_EQ(deep->array_type, ValueType::ARRAY);
    deep = &deep->as_array().at(0);
  }
  EXPECT_EQ(deep->as_array().at(0).as_int(), 42);
}

TEST(GgufParse, TensorsWithAlignmentPadding) {
  Layout lay;
  const auto bytes = good_builder().build(&lay);
  const auto f = parse(bytes);
  ASSERT_EQ(f->tensors().size(), 8u);
  EXPECT_EQ(lay.data_start % 64, 0u);
  EXPECT_GT(lay.data_start, lay.header_end);  // the header end needed padding in this file

  struct Want {
    const char* name;
    TensorType type;
    std::vector<uint64_t> dims;
    uint64_t n_elements, n_bytes;
  };
  const std::vector<Want> want = {
      {"token_embd.weight", TensorType::Q8_0, {64, 3}, 192, 204},
      {"norm.weight", TensorType::F32, {5}, 5, 20},
      {"a.f16", TensorType::F16, {3, 2}, 6, 12},
      {"a.bf16", TensorType::BF16, {7}, 7, 14},
      {"a.q4_0", TensorType::Q4_0, {32, 2}, 64, 36},
      {"a.q4_1", TensorType::Q4_1, {32}, 32, 20},
      {"a.q4_k", TensorType::Q4_K, {256, 1, 1, 2}, 512, 288},
      {"a.q6_k", TensorType::Q6_K, {512}, 512, 420},
  };
  for (size_t i = 0; i < want.size(); ++i) {
    SCOPED_TRACE(want[i].name);
    const TensorInfo& t = f->tensors()[i];
    EXPECT_EQ(&t, &f->tensor(want[i].name));
    EXPECT_EQ(t.name, want[i].name);
    EXPECT_EQ(t.type, want[i].type);
    EXPECT_EQ(t.dims, want[i].dims);
    EXPECT_EQ(t.n_elements, want[i].n_elements);
    EXPECT_EQ(t.n_bytes, want[i].n_bytes);
    EXPECT_EQ(t.offset, lay.offsets[i]);
    EXPECT_EQ(t.offset % 64, 0u);
    EXPECT_EQ(t.data, bytes.data() + lay.data_start + t.offset);
    for (uint64_t k = 0; k < t.n_bytes; ++k) ASSERT_EQ(t.data[k], pattern(i, k)) << "byte " << k;
  }
  EXPECT_EQ(f->find_tensor("nope"), nullptr);
  EXPECT_EQ(f->find_tensor("a.q6_k"), &f->tensors()[7]);
}

TEST(GgufParse, Version2) {
  const auto bytes = good_builder(2).build();
  const auto f = parse(bytes);
  EXPECT_EQ(f->version(), 2u);
  EXPECT_EQ(f->tensors().size(), 8u);
  EXPECT_EQ(f->get_int("u32"), 4294967295);
}

TEST(GgufParse, DefaultAlignmentNoMetadataNoTensors) {
  Builder b;
  const auto empty = b.build();
  EXPECT_EQ(empty.size(), 24u);
  const auto f = parse(empty);
  EXPECT_EQ(f->alignment(), 32u);
  EXPECT_TRUE(f->metadata().empty());
  EXPECT_TRUE(f->tensors().empty());

  // Without general.alignment, tensors are aligned to 32 bytes.
  Builder t;
  t.kv_str("general.architecture", "x").tensor("w", {3}, TensorType::F32).tensor("v", {2}, TensorType::F16);
  Layout lay;
  const auto bytes = t.build(&lay);
  const auto g = parse(bytes);
  EXPECT_EQ(g->alignment(), 32u);
  EXPECT_EQ(lay.data_start % 32, 0u);
  EXPECT_EQ(g->tensor("v").offset, 32u);
  EXPECT_EQ(g->tensor("v").data, bytes.data() + lay.data_start + 32);
}

TEST(GgufParse, FallbacksAndMissing) {
  const auto bytes = good_builder().build();
  const auto f = parse(bytes, "model.gguf");
  EXPECT_EQ(f->find("nope"), nullptr);
  EXPECT_NE(f->find("u8"), nullptr);
  EXPECT_EQ(f->get_int("nope", 7), 7);
  EXPECT_EQ(f->get_int("u8", 7), 255);
  EXPECT_EQ(f->get_float("nope", 0.25), 0.25);
  EXPECT_EQ(f->get_float("f32", 0.25), 1.5);
  EXPECT_TRUE(f->get_bool("nope", true));
  EXPECT_FALSE(f->get_bool("bool.f", true));
  EXPECT_EQ(f->get_string("nope", "fb"), "fb");
  EXPECT_EQ(error_of([&] { f->get("llama.block_count"); }),
            "model.gguf: missing metadata key 'llama.block_count'");
  EXPECT_EQ(error_of([&] { f->get_int("llama.block_count"); }),
            "model.gguf: missing metadata key 'llama.block_count'");
  EXPECT_EQ(error_of([&] { f->tensor("output.weight"); }), "model.gguf: missing tensor 'output.weight'");
}

TEST(GgufParse, AccessorErrorsNameFileKeyAndType) {
  const auto bytes = good_builder().build();
  const auto f = parse(bytes, "model.gguf");
  EXPECT_EQ(error_of([&] { f->get_int("general.architecture"); }),
            "model.gguf: metadata key 'general.architecture' has type string, expected an integer");
  EXPECT_EQ(error_of([&] { f->get_int("general.architecture", 3); }),
            "model.gguf: metadata key 'general.architecture' has type string, expected an integer");
  EXPECT_EQ(error_of([&] { f->get("u32").as_string(); }),
            "model.gguf: metadata key 'u32' has type uint32, expected a string");
  EXPECT_EQ(error_of([&] { f->get_float("bool.t", 0); }),
            "model.gguf: metadata key 'bool.t' has type bool, expected a number");
  EXPECT_EQ(error_of([&] { f->get_bool("u8", false); }),
            "model.gguf: metadata key 'u8' has type uint8, expected a bool");
  EXPECT_EQ(error_of([&] { f->get("arr.str").as_string(); }),
            "model.gguf: metadata key 'arr.str' has type array of string, expected a string");
  EXPECT_EQ(error_of([&] { f->get("f64").as_array(); }),
            "model.gguf: metadata key 'f64' has type float64, expected an array");
  EXPECT_EQ(error_of([&] { f->get("f64").as_int(); }),
            "model.gguf: metadata key 'f64' has type float64, expected an integer");
  EXPECT_EQ(error_of([&] { f->get("arr.str").as_array()[0].as_int(); }),
            "model.gguf: element of metadata key 'arr.str' has type string, expected an integer");
  EXPECT_EQ(error_of([&] { f->get("arr.nested").as_array()[0].as_array()[0].as_string(); }),
            "model.gguf: element of metadata key 'arr.nested' has type int32, expected a string");
  EXPECT_EQ(
      error_of([&] { f->get_int("u64"); }),
      "model.gguf: metadata key 'u64' value 18446744073709551615 does not fit in a signed 64-bit integer");
  // Values built by hand have no origin but still fail cleanly.
  Value v;
  v.type = ValueType::STRING;  // inconsistent with the (integer) data it holds
  EXPECT_EQ(error_of([&] { v.as_string(); }), "metadata value has type string, expected a string");
  EXPECT_EQ(v.to_string(), "<invalid string value>");
  EXPECT_EQ(Value().as_int(), 0);
}

TEST(GgufParse, ToString) {
  const auto bytes = good_builder().build();
  const auto f = parse(bytes);
  EXPECT_EQ(f->get("u8").to_string(), "255");
  EXPECT_EQ(f->get("i64").to_string(), "-9223372036854775808");
  EXPECT_EQ(f->get("f32").to_string(), "1.5");
  EXPECT_EQ(f->get("bool.t").to_string(), "true");
  EXPECT_EQ(f->get("utf8").to_string(), "\"h\xc3\xa9llo \\\"q\\\"\\n\"");
  EXPECT_EQ(f->get("general.name").to_string(), "\"tiny\\x00model\"");
  EXPECT_EQ(f->get("arr.u8").to_string(), "[1, 2, 3]");
  EXPECT_EQ(f->get("arr.u8").to_string(2), "[1, 2, ... (3 items)]");
  EXPECT_EQ(f->get("arr.u8").to_string(0), "[... (3 items)]");
  EXPECT_EQ(f->get("arr.f32").to_string(), "[0.5, -1e-05]");
  EXPECT_EQ(f->get("arr.str").to_string(), "[\"a\", \"\", \"ccc\"]");
  EXPECT_EQ(f->get("arr.nested").to_string(), "[[1, 2], [3], []]");
  EXPECT_EQ(f->get("arr.deep").to_string(), "[[[[[[[[42]]]]]]]]");
}

// ---- files on disk ----

class GgufOpen : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() /
           ("kvdial_test_gguf_" + std::to_string(::getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  std::string write(const std::string& name, const std::vector<uint8_t>& bytes) {
    const std::string path = (dir_ / name).string();
    std::ofstream(path, std::ios::binary).write(reinterpret_cast<const char*>(bytes.data()), bytes.size());
    return path;
  }
  std::filesystem::path dir_;
};

TEST_F(GgufOpen, MapsAGoodFile) {
  const auto bytes = good_builder().build();
  const std::string path = write("good.gguf", bytes);
  const auto f = File::open(path);
  EXPECT_EQ(f->path(), path);
  EXPECT_EQ(f->file_size(), bytes.size());
  EXPECT_EQ(f->get_int("u16"), 65535);
  const TensorInfo& t = f->tensor("a.q6_k");
  EXPECT_EQ(t.data[0], pattern(7, 0));
  EXPECT_EQ(t.data[t.n_bytes - 1], pattern(7, t.n_bytes - 1));
}

TEST_F(GgufOpen, ReadingEqualsMapping) {
  const auto bytes = good_builder().build();
  const std::string path = write("good.gguf", bytes);
  const auto mapped = File::open(path), read = File::open(path, false);
  EXPECT_EQ(read->file_size(), mapped->file_size());
  EXPECT_EQ(read->metadata().size(), mapped->metadata().size());
  ASSERT_EQ(read->tensors().size(), mapped->tensors().size());
  for (size_t i = 0; i < read->tensors().size(); ++i) {
    const TensorInfo &a = read->tensors()[i], &b = mapped->tensors()[i];
    EXPECT_EQ(a.name, b.name);
    ASSERT_EQ(a.n_bytes, b.n_bytes);
    EXPECT_NE(a.data, b.data);
    EXPECT_EQ(0, std::memcmp(a.data, b.data, a.n_bytes)) << a.name;
  }
  const std::string missing = (dir_ / "missing.gguf").string();
  EXPECT_EQ(error_of([&] { File::open(missing, false); }),
            missing + ": cannot open: No such file or directory");
}

TEST_F(GgufOpen, MissingEmptyDirectoryAndBroken) {
  const std::string missing = (dir_ / "missing.gguf").string();
  EXPECT_EQ(error_of([&] { File::open(missing); }), missing + ": cannot open: No such file or directory");
  const std::string empty = write("empty.gguf", {});
  EXPECT_EQ(error_of([&] { File::open(empty); }), empty + ": empty file");
  EXPECT_EQ(error_of([&] { File::open(dir_.string()); }), dir_.string() + ": not a regular file");
  // A parse error after mapping: the mapping is released (ASan/LSan would notice a leak otherwise).
  auto bytes = good_builder().build();
  bytes[4] = 1;
  const std::string v1 = write("v1.gguf", bytes);
  EXPECT_EQ(error_of([&] { File::open(v1); }).rfind(v1 + ": unsupported GGUF version 1", 0), 0u);
}

// ---- broken files: one per kind of problem ----

struct BadCase {
  std::string name;
  std::vector<uint8_t> bytes;
  std::string needle;
};

void PrintTo(const BadCase& c, std::ostream* os) { *os << c.name; }

// Sets a little-endian u32/u64 inside a built file.
void put_u32(std::vector<uint8_t>& b, size_t at, uint32_t v) {
  for (int i = 0; i < 4; ++i) b.at(at + i) = static_cast<uint8_t>(v >> (8 * i));
}
void put_u64(std::vector<uint8_t>& b, size_t at, uint64_t v) {
  for (int i = 0; i < 8; ++i) b.at(at + i) = static_cast<uint8_t>(v >> (8 * i));
}

Builder one_tensor(std::vector<uint64_t> dims, uint32_t type) {
  Builder b;
  b.kv_str("general.architecture", "llama");
  b.tensors.push_back({"w", std::move(dims), type, std::nullopt, std::nullopt});
  return b;
}

std::vector<BadCase> bad_cases() {
  std::vector<BadCase> c;
  const auto with = [](Builder b, auto&& edit) {
    edit(b);
    return b.build();
  };
  const auto good = good_builder().build();
  const auto mod = [&](auto&& edit) {
    auto b = good;
    edit(b);
    return b;
  };
  const uint64_t huge = std::numeric_limits<uint64_t>::max();

  c.push_back({"Empty", {}, "t.gguf: empty file"});
  c.push_back(
      {"BadMagic", mod([](auto& b) { b[3] = 'L'; }), "not a GGUF file: bad magic 'GGUL' (expected 'GGUF')"});
  c.push_back({"ShortBadMagic", {'G', 'X'}, "bad magic 'GX'"});
  c.push_back({"ShortMagic", {'G', 'G', 'U'}, "truncated: file is 3 bytes, shorter than the GGUF magic"});
  c.push_back({"ShortVersion",
               {'G', 'G', 'U', 'F', 3, 0},
               "truncated: header version (4 bytes) runs past end of file (offset 4, file size 6)"});
  c.push_back({"Version1", with(Builder(), [](Builder& b) { b.version = 1; }), "unsupported GGUF version 1"});
  c.push_back({"Version4", with(Builder(), [](Builder& b) { b.version = 4; }), "unsupported GGUF version 4"});
  c.push_back({"BigEndian", with(Builder(), [](Builder& b) { b.version = 0x03000000; }), "big-endian"});
  c.push_back({"ShortHeader", std::vector<uint8_t>(good.begin(), good.begin() + 20),
               "truncated: file is 20 bytes, shorter than the 24-byte GGUF header"});
  c.push_back({"AbsurdKvCount", mod([&](auto& b) { put_u64(b, 16, huge); }),
               "absurd metadata key/value count 18446744073709551615: each needs at least 14 bytes"});
  c.push_back({"AbsurdTensorCount", mod([&](auto& b) { put_u64(b, 8, uint64_t{1} << 40); }),
               "absurd tensor count 1099511627776"});
  c.push_back({"AbsurdCountsTogether",
               with(Builder(),
                    [](Builder& b) {
                      b.kv_count = 3;
                      b.tensor_count = 1;
                      b.kvs.emplace_back("x", Bytes().zeros(40));
                    }),
               "absurd counts: 3 metadata key/values and 1 tensor infos"});
  c.push_back(
      {"AbsurdKeyLength", mod([](auto& b) { put_u64(b, 24, 4294967295u); }),
       "truncated: metadata key #0 name length 4294967295 runs past end of file (offset 24, file size"});
  c.push_back(
      {"AbsurdStringLength",
       with(Builder(), [&](Builder& b) { b.kv("s", ValueType::STRING, Bytes().u64(huge).zeros(16)); }),
       "truncated: metadata key #0 's' string length 18446744073709551615 runs past end of file (offset "
       "37, file size 61)"});
  c.push_back(
      {"AbsurdArrayLength",
       with(Builder(),
            [&](Builder& b) {
              b.kv("a", ValueType::ARRAY,
                   Bytes().u32(vt(ValueType::UINT64)).u64(uint64_t{1} << 61).zeros(64));
            }),
       "truncated: metadata key #0 'a' array length 2305843009213693952 of uint64 (at least 8 bytes each) "
       "runs past end of file"});
  c.push_back({"AbsurdStringInArray",
               with(Builder(),
                    [&](Builder& b) {
                      b.kv("a", ValueType::ARRAY,
                           array_of(ValueType::STRING, 2, Bytes().str("ok").u64(1000).zeros(8)));
                    }),
               "metadata key #0 'a'[1] string length 1000 runs past end of file"});
  c.push_back({"TruncatedScalar",
               with(Builder(), [](Builder& b) { b.kv("x", ValueType::UINT64, Bytes().u32(1)); }),
               "truncated: metadata key #0 'x' uint64 value (8 bytes) runs past end of file (offset 37, file "
               "size 41)"});
  c.push_back({"UnknownValueType", with(Builder(), [](Builder& b) { b.kv_raw("k", 13, Bytes().u64(0)); }),
               "metadata key #0 'k': unknown value type 13"});
  c.push_back({"UnknownArrayType",
               with(Builder(), [](Builder& b) { b.kv("k", ValueType::ARRAY, Bytes().u32(99).u64(0)); }),
               "metadata key #0 'k': array of unknown value type 99"});
  c.push_back({"BadBool",
               with(Builder(),
                    [](Builder& b) {
                      b.kv("k", ValueType::ARRAY, array_of(ValueType::BOOL, 3, Bytes().u8(1).u8(0).u8(2)));
                    }),
               "metadata key #0 'k'[2]: invalid bool value 2 (must be 0 or 1)"});
  c.push_back(
      {"EmptyKey", with(Builder(), [](Builder& b) { b.kv_u32("", 1); }), "metadata key #0: empty key name"});
  c.push_back({"KeyWithNewline", with(Builder(), [](Builder& b) { b.kv_u32("a\nb", 1).kv_u32("a\nb", 2); }),
               "metadata key #1 'a\\x0ab': duplicate metadata key"});
  c.push_back({"DuplicateKey", with(good_builder(), [](Builder& b) { b.kv_u32("u8", 1); }),
               "metadata key #27 'u8': duplicate metadata key"});
  {
    Bytes deep = array_of(ValueType::UINT8, 1, Bytes().u8(1));
    for (int level = 1; level < 9; ++level) deep = array_of(ValueType::ARRAY, 1, deep);
    c.push_back({"NestedTooDeep", with(Builder(), [&](Builder& b) { b.kv("d", ValueType::ARRAY, deep); }),
                 "metadata key #0 'd'[0][0][0][0][0][0][0][0]: arrays nested more than 8 deep"});
  }
  c.push_back({"AlignmentZero", with(Builder(), [](Builder& b) { b.kv_u32("general.alignment", 0); }),
               "bad general.alignment 0: must be a non-zero power of two"});
  c.push_back({"AlignmentNotPowerOfTwo",
               with(Builder(), [](Builder& b) { b.kv_u32("general.alignment", 48); }),
               "bad general.alignment 48: must be a non-zero power of two"});
  c.push_back({"AlignmentString", with(Builder(), [](Builder& b) { b.kv_str("general.alignment", "32"); }),
               "bad general.alignment: has type string"});
  c.push_back(
      {"AlignmentNegative",
       with(Builder(),
            [](Builder& b) { b.kv("general.alignment", ValueType::INT32, Bytes().u32(0xffffffe0u)); }),
       "bad general.alignment: has type int32 value -32"});
  c.push_back({"EmptyTensorName", with(one_tensor({4}, 0), [](Builder& b) { b.tensors[0].name = ""; }),
               "tensor #0: empty tensor name"});
  c.push_back({"UnknownTensorType", one_tensor({4}, 99).build(), "tensor #0 'w': unknown tensor type 99"});
  c.push_back({"UnsupportedTensorType", one_tensor({4}, 16).build(),
               "tensor #0 'w': unsupported tensor type 16 (IQ2_XXS); supported: F32, F16, BF16, Q8_0"});
  c.push_back({"UnsupportedTernary", one_tensor({256}, 35).build(),
               "tensor #0 'w': unsupported tensor type 35 (TQ2_0)"});
  c.push_back(
      {"UnsupportedQ8K", one_tensor({256}, 15).build(), "tensor #0 'w': unsupported tensor type 15 (Q8_K)"});
  c.push_back(
      {"NDimsZero", with(one_tensor({}, 0), [](Builder&) {}), "tensor #0 'w': n_dims 0 out of range"});
  c.push_back({"NDimsFive", one_tensor({1, 1, 1, 1, 1}, 0).build(), "tensor #0 'w': n_dims 5 out of range"});
  c.push_back({"NDimsHuge", with(one_tensor({4}, 0), [](Builder& b) { b.tensors[0].n_dims = 0xffffffffu; }),
               "n_dims 4294967295 out of range"});
  c.push_back({"ZeroDimension", one_tensor({4, 0, 2}, 0).build(), "tensor #0 'w': dimension 1 is zero"});
  c.push_back({"DimensionsOverflow", one_tensor({uint64_t{1} << 32, uint64_t{1} << 32}, 0).build(),
               "tensor #0 'w': dimensions {4294967296, 4294967296} overflow the element count"});
  c.push_back(
      {"DimensionsOverflowInt64", one_tensor({uint64_t{1} << 63}, 1).build(), "overflow the element count"});
  c.push_back({"DataSizeOverflow", one_tensor({uint64_t{1} << 31, uint64_t{1} << 31}, 0).build(),
               "tensor #0 'w': data size of 4611686018427387904 elements overflows"});
  c.push_back({"NotBlockMultiple", one_tensor({33, 2}, tt(TensorType::Q8_0)).build(),
               "tensor #0 'w': dims[0] = 33 is not a multiple of the Q8_0 block size 32"});
  c.push_back({"NotBlockMultipleK", one_tensor({128}, tt(TensorType::Q6_K)).build(),
               "dims[0] = 128 is not a multiple of the Q6_K block size 256"});
  c.push_back({"OffsetNotAligned", with(one_tensor({4}, 0), [](Builder& b) { b.tensors[0].offset = 16; }),
               "tensor #0 'w': data offset 16 is not a multiple of the alignment 32"});
  c.push_back(
      {"DataPastEnd", with(one_tensor({4}, 0), [](Builder& b) { b.tensors[0].offset = 1 << 30; }),
       "truncated: tensor #0 'w' data (16 bytes at data offset 1073741824, file offset 128 + 1073741824) "
       "runs past end of file (file size 128)"});
  c.push_back({"OffsetWraps", with(one_tensor({4}, 0), [&](Builder& b) { b.tensors[0].offset = huge - 31; }),
               "truncated: tensor #0 'w' data (16 bytes at data offset 18446744073709551584"});
  c.push_back({"LastTensorCut", mod([](auto& b) { b.pop_back(); }), "tensor #7 'a.q6_k' data (420 bytes"});
  {
    Layout lay;
    auto b = one_tensor({4}, 0).build(&lay);
    b.resize(lay.header_end + 1);
    c.push_back(
        {"DataSectionPastEnd", b, "truncated: data section starts past end of file (header ends at offset"});
  }
  c.push_back({"DuplicateTensorName",
               with(good_builder(), [](Builder& b) { b.tensors[5].name = "norm.weight"; }),
               "tensor #5 'norm.weight': duplicate tensor name (also tensor #1)"});
  c.push_back({"OverlappingTensors", with(good_builder(), [](Builder& b) { b.tensors[3].offset = 0; }),
               "tensor #0 'token_embd.weight' data (data offsets 0 to 204) overlaps tensor #3 'a.bf16'"});
  c.push_back({"TruncatedTensorInfo",
               with(one_tensor({4, 4}, 0), [](Builder& b) { b.tensors[0].n_dims = 3; }), "t.gguf: "});
  return c;
}

class GgufBad : public ::testing::TestWithParam<BadCase> {};

TEST_P(GgufBad, ThrowsOneLineNamingFileAndProblem) { expect_error(GetParam().bytes, GetParam().needle); }

INSTANTIATE_TEST_SUITE_P(Cases, GgufBad, ::testing::ValuesIn(bad_cases()),
                         [](const ::testing::TestParamInfo<BadCase>& info) { return info.param.name; });

// Millions of one-byte elements would take 64 times the file size in memory; the reader caps the total.
TEST(GgufBadLimits, TooManyArrayElementsInAll) {
  const uint64_t half = (uint64_t{1} << 23) + 1;
  Builder b;
  b.kv("a", ValueType::ARRAY, array_of(ValueType::UINT8, half, Bytes().zeros(half)))
      .kv("b", ValueType::ARRAY, array_of(ValueType::BOOL, half, Bytes().zeros(half)));
  expect_error(
      b.build(),
      "metadata key #1 'b': array length 8388609 brings the metadata to 16777218 array elements in all, "
      "more than the limit of 16777216");
}

// ---- broken files: systematic ----

// Parses the first `n` bytes from a buffer of exactly that size (so AddressSanitizer sees any read past the
// end) and touches everything in the result.
size_t parse_prefix(const std::vector<uint8_t>& bytes, size_t n) {
  std::vector<uint8_t> copy(bytes.begin(), bytes.begin() + static_cast<ptrdiff_t>(n));
  copy.shrink_to_fit();
  return touch(*File::parse(copy.data(), copy.size(), "t.gguf"));
}

TEST(GgufRobust, EveryTruncationThrows) {
  for (uint32_t version : {2u, 3u}) {
    const auto bytes = good_builder(version).build();
    ASSERT_NO_THROW(parse_prefix(bytes, bytes.size()));
    for (size_t n = 0; n < bytes.size(); ++n) {
      try {
        parse_prefix(bytes, n);
        ADD_FAILURE() << "truncation to " << n << " of " << bytes.size() << " bytes parsed";
      } catch (const Error& e) {
        const std::string msg = e.what();
        EXPECT_EQ(msg.rfind("t.gguf: ", 0), 0u) << msg;
        EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
      }
    }
  }
}

// Every supported type: a tensor of 3 x 2 blocks takes exactly 6 blocks of bytes; one byte fewer in the
// file is a one-line error naming the tensor and its size.
TEST(GgufRobust, TruncatedDataOfEveryType) {
  int n_types = 0;
  for (uint32_t raw = 0; raw < 64; ++raw) {
    if (!tensor_type_supported(raw)) continue;
    ++n_types;
    const auto t = static_cast<TensorType>(raw);
    SCOPED_TRACE(tensor_type_name(t));
    const BlockInfo bi = block_info(t);
    Layout lay;
    auto bytes = one_tensor({3 * uint64_t{bi.elems}, 2}, raw).build(&lay);
    const auto f = parse(bytes);
    ASSERT_EQ(f->tensors()[0].n_bytes, 6u * bi.bytes);
    ASSERT_EQ(bytes.size(), lay.data_start + 6u * bi.bytes);  // the builder writes no padding at the end
    bytes.pop_back();
    expect_error(bytes, "truncated: tensor #0 'w' data (" + std::to_string(6 * bi.bytes) + " bytes");
  }
  EXPECT_EQ(n_types, 15);
}

// Every supported type, through File::open (mapped and read): a model-shaped file whose last tensor
// (of that type, 5 rows of 2 blocks, after an F32 norm and another tensor of the type) is cut short by
// one byte, inside a block, at a block boundary, or right after its first byte. Each is a one-line error
// naming the file, the tensor and its size; the file before the cut parses.
TEST_F(GgufOpen, TruncatedFileOfEveryTypeNamesTheTensor) {
  for (uint32_t raw = 0; raw < 64; ++raw) {
    if (!tensor_type_supported(raw)) continue;
    const auto t = static_cast<TensorType>(raw);
    SCOPED_TRACE(tensor_type_name(t));
    const BlockInfo bi = block_info(t);
    Builder b;
    b.kv_str("general.architecture", "llama")
        .tensor("blk.0.attn_norm.weight", {64}, TensorType::F32)
        .tensor("blk.0.attn_q.weight", {uint64_t{bi.elems}, 3}, t)
        .tensor("blk.0.ffn_down.weight", {2 * uint64_t{bi.elems}, 5}, t);
    Layout lay;
    const auto bytes = b.build(&lay);
    const uint64_t n_bytes = 10u * bi.bytes, start = lay.data_start + lay.offsets[2];
    ASSERT_EQ(bytes.size(), start + n_bytes);
    ASSERT_NO_THROW(File::open(write("whole.gguf", bytes)));
    for (const uint64_t keep : {n_bytes - 1, n_bytes / 2 + 1, uint64_t{4} * bi.bytes, uint64_t{1}}) {
      SCOPED_TRACE("kept " + std::to_string(keep) + " of " + std::to_string(n_bytes) + " bytes");
      const std::string path =
          write("cut.gguf",
                std::vector<uint8_t>(bytes.begin(), bytes.begin() + static_cast<ptrdiff_t>(start + keep)));
      for (const bool use_mmap : {true, false}) {
        const std::string msg = error_of([&] { File::open(path, use_mmap); });
        EXPECT_EQ(msg.rfind(path + ": truncated: tensor #2 'blk.0.ffn_down.weight' data (" +
                                std::to_string(n_bytes) + " bytes at data offset ",
                            0),
                  0u)
            << msg;
        EXPECT_NE(msg.find("runs past end of file (file size " + std::to_string(start + keep) + ")"),
                  std::string::npos)
            << msg;
        EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
      }
    }
  }
}

// any_type (kvdial info): tensors of known but unsupported types parse, sized from ggml's block table and
// bounds-checked like the rest; unknown numbers and truncated data are still errors.
TEST(GgufParse, AnyTypeKeepsUnsupportedTensors) {
  const auto bytes = one_tensor({512}, 16).build();  // IQ2_XXS: 256 elements in 66 bytes
  EXPECT_THROW(parse(bytes), Error);
  const auto f = File::parse(bytes.data(), bytes.size(), "t.gguf", true);
  const TensorInfo& t = f->tensors().at(0);
  EXPECT_FALSE(t.supported);
  EXPECT_EQ(t.n_bytes, 132u);
  EXPECT_STREQ(tensor_type_name(t.type), "IQ2_XXS");
  EXPECT_THROW(block_info(t.type), Error);
  auto cut = bytes;
  cut.pop_back();
  EXPECT_THROW(File::parse(cut.data(), cut.size(), "t.gguf", true), Error);
  const auto unknown = one_tensor({4}, 99).build();
  EXPECT_THROW(File::parse(unknown.data(), unknown.size(), "t.gguf", true), Error);
  EXPECT_FALSE(ggml_block_info(9).has_value());  // Q8_1: never in files
  EXPECT_EQ(ggml_block_info(35)->bytes, 66u);    // TQ2_0
}

// Every byte of the header replaced by a few values: either parses or throws kvd::Error, never anything else.
TEST(GgufRobust, ByteFlipsNeverCrash) {
  const auto bytes = good_builder().build();
  Layout lay;
  good_builder().build(&lay);
  size_t parsed = 0, rejected = 0;
  for (size_t at = 0; at < lay.data_start; ++at) {
    for (int variant = 0; variant < 5; ++variant) {
      auto b = bytes;
      const uint8_t v[] = {0x00, 0xff, static_cast<uint8_t>(b[at] ^ 0x80), static_cast<uint8_t>(b[at] + 1),
                           static_cast<uint8_t>(b[at] - 1)};
      b[at] = v[variant];
      try {
        parse_prefix(b, b.size());
        ++parsed;
      } catch (const Error&) {
        ++rejected;
      }
    }
  }
  EXPECT_GT(parsed, 0u);
  EXPECT_GT(rejected, 0u);
}

// A huge 32- or 64-bit number written at every offset of the header (lengths, counts, dims, offsets, types).
TEST(GgufRobust, HugeNumbersAnywhere) {
  const auto bytes = good_builder().build();
  Layout lay;
  good_builder().build(&lay);
  const uint64_t values[] = {~uint64_t{0},      uint64_t{1} << 63, (uint64_t{1} << 63) - 1,
                             uint64_t{1} << 32, 0xffffffffu,       0x7fffffffu};
  for (size_t at = 0; at + 8 <= lay.header_end; ++at) {
    for (uint64_t v : values) {
      for (bool wide : {false, true}) {
        auto b = bytes;
        if (wide) {
          put_u64(b, at, v);
        } else {
          put_u32(b, at, static_cast<uint32_t>(v));
        }
        try {
          parse_prefix(b, b.size());
        } catch (const Error&) {
        }
      }
    }
  }
}

// ---- fuzzing seeds ----

// Writes small valid files as a seed corpus for fuzz/fuzz_gguf.cpp when KVDIAL_GGUF_SEED_DIR is set:
//   KVDIAL_GGUF_SEED_DIR=build/corpus ./kvdial_tests --gtest_filter=GgufSeeds.*
TEST(GgufSeeds, WriteFuzzCorpus) {
  const char* dir = std::getenv("KVDIAL_GGUF_SEED_DIR");
  if (dir == nullptr) GTEST_SKIP() << "set KVDIAL_GGUF_SEED_DIR to write the fuzzing seed corpus";
  std::filesystem::create_directories(dir);
  std::vector<std::pair<std::string, std::vector<uint8_t>>> seeds = {
      {"good_v3.gguf", good_builder(3).build()},
      {"good_v2.gguf", good_builder(2).build()},
      {"empty_v3.gguf", Builder().build()},
  };
  const TensorType types[] = {TensorType::F32,  TensorType::F16,    TensorType::BF16,  TensorType::Q8_0,
                              TensorType::Q4_0, TensorType::Q4_1,   TensorType::Q4_K,  TensorType::Q6_K,
                              TensorType::Q5_0, TensorType::Q5_1,   TensorType::Q2_K,  TensorType::Q3_K,
                              TensorType::Q5_K, TensorType::IQ4_NL, TensorType::IQ4_XS};
  for (TensorType t : types) {
    Builder b;
    b.kv_str("general.architecture", "llama").kv_u32("llama.block_count", 1);
    // 2 rows of one block, one block, and 3 rows of 2 blocks (the matmul kernels split odd row counts).
    b.tensor("w", {block_info(t).elems, 2}, t)
        .tensor("v", {block_info(t).elems}, t)
        .tensor("u", {2 * uint64_t{block_info(t).elems}, 3}, t);
    seeds.emplace_back(std::string("tensor_") + tensor_type_name(t) + ".gguf", b.build());
  }
  // Shaped like a real model's tokenizer metadata, with 16-byte alignment.
  Builder tok;
  tok.kv_str("tokenizer.ggml.model", "gpt2")
      .kv("tokenizer.ggml.tokens", ValueType::ARRAY,
          array_of(ValueType::STRING, 3, Bytes().str("a").str("b").str("ab")))
      .kv("tokenizer.ggml.merges", ValueType::ARRAY, array_of(ValueType::STRING, 1, Bytes().str("a b")))
      .kv("tokenizer.ggml.token_type", ValueType::ARRAY,
          array_of(ValueType::INT32, 3, Bytes().u32(1).u32(1).u32(3)))
      .set_alignment(16)
      .tensor("token_embd.weight", {32, 3}, TensorType::Q8_0);
  seeds.emplace_back("tokenizer.gguf", tok.build());
  // A SentencePiece vocabulary: unk / bos / eos, byte tokens for 'a', 0xC3 and 0xA9, pieces with
  // scores, one user-defined token.
  const std::vector<std::pair<std::string, int>> spm = {{"<unk>", 2},
                                                        {"<s>", 3},
                                                        {"</s>", 3},
                                                        {"<0x61>", 6},
                                                        {"<0xC3>", 6},
                                                        {"<0xA9>", 6},
                                                        {"\xE2\x96\x81", 1},
                                                        {"\xE2\x96\x81"
                                                         "a",
                                                         1},
                                                        {"b", 1},
                                                        {"ab", 1},
                                                        {"<|sep|>", 4}};
  Bytes spm_tokens, spm_scores, spm_types;
  for (size_t i = 0; i < spm.size(); ++i) {
    spm_tokens.str(spm[i].first);
    spm_scores.f32(spm[i].second == 1 ? -static_cast<float>(i) : 0.0f);
    spm_types.u32(static_cast<uint32_t>(spm[i].second));
  }
  Builder sp;
  sp.kv_str("tokenizer.ggml.model", "llama")
      .kv("tokenizer.ggml.tokens", ValueType::ARRAY, array_of(ValueType::STRING, spm.size(), spm_tokens))
      .kv("tokenizer.ggml.scores", ValueType::ARRAY, array_of(ValueType::FLOAT32, spm.size(), spm_scores))
      .kv("tokenizer.ggml.token_type", ValueType::ARRAY, array_of(ValueType::INT32, spm.size(), spm_types))
      .kv_u32("tokenizer.ggml.bos_token_id", 1)
      .kv_u32("tokenizer.ggml.eos_token_id", 2);
  seeds.emplace_back("tokenizer_spm.gguf", sp.build());
  for (const auto& [name, bytes] : seeds) {
    std::ofstream(std::filesystem::path(dir) / name, std::ios::binary)
        .write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
  }
}

// ---- the real model ----

TEST(GgufRealModel, SmolLM2) {
  const std::string path = std::string(KVDIAL_SOURCE_DIR) + "/models/SmolLM2-135M-Instruct.Q4_1.gguf";
  if (!std::filesystem::exists(path)) GTEST_SKIP() << path << " not present";
  const auto f = File::open(path);
  EXPECT_EQ(f->version(), 3u);
  EXPECT_EQ(f->alignment(), 32u);
  EXPECT_EQ(f->get_string("general.architecture", ""), "llama");
  EXPECT_EQ(f->tensors().size(), 272u);
  EXPECT_EQ(f->get_int("llama.block_count"), 30);
  EXPECT_EQ(f->get_int("llama.embedding_length"), 576);
  const TensorInfo& emb = f->tensor("token_embd.weight");
  EXPECT_EQ(emb.type, TensorType::Q8_0);
  EXPECT_EQ(emb.dims, (std::vector<uint64_t>{576, 49152}));
  EXPECT_EQ(emb.n_bytes, 576u / 32 * 34 * 49152);
  EXPECT_EQ(f->tensor("blk.0.attn_q.weight").type, TensorType::Q4_1);
  const Array& tokens = f->get("tokenizer.ggml.tokens").as_array();
  EXPECT_EQ(f->get("tokenizer.ggml.tokens").array_type, ValueType::STRING);
  EXPECT_EQ(tokens.size(), 49152u);
  EXPECT_FALSE(tokens[100].as_string().empty());
  EXPECT_EQ(f->get("tokenizer.ggml.merges").as_array().size(), 48900u);
  uint64_t total = 0;
  for (const TensorInfo& t : f->tensors()) {
    EXPECT_NE(t.data, nullptr);
    EXPECT_EQ(t.offset % 32, 0u);
    total += t.n_bytes;
  }
  EXPECT_LE(total, f->file_size());
}

}  // namespace
}  // namespace kvd::gguf
