// The CUDA engine: weights uploaded once, the forward pass of model/forward.cpp on the GPU (cuBLAS
// GEMMs for prompt batches; GEMVs and a captured CUDA graph for one-token decode steps), the KV cache
// in device pages at the widths the policy gives (gpu_kv.cuh), peak VRAM accounted.
#include <cublas_v2.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "cuda/device_memory.cuh"
#include "cuda/gpu_kv.cuh"
#include "cuda/gpu_kv.h"
#include "cuda/gpu_session.h"
#include "cuda/ops.cuh"
#include "kernels/kernels.h"
#include "util/error.h"

namespace kvd::cuda {
namespace {

void blas_check(cublasStatus_t st, const char* what) {
  if (st != CUBLAS_STATUS_SUCCESS)
    throw Error(std::string("cublas: ") + what + " failed (status " + std::to_string(st) + ")");
}

std::string mib(double b) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f MiB", b / (1024.0 * 1024.0));
  return buf;
}

// A weight matrix on the device: fp16 always (GEMM path and f16 GEMV), Q4_1 bytes too when kept
// quantized for the decode GEMV.
struct Mat {
  __half* f16 = nullptr;
  uint8_t* q4_1 = nullptr;
  int rows = 0, cols = 0;
};

struct Layer {
  float* attn_norm = nullptr;
  float* ffn_norm = nullptr;
  float* bqkv = nullptr;  // null when the model has no biases
  Mat qkv, o, gu, down;   // qkv: [wq; wk; wv] rows, gu: [gate; up] rows
};

class Engine final : public GpuSession {
 public:
  Engine(const Model& model, const GpuOptions& opt);
  ~Engine() override;

  const std::vector<float>& forward(const int32_t* tokens, int n, int logits_from,
                                    std::vector<TokenForwardStats>* stats, const uint8_t* bits) override;
  int n_tokens() const override { return kv_->n_tokens(); }
  const Model& model() const override { return model_; }
  const KvLayout& kv_layout() const override { return kv_->layout(); }
  void decide(int pos, int bits) override;
  void flush_window() override;
  void clear() override {
    pending_.clear();
    kv_->clear();
  }
  void truncate(int n) override {
    flush_window();
    kv_->truncate(n);
  }
  KvStats kv_stats() const override { return kv_->stats(); }
  int token_bits(int pos) const override { return kv_->bits_at(pos); }
  // The fp16 ring holds the newest tokens only: a rewind inside a residual window would read stale slots.
  bool rewinds_exactly() const override { return opt_.kv_residual == 0; }
  std::string device_name() const override {
    return "cuda (" + device_ + ", weights " + (use_q_ ? "q4_1" : "f16") + (opt_.graphs ? ", graphs" : "") +
           ")";
  }
  std::string memory_summary() const override;
  size_t device_engine_peak_bytes() const override { return mem_.peak(); }
  size_t device_used_peak_bytes() const override { return mem_.used_peak(); }

 private:
  template <typename T>
  T* dalloc(size_t count, MemKind kind, const char* what) {
    return static_cast<T*>(mem_.alloc(count * sizeof(T), kind, what));
  }
  float* upload_vec(const std::vector<float>& v);
  Mat upload_mat(const std::vector<const WeightView*>& parts);
  void gemv(GemvMode mode, const Mat& m, int rows, const float* x, const float* norm, const float* bias,
            float* y);
  void gemm(const Mat& m, const __half* x, int n, float* y, float beta);
  void enqueue_decode(int chunks);
  void decode_step(int32_t token, int pos, float* out, bool defer, bool want_stats);
  void prompt_batch(const int32_t* tokens, int n, int pos0, int from, float* out, bool defer,
                    bool want_stats);

