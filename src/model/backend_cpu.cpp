// The fast CPU backend: SIMD matmuls and attention split over a thread pool; the small ops reuse the
// reference loops, split over rows.
#include "model/backend.h"
#include "model/ops_ref.h"
#include "util/error.h"
#include "util/thread_pool.h"

namespace kvd {

std::unique_ptr<Backend> make_ref_backend();

namespace {

class CpuBackend final : public RefSmallOps {
 public:
  CpuBackend(int threads, ActQuant act) : pool_(threads), act_(act) {}
  std::string name() const override { return act_ == ActQuant::Q8 ? "cpu-q8" : "cpu"; }
  int threads() const override { return pool_.size(); }
  void matmul(const WeightView& w, const float* x, float* y, int n) override {
    cpu::matmul(w, x, y, n, pool_, act_);
  }
  void add(const float* x, float* y, size_t count) override {
    if (count < 65536) return ref::add(x, y, count);
    pool_.parallel_for(static_cast<int64_t>(count),
                       [&](int64_t b, int64_t e) { ref::add(x + b, y + b, static_cast<size_t>(e - b)); });
  }
  void rmsnorm(const float* x, const float* weight, float* y, int n, int dim, float eps) override {
    if (n < 4) return ref::rmsnorm(x, weight, y, n, dim, eps);
    pool_.parallel_for(n, [&](int64_t b, int64_t e) {
      ref::rmsnorm(x + b * dim, weight, y + b * dim, static_cast<int>(e - b), dim, eps);
    });
  }
  void rope(float* x, int n, int n_heads, int head_dim, int rope_dim, int pos0, float theta, RopeStyle style,
            const RopeScaling& scaling) override {
    if (n < 4) return ref::rope_any(x, n, n_heads, head_dim, rope_dim, pos0, theta, style, scaling);
    const size_t row = static_cast<size_t>(n_heads) * head_dim;
    pool_.parallel_for(n, [&](int64_t b, int64_t e) {
      ref::rope_any(x + b * row, static_cast<int>(e - b), n_heads, head_dim, rope_dim,
                    pos0 + static_cast<int>(b), theta, style, scaling);
    });
  }
  void attention(const KvCache& cache, int seq, int layer, const AttnShape& shape, const float* q, int pos0,
                 int n, float* out, AttnStats* stats) override {
    cpu::attend(cache, seq, layer, shape, q, pos0, n, out, stats, pool_);
  }
  void swiglu(const float* gate, const float* up, float* out, size_t count) override {
    if (count < 4096) return ref::swiglu(gate, up, out, count);
    pool_.parallel_for(static_cast<int64_t>(count), [&](int64_t b, int64_t e) {
      ref::swiglu(gate + b, up + b, out + b, static_cast<size_t>(e - b));
    });
  }

 private:
  ThreadPool pool_;
  ActQuant act_;
};

}  // namespace

std::unique_ptr<Backend> make_backend(const std::string& name, int threads) {
  if (name == "ref") return make_ref_backend();
  const int n = threads > 0 ? threads : default_thread_count();
  if (name == "cpu") return std::make_unique<CpuBackend>(n, ActQuant::F32);
  if (name == "cpu-q8") return std::make_unique<CpuBackend>(n, ActQuant::Q8);
  throw Error("unknown backend '" + name + "' (use cpu, cpu-q8 or ref)");
}

}  // namespace kvd
