// The reference backend: every op in plain fp32 loops, in index order, on one thread.
#include <cmath>

#include "model/backend.h"
#include "model/ops_ref.h"

namespace kvd {
namespace {

class RefBackend final : public RefSmallOps {
 public:
  std::string name() const override { return "ref"; }
  int threads() const override { return 1; }
  void matmul(const WeightView& w, const float* x, float* y, int n) override { ref::matmul(w, x, y, n); }
  void add(const float* x, float* y, size_t count) override { ref::add(x, y, count); }
  void rmsnorm(const float* x, const float* weight, float* y, int n, int dim, float eps) override {
    ref::rmsnorm(x, weight, y, n, dim, eps);
  }
  void rope(float* x, int n, int n_heads, int head_dim, int rope_dim, int pos0, float theta, RopeStyle style,
            const RopeScaling& scaling) override {
    ref::rope_any(x, n, n_heads, head_dim, rope_dim, pos0, theta, style, scaling);
  }
  void attention(const KvCache& cache, int seq, int layer, const AttnShape& shape, const float* q, int pos0,
                 int n, float* out, AttnStats* stats) override {
    const int stride = shape.n_heads * shape.head_dim;
    for (int i = 0; i < n; ++i)
      ref::attend(cache, seq, layer, shape, q + static_cast<size_t>(i) * stride, pos0 + i,
                  out + static_cast<size_t>(i) * stride, stats ? &stats[i] : nullptr);
  }
  void swiglu(const float* gate, const float* up, float* out, size_t count) override {
    ref::swiglu(gate, up, out, count);
  }
};

}  // namespace

std::unique_ptr<Backend> make_ref_backend() { return std::make_unique<RefBackend>(); }

}  // namespace kvd
