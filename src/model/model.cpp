// Model loading: configuration from GGUF metadata, weight views with shape checks, tokenizer.
#include "model/model.h"

#include <chrono>
#include <string>

#include "util/error.h"

namespace kvd {
namespace {

std::string dims_str(const std::vector<uint64_t>& d) {
  std::string s = "{";
  for (size_t i = 0; i < d.size(); ++i) s += (i ? ", " : "") + std::to_string(d[i]);
  return s + "}";
}

// A 2-D weight of ggml shape {cols, rows}.
WeightView matrix(const gguf::File& f, const std::string& name, int64_t rows, int64_t cols) {
  const gguf::TensorInfo& t = f.tensor(name);
  const uint64_t r = t.dims.size() >= 2 ? t.dims[1] : 1;
  if (t.dims.size() > 2 || t.dims[0] != static_cast<uint64_t>(cols) || r != static_cast<uint64_t>(rows))
    throw Error(f.path() + ": tensor '" + name + "' has shape " + dims_str(t.dims) + ", expected {" +
                std::to_string(cols) + ", " + std::to_string(rows) + "}");
  WeightView w;
  w.type = t.type;
  w.data = t.data;
  w.rows = rows;
  w.cols = cols;
  const gguf::BlockInfo bi = gguf::block_info(t.type);
  w.row_bytes = static_cast<size_t>(cols / bi.elems) * bi.bytes;
  return w;
}

Vec vector(const gguf::File& f, const std::string& name, int64_t n, bool required = true) {
  const gguf::TensorInfo* t = f.find_tensor(name);
  if (!t) {
    if (required) throw Error(f.path() + ": missing tensor '" + name + "'");
    return {};
  }
  if (t->n_elements != static_cast<uint64_t>(n))
    throw Error(f.path() + ": tensor '" + name + "' has " + std::to_string(t->n_elements) +
                " elements, expected " + std::to_string(n));
  Vec v(static_cast<size_t>(n));
  ref::dequantize_row(t->type, t->data, v.data(), n);
  return v;
}

int positive(const gguf::File& f, const std::string& key, int64_t v) {
  if (v <= 0 || v > (1 << 24))
    throw Error(f.path() + ": metadata '" + key + "' = " + std::to_string(v) + " is out of range");
  return static_cast<int>(v);
}

}  // namespace

std::unique_ptr<Model> Model::load(const std::string& path, bool use_mmap) {
  const auto t0 = std::chrono::steady_clock::now();
  std::unique_ptr<Model> m(new Model());
  m->path_ = path;
  m->file_ = gguf::File::open(path, use_mmap);
  const gguf::File& f = *m->file_;
  ModelConfig& c = m->config_;
  c.arch = f.get_string("general.architecture", "");
  if (c.arch != "llama" && c.arch != "mistral" && c.arch != "qwen2" && c.arch != "qwen3")
    throw Error(path + ": architecture '" + c.arch +
                "' is not supported (supported: llama, mistral, qwen2, qwen3)");
  const std::string a = c.arch + ".";
  c.name = f.get_string("general.name", "");
  c.n_layers = positive(f, a + "block_count", f.get_int(a + "block_count"));
  c.dim = positive(f, a + "embedding_length", f.get_int(a + "embedding_length"));
  c.n_heads = positive(f, a + "attention.head_count", f.get_int(a + "attention.head_count"));
  c.n_kv_heads =
      positive(f, a + "attention.head_count_kv", f.get_int(a + "attention.head_count_kv", c.n_heads));
  c.ffn_dim = positive(f, a + "feed_forward_length", f.get_int(a + "feed_forward_length"));
  c.ctx_train = static_cast<int>(f.get_int(a + "context_length", 2048));
  if (c.dim % c.n_heads != 0) throw Error(path + ": embedding_length is not a multiple of head_count");
  if (c.n_heads % c.n_kv_heads != 0) throw Error(path + ": head_count is not a multiple of head_count_kv");
  c.head_dim = static_cast<int>(f.get_int(a + "attention.key_length", c.dim / c.n_heads));
  if (c.head_dim <= 0 || c.head_dim > 256 || c.head_dim % 2 != 0)
    throw Error(path + ": head dimension " + std::to_string(c.head_dim) + " is not supported");
  if (f.get_int(a + "attention.value_length", c.head_dim) != c.head_dim)
    throw Error(path + ": attention.value_length differs from key_length (not supported)");
  c.rope_dim = static_cast<int>(f.get_int(a + "rope.dimension_count", c.head_dim));
  if (c.rope_dim <= 0 || c.rope_dim > c.head_dim || c.rope_dim % 2)
    throw Error(path + ": bad rope.dimension_count");
  c.rope_theta = static_cast<float>(f.get_float(a + "rope.freq_base", 10000.0));
  c.rms_eps = static_cast<float>(f.get_float(a + "attention.layer_norm_rms_epsilon", 1e-5));
  // llama.cpp's converters permute Llama/Mistral Q and K rows for adjacent-pair RoPE; Qwen's stay NeoX.
  c.rope_style = c.arch == "qwen2" || c.arch == "qwen3" ? RopeStyle::Halves : RopeStyle::Adjacent;
  c.rope_scaling = rope_scaling_from_gguf(f, c.arch, c.rope_dim, c.rope_theta);

  const gguf::TensorInfo& emb = f.tensor("token_embd.weight");
  if (emb.dims.size() != 2) throw Error(path + ": token_embd.weight is not 2-D");
  c.vocab = positive(f, "token_embd rows", static_cast<int64_t>(emb.dims[1]));

  Weights& w = m->weights_;
  w.token_embd = matrix(f, "token_embd.weight", c.vocab, c.dim);
  w.output_norm = vector(f, "output_norm.weight", c.dim);
  c.tied_output = f.find_tensor("output.weight") == nullptr;
  w.output = c.tied_output ? w.token_embd : matrix(f, "output.weight", c.vocab, c.dim);
  const int q_dim = c.n_heads * c.head_dim, kv_dim = c.n_kv_heads * c.head_dim;
  for (int l = 0; l < c.n_layers; ++l) {
    const std::string p = "blk." + std::to_string(l) + ".";
    LayerWeights L;
    L.attn_norm = vector(f, p + "attn_norm.weight", c.dim);
    L.wq = matrix(f, p + "attn_q.weight", q_dim, c.dim);
    L.wk = matrix(f, p + "attn_k.weight", kv_dim, c.dim);
    L.wv = matrix(f, p + "attn_v.weight", kv_dim, c.dim);
    L.bq = vector(f, p + "attn_q.bias", q_dim, false);
    L.bk = vector(f, p + "attn_k.bias", kv_dim, false);
    L.bv = vector(f, p + "attn_v.bias", kv_dim, false);
    L.q_norm = vector(f, p + "attn_q_norm.weight", c.head_dim, c.arch == "qwen3");
    L.k_norm = vector(f, p + "attn_k_norm.weight", c.head_dim, c.arch == "qwen3");
    if (L.q_norm.empty() != L.k_norm.empty())
      throw Error(path + ": layer " + std::to_string(l) + " has only one of attn_q_norm and attn_k_norm");
    c.qk_norm = !L.q_norm.empty();
    L.wo = matrix(f, p + "attn_output.weight", c.dim, q_dim);
    L.ffn_norm = vector(f, p + "ffn_norm.weight", c.dim);
    L.w_gate = matrix(f, p + "ffn_gate.weight", c.ffn_dim, c.dim);
    L.w_up = matrix(f, p + "ffn_up.weight", c.ffn_dim, c.dim);
    L.w_down = matrix(f, p + "ffn_down.weight", c.dim, c.ffn_dim);
    w.layers.push_back(std::move(L));
  }
  for (const auto& t : f.tensors()) m->n_params_ += static_cast<int64_t>(t.n_elements);

  m->tokenizer_ = std::make_unique<Tokenizer>(vocab_from_gguf(f));
  if (static_cast<int>(m->tokenizer_->vocab_size()) != c.vocab)
    throw Error(path + ": tokenizer has " + std::to_string(m->tokenizer_->vocab_size()) +
                " tokens but token_embd has " + std::to_string(c.vocab) + " rows");
  m->load_seconds_ = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return m;
}

void embed_token(const WeightView& table, int token, float* out) {
  KVD_ASSERT(token >= 0 && token < table.rows);
  ref::dequantize_row(table.type, table.data + static_cast<size_t>(token) * table.row_bytes, out, table.cols);
}

}  // namespace kvd