  const Model& model_;
  GpuOptions opt_;
  ModelConfig c_;
  int q_dim_, kv_dim_, qkv_cols_, max_chunks_;
  bool use_q_ = false;
  std::string device_;
  DeviceMemory mem_;
  std::unique_ptr<GpuKv> kv_;
  cudaStream_t stream_ = nullptr;
  // Decode steps quantize their token into the pages on a side stream, joined at the step's end
  // ($KVDIAL_CUDA_SIDE_APPEND=0: in line, as the prompt path does).
  bool side_append_ = true;
  cudaStream_t side_ = nullptr;
  std::vector<cudaEvent_t> fork_;
  cudaEvent_t join_ = nullptr;
  cublasHandle_t blas_ = nullptr;
  std::vector<Layer> layers_;
  __half* emb_ = nullptr;
  Mat out_;
  float* out_norm_ = nullptr;
  float2* rope_ = nullptr;
  float *x_ = nullptr, *qkv_ = nullptr, *att_ = nullptr, *gu_ = nullptr, *h_ = nullptr, *logits_d_ = nullptr,
        *part_ = nullptr;
  __half *xh_ = nullptr, *atth_ = nullptr;
  StepParams* params_ = nullptr;
  DecodeParams* dparams_ = nullptr;
  DecodeParams* hparams_ = nullptr;  // pinned
  float* hlogits_ = nullptr;         // pinned, vocab floats
  int32_t* dtokens_ = nullptr;
  // Per-token statistics (policies that read features): device buffers of the kernels (KvDev), pinned
  // host copies, and the widths decided since the last flush (written to the pages by flush_window).
  float *stat_attn_ = nullptr, *stat_kv_ = nullptr, *hstat_attn_ = nullptr, *hstat_kv_ = nullptr;
  std::vector<DecidedToken> pending_;
  DecidedToken* dpending_ = nullptr;  // n_batch entries
  void copy_stats(int n);
  void token_stats(int n, std::vector<TokenForwardStats>& out) const;
  cudaGraphExec_t graph_ = nullptr;
  int graph_chunks_ = 0;
  std::vector<float> logits_;

