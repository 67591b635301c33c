// The operations a forward pass needs, behind one interface: "ref" is plain fp32 loops written to be
// read (one thread); "cpu" is SIMD and multithreaded. Session::forward touches activations only through
// these calls. All activations are row-major: n_tokens rows of `dim` floats.
#pragma once
#include <memory>
#include <string>

#include "kernels/kernels.h"
#include "kv/attention.h"
#include "kv/kv_cache.h"
#include "model/model.h"

namespace kvd {

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string name() const = 0;
  virtual int threads() const = 0;

  // x (n x table.cols) = the table's rows of the n tokens, dequantized.
  virtual void embed(const WeightView& table, const int32_t* tokens, int n, float* x) = 0;
  // y (n x w.rows) = x (n x w.cols) W^T
  virtual void matmul(const WeightView& w, const float* x, float* y, int n) = 0;
  // x[i][j] += bias[j] for n rows of dim values.
  virtual void add_bias(float* x, const float* bias, int n, int dim) = 0;
  // y += x over count values (the residual adds).
  virtual void add(const float* x, float* y, size_t count) = 0;
  // y = x / rms(x) * weight, per row
  virtual void rmsnorm(const float* x, const float* weight, float* y, int n, int dim, float eps) = 0;
  // Rotates the first rope_dim dimensions of each head of n rows (row i at position pos0 + i), with the
  // model's frequency scaling when it has one (scaling.active()).
  virtual void rope(float* x, int n, int n_heads, int head_dim, int rope_dim, int pos0, float theta,
                    RopeStyle style, const RopeScaling& scaling) = 0;
  // K and V rows (kv_dim values each, RoPE applied) of n tokens into the cache at positions pos0...
  virtual void kv_write(KvCache& cache, int seq, int layer, int pos0, int n, const float* k,
                        const float* v) = 0;
  // out[i] = the Euclidean norm of row i (n rows of dim values).
  virtual void row_norms(const float* x, int n, int dim, float* out) = 0;
  // out = softmax(q k^T / sqrt(d)) v over the cache, causal; q and out are n x (n_heads*head_dim).
  virtual void attention(const KvCache& cache, int seq, int layer, const AttnShape& shape, const float* q,
                         int pos0, int n, float* out, AttnStats* stats) = 0;
  // out = silu(gate) * up, elementwise over count values
  virtual void swiglu(const float* gate, const float* up, float* out, size_t count) = 0;
};

// "ref", "cpu" or "cpu-q8" (cpu with decode matmuls on 8-bit activations, as llama.cpp does: faster,
// less exact; see ActQuant). threads is ignored by "ref". Throws kvd::Error for an unknown name.
std::unique_ptr<Backend> make_backend(const std::string& name, int threads);

}  // namespace kvd
