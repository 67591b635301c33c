// A Llama-family model read from GGUF: its configuration (plain data), its weights (views into the
// mapped file, each with its shape) and its tokenizer.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "gguf/gguf.h"
#include "kernels/kernels.h"
#include "model/rope_scaling.h"
#include "tokenizer/tokenizer.h"

namespace kvd {

enum class RopeStyle { Adjacent, Halves };  // pairs (2i, 2i+1) as llama.cpp's LLaMA; or (i, i + d/2), NeoX

struct ModelConfig {
  std::string arch;  // general.architecture
  std::string name;  // general.name
  int n_layers = 0;
  int dim = 0;  // embedding width
  int n_heads = 0;
  int n_kv_heads = 0;
  int head_dim = 0;
  int ffn_dim = 0;
  int vocab = 0;
  int ctx_train = 0;
  int rope_dim = 0;  // leading dimensions of each head that RoPE rotates
  float rope_theta = 10000.0f;
  float rms_eps = 1e-5f;
  RopeStyle rope_style = RopeStyle::Adjacent;
  RopeScaling rope_scaling;  // linear / yarn / llama3 frequency scaling (type "none": plain RoPE)
  bool tied_output = false;  // output matrix is token_embd
  bool qk_norm = false;      // per-head RMSNorm of q and k before RoPE (Qwen3)
};

// An owned small vector (norm weights, biases), dequantized to fp32 at load.
using Vec = std::vector<float>;

struct LayerWeights {
  Vec attn_norm;      // (dim)
  WeightView wq;      // (n_heads*head_dim, dim)
  WeightView wk;      // (n_kv_heads*head_dim, dim)
  WeightView wv;      // (n_kv_heads*head_dim, dim)
  Vec bq, bk, bv;     // optional biases (Qwen2); empty when absent
  WeightView wo;      // (dim, n_heads*head_dim)
  Vec ffn_norm;       // (dim)
  WeightView w_gate;  // (ffn_dim, dim)
  WeightView w_up;    // (ffn_dim, dim)
  WeightView w_down;  // (dim, ffn_dim)

  // (head_dim) per-head RMSNorm weights of q and k (Qwen3); empty when absent.
  Vec q_norm, k_norm;
};

struct Weights {
  WeightView token_embd;  // (vocab, dim)
  Vec output_norm;        // (dim)
  WeightView output;      // (vocab, dim); == token_embd when tied
  std::vector<LayerWeights> layers;
};

class Model {
 public:
  // Maps (or reads, use_mmap false) the GGUF at path and checks that it is a supported Llama-family
  // model. Throws kvd::Error.
  static std::unique_ptr<Model> load(const std::string& path, bool use_mmap = true);

  const ModelConfig& config() const { return config_; }
  const Weights& weights() const { return weights_; }
  const Tokenizer& tokenizer() const { return *tokenizer_; }
  const gguf::File& file() const { return *file_; }
  const std::string& path() const { return path_; }
  size_t file_bytes() const { return file_->file_size(); }
  int64_t n_params() const { return n_params_; }
  double load_seconds() const { return load_seconds_; }

 private:
  Model() = default;
  std::string path_;
  std::unique_ptr<gguf::File> file_;
  ModelConfig config_;
  Weights weights_;
  std::unique_ptr<Tokenizer> tokenizer_;
  int64_t n_params_ = 0;
  double load_seconds_ = 0;
};

// Embedding row of a token, dequantized.
void embed_token(const WeightView& table, int token, float* out);

}  // namespace kvd