  // $KVDIAL_CUDA_PROFILE=1: decode steps run eagerly with an event after each stage, and the mean time
  // per stage and step is printed to stderr when the engine ends (where the graph's time goes).
  enum Stage { kEmbed, kQkv, kRopeAppend, kAttention, kO, kGateUp, kDown, kOutput, kStages };
  void mark(Stage st);
  bool profile_ = false;
  std::vector<cudaEvent_t> events_;
  std::vector<int> event_stage_;
  size_t n_marks_ = 0;
  double stage_ms_[kStages] = {};
  int64_t profiled_steps_ = 0, profiled_keys_ = 0;
};

void Engine::mark(Stage st) {
  if (!profile_) return;
  if (n_marks_ == events_.size()) {
    cudaEvent_t e = nullptr;
    KVD_CUDA(cudaEventCreate(&e));
    events_.push_back(e);
    event_stage_.push_back(0);
  }
  KVD_CUDA(cudaEventRecord(events_[n_marks_], stream_));
  event_stage_[n_marks_] = st;  // the stage that ends at this event
  ++n_marks_;
}

Engine::Engine(const Model& model, const GpuOptions& opt) : model_(model), opt_(opt), c_(model.config()) {
  KVD_CUDA(cudaSetDevice(0));
  cudaDeviceProp prop{};
  KVD_CUDA(cudaGetDeviceProperties(&prop, 0));
  device_ = prop.name;
  q_dim_ = c_.n_heads * c_.head_dim;
  kv_dim_ = c_.n_kv_heads * c_.head_dim;
  qkv_cols_ = q_dim_ + 2 * kv_dim_;
  if (c_.dim % 8 || c_.ffn_dim % 8 || q_dim_ % 8)
    throw Error("cuda: model widths must be multiples of 8 (dim " + std::to_string(c_.dim) + ", ffn " +
                std::to_string(c_.ffn_dim) + ")");
  if (opt_.max_tokens <= 0) throw Error("context size must be positive");
  const char* env_w = std::getenv("KVDIAL_CUDA_WEIGHTS");
  std::string weights = opt_.weights.empty() ? (env_w ? env_w : "f16") : opt_.weights;
  if (weights != "f16" && weights != "q") throw Error("cuda weights '" + weights + "': use f16 or q");
  use_q_ = weights == "q";
  const char* env_g = std::getenv("KVDIAL_CUDA_GRAPHS");
  if (env_g && std::string(env_g) == "0") opt_.graphs = false;
  const char* env_p = std::getenv("KVDIAL_CUDA_PROFILE");
  profile_ = env_p && std::string(env_p) == "1";
  opt_.n_batch = std::max(1, opt_.n_batch);

  KVD_CUDA(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
  const char* env_s = std::getenv("KVDIAL_CUDA_SIDE_APPEND");
  side_append_ = !(env_s && std::string(env_s) == "0");
  KVD_CUDA(cudaStreamCreateWithFlags(&side_, cudaStreamNonBlocking));
  fork_.resize(static_cast<size_t>(c_.n_layers));
  for (cudaEvent_t& e : fork_) KVD_CUDA(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
  KVD_CUDA(cudaEventCreateWithFlags(&join_, cudaEventDisableTiming));
  blas_check(cublasCreate(&blas_), "cublasCreate");
  blas_check(cublasSetStream(blas_, stream_), "cublasSetStream");

  // Weights.
  const Weights& w = model.weights();
  const Mat emb = upload_mat({&w.token_embd});
  emb_ = emb.f16;
  out_ = c_.tied_output ? emb : upload_mat({&w.output});
  out_norm_ = upload_vec(w.output_norm);
  for (const LayerWeights& L : w.layers) {
    Layer g;
    g.attn_norm = upload_vec(L.attn_norm);
    g.ffn_norm = upload_vec(L.ffn_norm);
    if (!L.bq.empty() || !L.bk.empty() || !L.bv.empty()) {
      std::vector<float> b(static_cast<size_t>(qkv_cols_), 0.0f);
      std::copy(L.bq.begin(), L.bq.end(), b.begin());
      std::copy(L.bk.begin(), L.bk.end(), b.begin() + q_dim_);
      std::copy(L.bv.begin(), L.bv.end(), b.begin() + q_dim_ + kv_dim_);
      g.bqkv = upload_vec(b);
    }
    g.qkv = upload_mat({&L.wq, &L.wk, &L.wv});
    g.o = upload_mat({&L.wo});
    g.gu = upload_mat({&L.w_gate, &L.w_up});
    g.down = upload_mat({&L.w_down});
    layers_.push_back(g);
  }

  // RoPE table: the CPU's angles (model/ops_ref.h, double precision), rounded to float as it does.
  const int half = c_.rope_dim / 2;
  {
    std::vector<float2> cs(static_cast<size_t>(opt_.max_tokens) * half);
    for (int i = 0; i < half; ++i) {
      const double freq = std::pow(static_cast<double>(c_.rope_theta), -2.0 * i / c_.rope_dim);
      for (int p = 0; p < opt_.max_tokens; ++p)
        cs[static_cast<size_t>(p) * half + i] =
            make_float2(static_cast<float>(std::cos(p * freq)), static_cast<float>(std::sin(p * freq)));
    }
    rope_ = dalloc<float2>(cs.size(), MemKind::Work, "the RoPE table");
    KVD_CUDA(cudaMemcpy(rope_, cs.data(), cs.size() * sizeof(float2), cudaMemcpyHostToDevice));
  }

  // KV cache.
  KvLayout layout{c_.n_layers, c_.n_kv_heads, c_.head_dim, opt_.kv_group};
  layout.has_ladder = opt_.kv_has_ladder;
  layout.ladder = opt_.kv_ladder;
  kv_ = std::make_unique<GpuKv>(mem_, layout, opt_.max_tokens, opt_.kv_residual,
                                opt_.kv_residual + opt_.n_batch);
  max_chunks_ = (opt_.max_tokens + kAttnChunk - 1) / kAttnChunk;

  // Activations for n_batch tokens.
  const size_t B = static_cast<size_t>(opt_.n_batch);
  x_ = dalloc<float>(B * c_.dim, MemKind::Work, "activations");
  qkv_ = dalloc<float>(B * qkv_cols_, MemKind::Work, "activations");
  att_ = dalloc<float>(B * q_dim_, MemKind::Work, "activations");
  gu_ = dalloc<float>(B * 2 * c_.ffn_dim, MemKind::Work, "activations");
  h_ = dalloc<float>(static_cast<size_t>(c_.ffn_dim), MemKind::Work, "activations");
  xh_ = dalloc<__half>(B * std::max({c_.dim, q_dim_, c_.ffn_dim}), MemKind::Work, "activations");
  atth_ = dalloc<__half>(B * q_dim_, MemKind::Work, "activations");
  logits_d_ = dalloc<float>(B * c_.vocab, MemKind::Work, "logits");
  part_ = dalloc<float>(std::max(B * c_.n_heads * max_chunks_ * (c_.head_dim + 2),
                                 static_cast<size_t>(c_.n_heads) * kDecodeParts * (c_.head_dim + 3)),
                        MemKind::Work, "attention partials");
  const size_t n_attn_stats = B * c_.n_layers * c_.n_heads * 2, n_kv_stats = B * c_.n_layers * 2;
  stat_attn_ = dalloc<float>(n_attn_stats, MemKind::Work, "token statistics");
  stat_kv_ = dalloc<float>(n_kv_stats, MemKind::Work, "token statistics");
  KVD_CUDA(cudaMallocHost(&hstat_attn_, n_attn_stats * sizeof(float)));
  KVD_CUDA(cudaMallocHost(&hstat_kv_, n_kv_stats * sizeof(float)));
  kv_->set_stats(stat_attn_, stat_kv_, c_.n_heads);
  dpending_ = dalloc<DecidedToken>(B, MemKind::Work, "decided tokens");
  params_ = dalloc<StepParams>(1, MemKind::Work, "step parameters");
  dparams_ = dalloc<DecodeParams>(1, MemKind::Work, "step parameters");
  dtokens_ = dalloc<int32_t>(B, MemKind::Work, "tokens");
  KVD_CUDA(cudaMallocHost(&hparams_, sizeof(DecodeParams)));
  KVD_CUDA(cudaMallocHost(&hlogits_, static_cast<size_t>(c_.vocab) * sizeof(float)));
  KVD_CUDA(cudaStreamSynchronize(stream_));
  mem_.sample();
}

Engine::~Engine() {
  if (profile_ && profiled_steps_ > 0) {
    static const char* names[kStages] = {"embed",  "qkv gemv",     "rope+append", "attention",
                                         "o gemv", "gate/up gemv", "down gemv",   "output gemv"};
    double total = 0;
    for (double v : stage_ms_) total += v;
    std::fprintf(stderr,
                 "cuda profile: %lld decode steps (eager, events between stages), mean context %.0f keys\n",
                 static_cast<long long>(profiled_steps_),
                 static_cast<double>(profiled_keys_) / static_cast<double>(profiled_steps_));
    for (int i = 0; i < kStages; ++i)
      std::fprintf(stderr, "cuda profile:   %-13s %8.2f us/step  %5.1f%%  (%6.2f us per layer)\n", names[i],
                   1e3 * stage_ms_[i] / static_cast<double>(profiled_steps_), 100.0 * stage_ms_[i] / total,
                   1e3 * stage_ms_[i] / static_cast<double>(profiled_steps_) / c_.n_layers);
    std::fprintf(stderr, "cuda profile:   total         %8.2f us/step\n",
                 1e3 * total / static_cast<double>(profiled_steps_));
  }
  for (cudaEvent_t e : events_) cudaEventDestroy(e);
  if (graph_) cudaGraphExecDestroy(graph_);
  if (blas_) cublasDestroy(blas_);
  if (stream_) cudaStreamDestroy(stream_);
  if (side_) cudaStreamDestroy(side_);
  for (cudaEvent_t e : fork_) cudaEventDestroy(e);
  if (join_) cudaEventDestroy(join_);
  if (hparams_) cudaFreeHost(hparams_);
  if (hlogits_) cudaFreeHost(hlogits_);
  if (hstat_attn_) cudaFreeHost(hstat_attn_);
  if (hstat_kv_) cudaFreeHost(hstat_kv_);
}

float* Engine::upload_vec(const std::vector<float>& v) {
  float* d = dalloc<float>(v.size(), MemKind::Weights, "weights");
  KVD_CUDA(cudaMemcpy(d, v.data(), v.size() * sizeof(float), cudaMemcpyHostToDevice));
  return d;
}

Mat Engine::upload_mat(const std::vector<const WeightView*>& parts) {
  Mat m;
  m.cols = static_cast<int>(parts[0]->cols);
  bool all_q4_1 = true;
  for (const WeightView* p : parts) {
    KVD_ASSERT(p->cols == m.cols);
    m.rows += static_cast<int>(p->rows);
    all_q4_1 &= p->type == gguf::TensorType::Q4_1;
  }
  m.f16 = dalloc<__half>(static_cast<size_t>(m.rows) * m.cols, MemKind::Weights, "weights");
  std::vector<float> row(static_cast<size_t>(m.cols));
  std::vector<uint16_t> h(static_cast<size_t>(m.rows) * m.cols);
  size_t r0 = 0;
  for (const WeightView* p : parts) {
    for (int64_t r = 0; r < p->rows; ++r, ++r0) {
      ref::dequantize_row(p->type, p->data + r * p->row_bytes, row.data(), m.cols);
      for (int j = 0; j < m.cols; ++j) h[r0 * m.cols + j] = f2h(row[j]);
    }
  }
  KVD_CUDA(cudaMemcpy(m.f16, h.data(), h.size() * 2, cudaMemcpyHostToDevice));
  if (use_q_ && all_q4_1) {
    const size_t rb = parts[0]->row_bytes;
    m.q4_1 = dalloc<uint8_t>(static_cast<size_t>(m.rows) * rb, MemKind::Weights, "weights (q4_1)");
    size_t at = 0;
    for (const WeightView* p : parts) {
      KVD_CUDA(cudaMemcpy(m.q4_1 + at, p->data, p->rows * rb, cudaMemcpyHostToDevice));
      at += p->rows * rb;
    }
  }
  return m;
}

void Engine::gemv(GemvMode mode, const Mat& m, int rows, const float* x, const float* norm, const float* bias,
                  float* y) {
  if (m.q4_1)
    launch_gemv_q4_1(mode, m.q4_1, rows, m.cols, x, norm, c_.rms_eps, bias, y, stream_);
  else
    launch_gemv(mode, m.f16, rows, m.cols, x, norm, c_.rms_eps, bias, y, stream_);
}

// y (n x rows, row-major fp32) = x (n x cols, fp16) W^T + beta * y.
void Engine::gemm(const Mat& m, const __half* x, int n, float* y, float beta) {
  const float alpha = 1.0f;
  blas_check(
      cublasGemmEx(blas_, CUBLAS_OP_T, CUBLAS_OP_N, m.rows, n, m.cols, &alpha, m.f16, CUDA_R_16F, m.cols, x,
                   CUDA_R_16F, m.cols, &beta, y, CUDA_R_32F, m.rows, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
      "cublasGemmEx");
}

void Engine::enqueue_decode(int chunks) {
  KVD_CUDA(cudaMemcpyAsync(dparams_, hparams_, sizeof(DecodeParams), cudaMemcpyHostToDevice, stream_));
  const KvDev& kv = kv_->dev();
  const StepParams* P = &dparams_->step;
  n_marks_ = 0;
  mark(kEmbed);  // the first event starts the step
  launch_embed(emb_, c_.dim, &dparams_->token, 1, x_, dparams_, kv, stream_);
  mark(kEmbed);
  const bool halves = c_.rope_style == RopeStyle::Halves;
  for (int l = 0; l < c_.n_layers; ++l) {
    const Layer& L = layers_[static_cast<size_t>(l)];
    gemv(GemvMode::Store, L.qkv, L.qkv.rows, x_, L.attn_norm, L.bqkv, qkv_);
    mark(kQkv);
    if (side_append_) {
      launch_rope_ring(kv, l, qkv_, c_.n_heads, c_.rope_dim, halves, rope_, P, 1, stream_);
      KVD_CUDA(cudaEventRecord(fork_[static_cast<size_t>(l)], stream_));
      KVD_CUDA(cudaStreamWaitEvent(side_, fork_[static_cast<size_t>(l)], 0));
      launch_append_pages(kv, l, P, 1, side_);
    } else {
      launch_rope_append(kv, l, qkv_, c_.n_heads, c_.rope_dim, halves, rope_, P, 1, stream_);
    }
    mark(kRopeAppend);
    launch_attention(kv, l, qkv_, qkv_cols_, c_.n_heads, P, 1, chunks, part_, att_, nullptr, stream_);
    mark(kAttention);
    gemv(GemvMode::Add, L.o, L.o.rows, att_, nullptr, nullptr, x_);
    mark(kO);
    gemv(GemvMode::SwiGlu, L.gu, c_.ffn_dim, x_, L.ffn_norm, nullptr, h_);
    mark(kGateUp);
    gemv(GemvMode::Add, L.down, L.down.rows, h_, nullptr, nullptr, x_);
    mark(kDown);
  }
  gemv(GemvMode::Store, out_, c_.vocab, x_, out_norm_, nullptr, logits_d_);
  if (side_append_) {  // the pages are complete when the step is
    KVD_CUDA(cudaEventRecord(join_, side_));
    KVD_CUDA(cudaStreamWaitEvent(stream_, join_, 0));
  }
  KVD_CUDA(cudaMemcpyAsync(hlogits_, logits_d_, static_cast<size_t>(c_.vocab) * sizeof(float),
                           cudaMemcpyDeviceToHost, stream_));
  mark(kOutput);
}

void Engine::decode_step(int32_t token, int pos, float* out, bool defer, bool want_stats) {
  hparams_->step = StepParams{pos, 1, defer ? pos : 0x7fffffff, defer ? 1 : 0, want_stats ? 1 : 0};
  hparams_->token = token;
  hparams_->cls = kv_->cls_at(pos);
  hparams_->loc = kv_->loc_at(pos);
  const int need = pos / kAttnChunk + 1;
  if (opt_.graphs && !profile_) {
    if (!graph_ || need > graph_chunks_) {
      if (graph_) cudaGraphExecDestroy(graph_);
      graph_ = nullptr;
      graph_chunks_ = std::min(max_chunks_, std::max(need, 2 * graph_chunks_));
      cudaGraph_t g = nullptr;
      KVD_CUDA(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal));
      enqueue_decode(graph_chunks_);
      KVD_CUDA(cudaStreamEndCapture(stream_, &g));
      KVD_CUDA(cudaGraphInstantiate(&graph_, g, 0));
      cudaGraphDestroy(g);
    }
    KVD_CUDA(cudaGraphLaunch(graph_, stream_));
  } else {
    enqueue_decode(need);
  }
  if (want_stats) copy_stats(1);
  KVD_CUDA(cudaStreamSynchronize(stream_));
  KVD_CUDA_LAUNCH("decode step");
  if (profile_ && n_marks_ > 1) {
    for (size_t k = 1; k < n_marks_; ++k) {
      float ms = 0;
      KVD_CUDA(cudaEventElapsedTime(&ms, events_[k - 1], events_[k]));
      stage_ms_[event_stage_[k]] += ms;
    }
    ++profiled_steps_;
    profiled_keys_ += pos + 1;
  }
  if (out) std::memcpy(out, hlogits_, static_cast<size_t>(c_.vocab) * sizeof(float));
}

void Engine::prompt_batch(const int32_t* tokens, int n, int pos0, int from, float* out, bool defer,
                          bool want_stats) {
  const StepParams p{pos0, n, defer ? pos0 : 0x7fffffff, defer ? 1 : 0, want_stats ? 1 : 0};
  KVD_CUDA(cudaMemcpyAsync(params_, &p, sizeof p, cudaMemcpyHostToDevice, stream_));
  KVD_CUDA(cudaMemcpyAsync(dtokens_, tokens, static_cast<size_t>(n) * 4, cudaMemcpyHostToDevice, stream_));
  const KvDev& kv = kv_->dev();
  launch_embed(emb_, c_.dim, dtokens_, n, x_, nullptr, kv, stream_);
  const bool halves = c_.rope_style == RopeStyle::Halves;
  const int chunks = (pos0 + n - 1) / kAttnChunk + 1;
  for (int l = 0; l < c_.n_layers; ++l) {
    const Layer& L = layers_[static_cast<size_t>(l)];
    launch_rmsnorm_half(x_, L.attn_norm, n, c_.dim, c_.rms_eps, xh_, stream_);
    gemm(L.qkv, xh_, n, qkv_, 0.0f);
    if (L.bqkv) launch_add_bias(qkv_, L.bqkv, n, qkv_cols_, stream_);
    launch_rope_append(kv, l, qkv_, c_.n_heads, c_.rope_dim, halves, rope_, params_, n, stream_);
    launch_attention(kv, l, qkv_, qkv_cols_, c_.n_heads, params_, n, chunks, part_, att_, atth_, stream_);
    gemm(L.o, atth_, n, x_, 1.0f);
    launch_rmsnorm_half(x_, L.ffn_norm, n, c_.dim, c_.rms_eps, xh_, stream_);
    gemm(L.gu, xh_, n, gu_, 0.0f);
    launch_swiglu_half(gu_, n, c_.ffn_dim, xh_, stream_);
    gemm(L.down, xh_, n, x_, 1.0f);
  }
  const int n_out = n - from;
  if (n_out > 0) {
    launch_rmsnorm_half(x_ + static_cast<size_t>(from) * c_.dim, out_norm_, n_out, c_.dim, c_.rms_eps, xh_,
                        stream_);
    gemm(out_, xh_, n_out, logits_d_, 0.0f);
    KVD_CUDA(cudaMemcpyAsync(out, logits_d_, static_cast<size_t>(n_out) * c_.vocab * sizeof(float),
                             cudaMemcpyDeviceToHost, stream_));
  }
  if (want_stats) copy_stats(n);
  KVD_CUDA(cudaStreamSynchronize(stream_));
  KVD_CUDA_LAUNCH("prompt batch");
}

const std::vector<float>& Engine::forward(const int32_t* tokens, int n, int logits_from,
                                          std::vector<TokenForwardStats>* stats, const uint8_t* bits) {
  const int vocab = c_.vocab;
  KVD_ASSERT(logits_from >= 0 && logits_from <= n);
  for (int i = 0; i < n; ++i)
    if (tokens[i] < 0 || tokens[i] >= vocab)
      throw Error("token id " + std::to_string(tokens[i]) + " is outside the vocabulary (" +
                  std::to_string(vocab) + ")");
  if (stats && !decode_attention_supported(c_.head_dim, c_.n_heads / c_.n_kv_heads))
    throw Error(
        "cuda: attention statistics (policies that read features) are not computed for head dimension " +
        std::to_string(c_.head_dim) + " with " + std::to_string(c_.n_heads / c_.n_kv_heads) +
        " query heads per KV head");
  flush_window();  // widths decided since the last forward reach the pages first
  // Without widths the tokens are undecided: they read each other at fp16 from the ring, and their
  // page records are written when decide() and flush_window() give their widths (as on the CPU).
  const bool defer = bits == nullptr;
  if (stats) stats->clear();
  logits_.resize(static_cast<size_t>(n - logits_from) * vocab);
  for (int b = 0; b < n; b += opt_.n_batch) {
    const int nb = std::min(opt_.n_batch, n - b);
    const int from = std::clamp(logits_from - b, 0, nb);
    float* out = logits_.data() + static_cast<size_t>(std::max(0, b - logits_from)) * vocab;
    const int pos0 = kv_->begin(defer ? nullptr : bits + b, nb, nb > 1, stream_);
    if (nb == 1)
      decode_step(tokens[b], pos0, from == 0 ? out : nullptr, defer, stats != nullptr);
    else
      prompt_batch(tokens + b, nb, pos0, from, out, defer, stats != nullptr);
    if (stats) token_stats(nb, *stats);
  }
  mem_.sample();
  return logits_;
}

// The forward statistics of the last batch's n tokens, as the CPU's Session reports them (means over
// layers and heads).
void Engine::token_stats(int n, std::vector<TokenForwardStats>& out) const {
  const int L = c_.n_layers, H = c_.n_heads;
  for (int i = 0; i < n; ++i) {
    TokenForwardStats st;
    double var = 0, mx = 0;
    for (int l = 0; l < L; ++l) {
      const float* a = hstat_attn_ + (static_cast<size_t>(i) * L + l) * H * 2;
      for (int h = 0; h < H; ++h) {
        mx += a[2 * h];
        var += a[2 * h + 1];
      }
      const float* kv = hstat_kv_ + (static_cast<size_t>(i) * L + l) * 2;
      st.k_norm += std::sqrt(kv[0]) / static_cast<float>(L);
      st.v_norm += std::sqrt(kv[1]) / static_cast<float>(L);
    }
    st.attn_max = static_cast<float>(mx / (L * H));
    st.attn_var = static_cast<float>(var / (L * H));
    out.push_back(st);
  }
}

// The statistics of the last batch's n tokens to the pinned host copies (on the stream; the caller syncs).
void Engine::copy_stats(int n) {
  const size_t L = static_cast<size_t>(c_.n_layers), H = static_cast<size_t>(c_.n_heads);
  KVD_CUDA(cudaMemcpyAsync(hstat_attn_, stat_attn_, static_cast<size_t>(n) * L * H * 2 * sizeof(float),
                           cudaMemcpyDeviceToHost, stream_));
  KVD_CUDA(cudaMemcpyAsync(hstat_kv_, stat_kv_, static_cast<size_t>(n) * L * 2 * sizeof(float),
                           cudaMemcpyDeviceToHost, stream_));
}

void Engine::decide(int pos, int bits) {
  if (pos < 0 || pos >= kv_->n_tokens())
    throw Error("cuda: decide: position " + std::to_string(pos) + " is not in the cache");
  if (kv_->decided(pos)) {
    if (kv_->cls_at(pos) != kv_->class_of(bits))
      throw Error("cuda: the KV width of position " + std::to_string(pos) + " was already decided");
    return;
  }
  DecidedToken t{pos, 0, 0};
  kv_->assign(pos, bits, &t.cls, &t.loc);
  pending_.push_back(t);
}

void Engine::flush_window() {
  const size_t B = static_cast<size_t>(opt_.n_batch);
  for (size_t at = 0; at < pending_.size(); at += B) {
    const size_t m = std::min(B, pending_.size() - at);
    // From pageable memory: staged before the call returns, so pending_ may change after; the next
    // chunk's copy into the same device array waits for this kernel in stream order.
    KVD_CUDA(cudaMemcpyAsync(dpending_, pending_.data() + at, m * sizeof(DecidedToken),
                             cudaMemcpyHostToDevice, stream_));
    launch_decide_tokens(kv_->dev(), dpending_, static_cast<int>(m), stream_);
    KVD_CUDA_LAUNCH("decide tokens");
  }
  pending_.clear();
}

std::string Engine::memory_summary() const {
  return "VRAM: engine peak " + mib(static_cast<double>(mem_.peak())) + " (weights " +
         mib(static_cast<double>(mem_.peak_of(MemKind::Weights))) + ", KV " +
         mib(static_cast<double>(mem_.peak_of(MemKind::Kv))) + ", work " +
         mib(static_cast<double>(mem_.peak_of(MemKind::Work))) + "); device used peak " +
         mib(static_cast<double>(mem_.used_peak())) + " of " + mib(static_cast<double>(mem_.total())) +
         " (cudaMemGetInfo; " + mib(static_cast<double>(mem_.used_before())) + " in use before the engine)";
}

}  // namespace

std::unique_ptr<GpuSession> make_gpu_session(const Model& model, const GpuOptions& options) {
  std::string why;
  if (!gpu_available(&why)) throw Error("--device cuda: " + why);
  return std::make_unique<Engine>(model, options);
}

}  // namespace kvd::cuda
