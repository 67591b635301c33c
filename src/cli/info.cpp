// `kvdial info MODEL`: what a GGUF file holds (as gguf-dump shows it: header, metadata, tensors) and
// what kvdial would do with it: the architecture's shapes, the tensor types with counts and bytes and,
// for each, supported or the error kvdial gives, the tokenizer, and whether the model loads.
#include "cli/info.h"

#include <cstdio>
#include <map>
#include <string>
#include <vector>

#include "cli/common.h"
#include "gguf/gguf.h"
#include "model/model.h"
#include "tokenizer/tokenizer.h"
#include "util/error.h"

namespace kvd::cli {
namespace {

std::string dims_str(const std::vector<uint64_t>& d) {
  std::string s;
  for (size_t i = 0; i < d.size(); ++i) s += (i ? " x " : "") + std::to_string(d[i]);
  return s;
}

// A metadata value for a key, or "-" when absent.
std::string meta(const gguf::File& f, const std::string& key) {
  const gguf::Value* v = f.find(key);
  return v ? v->to_string(4) : "-";
}

// llama.cpp's names for general.file_type (its llama_ftype enum, as gguf-py's LlamaFileType).
std::string file_type(const gguf::File& f) {
  const gguf::Value* v = f.find("general.file_type");
  if (!v) return "-";
  static const std::map<int64_t, const char*> kNames = {
      {0, "ALL_F32"},         {1, "MOSTLY_F16"},     {2, "MOSTLY_Q4_0"},    {3, "MOSTLY_Q4_1"},
      {7, "MOSTLY_Q8_0"},     {8, "MOSTLY_Q5_0"},    {9, "MOSTLY_Q5_1"},    {10, "MOSTLY_Q2_K"},
      {11, "MOSTLY_Q3_K_S"},  {12, "MOSTLY_Q3_K_M"}, {13, "MOSTLY_Q3_K_L"}, {14, "MOSTLY_Q4_K_S"},
      {15, "MOSTLY_Q4_K_M"},  {16, "MOSTLY_Q5_K_S"}, {17, "MOSTLY_Q5_K_M"}, {18, "MOSTLY_Q6_K"},
      {19, "MOSTLY_IQ2_XXS"}, {20, "MOSTLY_IQ2_XS"}, {21, "MOSTLY_Q2_K_S"}, {22, "MOSTLY_IQ3_XS"},
      {23, "MOSTLY_IQ3_XXS"}, {24, "MOSTLY_IQ1_S"},  {25, "MOSTLY_IQ4_NL"}, {26, "MOSTLY_IQ3_S"},
      {27, "MOSTLY_IQ3_M"},   {28, "MOSTLY_IQ2_S"},  {29, "MOSTLY_IQ2_M"},  {30, "MOSTLY_IQ4_XS"},
      {31, "MOSTLY_IQ1_M"},   {32, "MOSTLY_BF16"},   {36, "MOSTLY_TQ1_0"},  {37, "MOSTLY_TQ2_0"},
  };
  try {
    const auto it = kNames.find(v->as_int());
    return v->to_string() + (it != kNames.end() ? std::string(" (") + it->second + ")" : "");
  } catch (const Error&) {
    return v->to_string();
  }
}

void print_kv(const char* label, const std::string& value) {
  std::printf("  %-24s %s\n", label, value.c_str());
}

}  // namespace

void add_info_command(CLI::App& app, InfoArgs& a) {
  CLI::App* c =
      app.add_subcommand("info", "what a GGUF file holds and what kvdial would do with it (gguf-dump)");
  c->add_option("model", a.model_path, "GGUF file")->required();
  c->add_flag("--tensors", a.tensors, "list every tensor (name, shape, type, bytes)");
  c->add_flag("--metadata", a.metadata, "list every metadata key and value");
  a.cmd = c;
}

int run_info(const InfoArgs& a) {
  // Accept every ggml type known by name, so that a file kvdial cannot run still gets its overview.
  const std::unique_ptr<gguf::File> f = gguf::File::open(a.model_path, true, true);
  std::printf("file: %s\n", a.model_path.c_str());
  std::printf("  GGUF v%u, %s, alignment %llu, %zu metadata keys, %zu tensors\n", f->version(),
              human_bytes(static_cast<double>(f->file_size())).c_str(),
              static_cast<unsigned long long>(f->alignment()), f->metadata().size(), f->tensors().size());

  const std::string arch = f->get_string("general.architecture", "");
  const std::string p = arch + ".";
  std::printf("model:\n");
  print_kv("architecture", arch.empty() ? "-" : arch);
  print_kv("name", meta(*f, "general.name"));
  print_kv("file_type", file_type(*f));
  print_kv("block_count", meta(*f, p + "block_count"));
  print_kv("embedding_length", meta(*f, p + "embedding_length"));
  print_kv("feed_forward_length", meta(*f, p + "feed_forward_length"));
  print_kv("head_count", meta(*f, p + "attention.head_count"));
  print_kv("head_count_kv", meta(*f, p + "attention.head_count_kv"));
  print_kv("key_length", meta(*f, p + "attention.key_length"));
  print_kv("value_length", meta(*f, p + "attention.value_length"));
  print_kv("rms_epsilon", meta(*f, p + "attention.layer_norm_rms_epsilon"));
  print_kv("rope.dimension_count", meta(*f, p + "rope.dimension_count"));
  print_kv("rope.freq_base", meta(*f, p + "rope.freq_base"));
  print_kv("rope.scaling.type", meta(*f, p + "rope.scaling.type"));
  print_kv("rope.scaling.factor", meta(*f, p + "rope.scaling.factor"));
  print_kv("context_length", meta(*f, p + "context_length"));
  print_kv("output",
           f->find_tensor("output.weight") ? "separate output.weight" : "tied to token_embd.weight");

  std::printf("tokenizer:\n");
  print_kv("model", meta(*f, "tokenizer.ggml.model"));
  print_kv("pre", meta(*f, "tokenizer.ggml.pre"));
  const gguf::Value* toks = f->find("tokenizer.ggml.tokens");
  print_kv("tokens", toks && toks->type == gguf::ValueType::ARRAY ? std::to_string(toks->as_array().size())
                                                                  : std::string("-"));
  const gguf::Value* merges = f->find("tokenizer.ggml.merges");
  print_kv("merges", merges && merges->type == gguf::ValueType::ARRAY
                         ? std::to_string(merges->as_array().size())
                         : std::string("-"));
  const gguf::Value* scores = f->find("tokenizer.ggml.scores");
  print_kv("scores", scores && scores->type == gguf::ValueType::ARRAY
                         ? std::to_string(scores->as_array().size())
                         : std::string("-"));
  print_kv("bos / eos id",
           meta(*f, "tokenizer.ggml.bos_token_id") + " / " + meta(*f, "tokenizer.ggml.eos_token_id"));
  print_kv("add_bos_token", meta(*f, "tokenizer.ggml.add_bos_token"));
  print_kv("add_space_prefix", meta(*f, "tokenizer.ggml.add_space_prefix"));
  print_kv("chat_template", f->find("tokenizer.chat_template") ? "present" : "-");
  try {
    print_kv("kvdial", Tokenizer(vocab_from_gguf(*f)).summary());
  } catch (const Error& e) {
    print_kv("kvdial", std::string("error: ") + e.what());
  }

  // Tensor types with counts and bytes, and what kvdial does with each.
  struct TypeRow {
    int count = 0;
    uint64_t elements = 0, bytes = 0;
    bool supported = true;
    std::string example;
  };
  std::map<uint32_t, TypeRow> types;
  uint64_t total = 0;
  for (const gguf::TensorInfo& t : f->tensors()) {
    TypeRow& r = types[static_cast<uint32_t>(t.type)];
    ++r.count;
    r.elements += t.n_elements;
    r.bytes += t.n_bytes;
    r.supported = t.supported;
    if (r.example.empty()) r.example = t.name;
    total += t.n_bytes;
  }
  std::printf("tensor types:\n");
  std::printf("  %-8s %7s %15s %15s %6s  %s\n", "type", "tensors", "elements", "bytes", "share", "kvdial");
  for (const auto& [raw, r] : types) {
    const std::string what =
        r.supported ? "supported (SIMD decode and prompt kernels)"
                    : "error: tensor '" + r.example + "': unsupported tensor type " + std::to_string(raw) +
                          " (" + gguf::tensor_type_name(static_cast<gguf::TensorType>(raw)) + ")";
    std::printf(
        "  %-8s %7d %15llu %15llu %5.1f%%  %s\n", gguf::tensor_type_name(static_cast<gguf::TensorType>(raw)),
        r.count, static_cast<unsigned long long>(r.elements), static_cast<unsigned long long>(r.bytes),
        total ? 100.0 * static_cast<double>(r.bytes) / static_cast<double>(total) : 0.0, what.c_str());
  }
  std::printf("  total: %s of tensor data\n", human_bytes(static_cast<double>(total)).c_str());

  if (a.tensors) {
    std::printf("tensors:\n");
    for (size_t i = 0; i < f->tensors().size(); ++i) {
      const gguf::TensorInfo& t = f->tensors()[i];
      std::printf("  %5zu %-40s %-22s %-7s %12llu\n", i, t.name.c_str(), dims_str(t.dims).c_str(),
                  gguf::tensor_type_name(t.type), static_cast<unsigned long long>(t.n_bytes));
    }
  }
  if (a.metadata) {
    std::printf("metadata:\n");
    for (const auto& [key, v] : f->metadata())
      std::printf("  %-44s %s\n", key.c_str(), v.to_string(8).c_str());
  }

  // The verdict: load it as every command would (architecture, shapes, tensor types, tokenizer).
  std::printf("kvdial: ");
  try {
    const std::unique_ptr<Model> m = Model::load(a.model_path);
    const ModelConfig& c = m->config();
    std::printf(
        "loads: %s, %d layers, dim %d, %d heads / %d KV heads of %d, ffn %d, vocab %d, %lld parameters\n",
        c.arch.c_str(), c.n_layers, c.dim, c.n_heads, c.n_kv_heads, c.head_dim, c.ffn_dim, c.vocab,
        static_cast<long long>(m->n_params()));
  } catch (const Error& e) {
    std::printf("cannot run this file: %s\n", e.what());
    return 1;
  }
  return 0;
}

}  // namespace kvd::cli
