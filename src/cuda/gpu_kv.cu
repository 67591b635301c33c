// GPU KV cache, host side: device memory accounting, pages and token tables, and the test probe.
#include <algorithm>
#include <cstring>

#include "cuda/gpu_kv.cuh"
#include "cuda/gpu_kv.h"

namespace kvd::cuda {

// ---- DeviceMemory ----

DeviceMemory::DeviceMemory() {
  size_t free = 0, total = 0;
  KVD_CUDA(cudaMemGetInfo(&free, &total));
  total_ = total;
  min_free_ = free;
  used_before_ = total - free;
}

DeviceMemory::~DeviceMemory() {
  for (auto& [p, b] : blocks_) cudaFree(p);
}

void DeviceMemory::sample() {
  size_t free = 0, total = 0;
  if (cudaMemGetInfo(&free, &total) == cudaSuccess) min_free_ = std::min(min_free_, free);
}

void* DeviceMemory::alloc(size_t bytes, MemKind kind, const char* what) {
  void* p = nullptr;
  const cudaError_t e = cudaMalloc(&p, std::max<size_t>(bytes, 1));
  if (e != cudaSuccess) {
    cudaGetLastError();
    size_t free = 0, total = 0;
    cudaMemGetInfo(&free, &total);
    throw Error("cuda: cannot allocate " + std::to_string(bytes) + " bytes for " + what + " (" +
                std::to_string(free >> 20) + " MiB free of " + std::to_string(total >> 20) +
                " MiB): " + cudaGetErrorString(e));
  }
  blocks_[p] = {bytes, kind};
  now_ += bytes;
  peak_ = std::max(peak_, now_);
  const int k = static_cast<int>(kind);
  by_kind_[k] += bytes;
  peak_by_kind_[k] = std::max(peak_by_kind_[k], by_kind_[k]);
  sample();
  return p;
}

void DeviceMemory::free(void* p) {
  auto it = blocks_.find(p);
  if (it == blocks_.end()) return;
  now_ -= it->second.bytes;
  by_kind_[static_cast<int>(it->second.kind)] -= it->second.bytes;
  blocks_.erase(it);
  cudaFree(p);
}

// ---- KvPagePool ----

KvPagePool::KvPagePool(DeviceMemory& mem, const KvPageGeom& geom, int capacity)
    : KvPagePoolBase(geom), mem_(mem), capacity_(capacity) {
  table_ = static_cast<uint8_t**>(
      mem.alloc(static_cast<size_t>(capacity) * sizeof(uint8_t*), MemKind::Kv, "the KV page table"));
}

void KvPagePool::create_page(int cls) {
  if (n_pages() >= capacity_)
    throw Error("cuda: the KV page pool is full (" + std::to_string(capacity_) + " pages)");
  uint8_t* data = static_cast<uint8_t*>(mem_.alloc(geom_.page_bytes(cls), MemKind::Kv, "a KV page"));
  KVD_CUDA(cudaMemcpy(table_ + n_pages(), &data, sizeof data, cudaMemcpyHostToDevice));
  ptr_.push_back(data);
}

// Every slot empty (kEmptySlot is what a 0x7f fill leaves).
void KvPagePool::empty_header(int p) { KVD_CUDA(cudaMemset(page(p), 0x7f, geom_.header_bytes())); }

// ---- GpuKv ----

GpuKv::GpuKv(DeviceMemory& mem, const KvLayout& layout, int max_tokens, int residual, int ring,
             KvPagePool* pool)
    : mem_(mem), layout_(layout), max_tokens_(max_tokens), residual_(residual), seq_(kPageShift) {
  if (layout.group <= 0 || layout.head_dim % layout.group != 0 || layout.group % 4 != 0)
    throw Error("--kv-group " + std::to_string(layout.group) + " must divide the head dimension (" +
                std::to_string(layout.head_dim) + ") and be a multiple of 4");
  if (layout.head_dim != 64 && layout.head_dim != 128)
    throw Error("cuda: head dimension " + std::to_string(layout.head_dim) +
                " is not supported (64, 128 are)");
  KvDev& d = dev_;
  d.n_layers = layout.n_layers;
  d.n_kv_heads = layout.n_kv_heads;
  d.head_dim = layout.head_dim;
  d.kv_dim = layout.kv_dim();
  d.residual = residual;
  d.ring = ring;
  const int widths[] = {2, 4, 8, 16};
  d.n_classes = 4;
  for (int c = 0; c < 4; ++c) {
    KvClass& k = d.cls[c];
    const KvSetting st = layout.setting(widths[c]);  // the ladder's setting of the class, if any
    if (st.kbits != st.vbits || !kv_bits_valid(st.kbits) || (st.kbits != 16 && st.kgroup != st.vgroup))
      throw Error("cuda: the GPU cache stores K = V at 2, 4, 8 or 16 bits in one group; class " +
                  std::to_string(widths[c]) + " is K" + std::to_string(st.kbits) + "V" +
                  std::to_string(st.vbits));
    k.k_bits = k.v_bits = st.kbits;
    k.group = st.kbits == 16 ? layout.group : st.kgroup;
    k.k_row_bytes = kv_row_bytes(k.k_bits, k.group, d.kv_dim);
    k.v_row_bytes = kv_row_bytes(k.v_bits, k.group, d.kv_dim);
    bits_of_class_[c] = widths[c];
  }
  d.geom = make_page_geom(layout, kPageShift);
  // Per class at most one partly filled page: max_tokens / P + 1 pages each.
  // The decode kernel reads entry blockIdx.x before it knows the count: at least kDecodeParts entries.
  block_capacity_ = std::max(kDecodeParts, 4 * (max_tokens / d.geom.page_tokens() + 1));
  if (!pool) {
    own_pool_ = std::make_unique<KvPagePool>(mem, d.geom, block_capacity_);
    pool = own_pool_.get();
  }
  pool_ = pool;
  d.pages = pool->device_table();
  const size_t ring_bytes = static_cast<size_t>(layout.n_layers) * ring * d.kv_dim * sizeof(uint16_t);
  d.ring_k = static_cast<uint16_t*>(mem.alloc(ring_bytes, MemKind::Kv, "the KV fp16 ring"));
  d.ring_v = static_cast<uint16_t*>(mem.alloc(ring_bytes, MemKind::Kv, "the KV fp16 ring"));
  d.tok_loc =
      static_cast<uint32_t*>(mem.alloc(static_cast<size_t>(max_tokens) * 4, MemKind::Kv, "KV token table"));
  d.tok_cls =
      static_cast<uint8_t*>(mem.alloc(static_cast<size_t>(max_tokens), MemKind::Kv, "KV token table"));
  KVD_CUDA(cudaMemset(d.tok_loc, 0, static_cast<size_t>(max_tokens) * 4));
  KVD_CUDA(cudaMemset(d.tok_cls, 0, static_cast<size_t>(max_tokens)));
  block_ = static_cast<KvPageRef*>(
      mem.alloc(static_cast<size_t>(block_capacity_) * sizeof(KvPageRef), MemKind::Kv, "the KV block table"));
  n_block_ = static_cast<int*>(mem.alloc(sizeof(int), MemKind::Kv, "the KV block table"));
  KVD_CUDA(cudaMemset(n_block_, 0, sizeof(int)));
  d.block = block_;
  d.n_block = n_block_;
  prepare_attention_kernels();
  d.attn_counters = static_cast<int*>(
      mem.alloc(static_cast<size_t>(layout.n_kv_heads) * sizeof(int), MemKind::Work, "attention counters"));
  KVD_CUDA(cudaMemset(d.attn_counters, 0, static_cast<size_t>(layout.n_kv_heads) * sizeof(int)));
}

GpuKv::~GpuKv() {
  if (pool_ && !own_pool_) seq_.clear(*pool_);  // a shared pool gets the pages back
}

int GpuKv::class_of(int bits) const {
  for (int c = 0; c < dev_.n_classes; ++c)
    if (bits_of_class_[c] == bits) return c;
  throw Error("KV bit-width " + std::to_string(bits) + " is not one of 2, 4, 8, 16");
}

uint32_t GpuKv::place(int cls) {
  const uint32_t loc = seq_.place(cls, *pool_);
  upload_block();
  return loc;
}

void GpuKv::upload_block() {
  if (!seq_.block_changed()) return;
  const std::vector<int>& pages = seq_.block_table();
  KVD_ASSERT(static_cast<int>(pages.size()) <= block_capacity_);
  std::vector<KvPageRef> refs(pages.size());
  for (size_t i = 0; i < pages.size(); ++i) {
    refs[i].data = pool_->page(pages[i]);
    refs[i].cls = pool_->page_class(pages[i]);
  }
  if (!refs.empty())
    KVD_CUDA(cudaMemcpy(block_, refs.data(), refs.size() * sizeof(KvPageRef), cudaMemcpyHostToDevice));
  const int n = static_cast<int>(refs.size());
  KVD_CUDA(cudaMemcpy(n_block_, &n, sizeof n, cudaMemcpyHostToDevice));
  // These copies and the pool's header fills run on the legacy stream, which the engine's non-blocking
  // streams do not wait for: finish them before the next kernel reads the tables (rare: once a page).
  KVD_CUDA(cudaDeviceSynchronize());
  seq_.mark_uploaded();
}

int GpuKv::begin(const uint8_t* bits, int n, bool upload, cudaStream_t s) {
  if (n < 0 || n_tokens_ + n > max_tokens_)
    throw Error("context full: " + std::to_string(n_tokens_) + " + " + std::to_string(n) +
                " tokens exceed the context size " + std::to_string(max_tokens_) + " (raise -c)");
  if (bits && n_decided_ != n_tokens_)
    throw Error("cuda: tokens with widths given in advance after undecided ones (decide them first)");
  const int first = n_tokens_;
  cls_.resize(static_cast<size_t>(first + n));
  loc_.resize(static_cast<size_t>(first + n));
  for (int i = 0; i < n; ++i) {
    if (!bits) {
      cls_[static_cast<size_t>(first + i)] = kUndecided;
      loc_[static_cast<size_t>(first + i)] = 0;
      continue;
    }
    const int c = class_of(bits[i]);
    cls_[static_cast<size_t>(first + i)] = static_cast<uint8_t>(c);
    loc_[static_cast<size_t>(first + i)] = place(c);
  }
  n_tokens_ += n;
  if (bits) n_decided_ = n_tokens_;
  if (upload && n > 0) {
    KVD_CUDA(cudaMemcpyAsync(dev_.tok_cls + first, cls_.data() + first, static_cast<size_t>(n),
                             cudaMemcpyHostToDevice, s));
    KVD_CUDA(cudaMemcpyAsync(dev_.tok_loc + first, loc_.data() + first, static_cast<size_t>(n) * 4,
                             cudaMemcpyHostToDevice, s));
  }
  return first;
}

void GpuKv::assign(int pos, int bits, uint8_t* cls, uint32_t* loc) {
  if (pos != n_decided_ || pos >= n_tokens_)
    throw Error("cuda: KV widths are decided in position order (position " + std::to_string(pos) +
                ", next undecided " + std::to_string(n_decided_) + ")");
  *cls = static_cast<uint8_t>(class_of(bits));
  *loc = place(*cls);
  cls_[static_cast<size_t>(pos)] = *cls;
  loc_[static_cast<size_t>(pos)] = *loc;
  ++n_decided_;
}

void GpuKv::clear() {
  seq_.clear(*pool_);
  upload_block();
  n_tokens_ = 0;
  n_decided_ = 0;
  cls_.clear();
  loc_.clear();
}

void GpuKv::truncate(int n) {
  if (n >= n_tokens_) return;
  n = std::max(n, 0);
  if (n < n_decided_) {
    // Tokens of a class fill its pages in position order: keep each class's tokens below n.
    std::array<int, 4> keep{};
    for (int pos = 0; pos < n; ++pos) keep[cls_[static_cast<size_t>(pos)]]++;
    const std::vector<KvSeqPages::SlotRange> emptied = seq_.truncate(keep, *pool_);
    for (const KvSeqPages::SlotRange& r : emptied)
      KVD_CUDA(cudaMemset(pool_->page(r.page) + 4 * static_cast<size_t>(r.slot0), 0x7f,
                          4 * static_cast<size_t>(r.count)));
    if (seq_.block_changed())
      upload_block();  // waits for the header fills too
    else if (!emptied.empty())
      KVD_CUDA(cudaDeviceSynchronize());
    n_decided_ = n;
  }
  n_tokens_ = n;
  cls_.resize(static_cast<size_t>(n));
  loc_.resize(static_cast<size_t>(n));
}

KvStats GpuKv::stats() const {
  KvStats st;
  st.tokens = n_tokens_;
  size_t stored = 0;
  for (int pos = 0; pos < n_tokens_; ++pos) {
    const uint8_t c = cls_[static_cast<size_t>(pos)];
    const int bits = c == kUndecided ? 16 : bits_of_class_[c];  // undecided count at 16, as on the CPU
    st.tokens_at_bits[bits]++;
    stored += layout_.token_bytes(bits) * layout_.n_layers;
  }
  st.bytes_stored = stored;
  size_t pages = 0;
  for (int c = 0; c < 4; ++c) pages += seq_.pages_of(c).size() * dev_.geom.page_bytes(c);
  st.bytes_allocated =
      pages + 2 * static_cast<size_t>(layout_.n_layers) * dev_.ring * dev_.kv_dim * sizeof(uint16_t);
  const double elems = 2.0 * layout_.kv_dim() * layout_.n_layers * static_cast<double>(n_tokens_);
  st.effective_bits = elems > 0 ? 8.0 * static_cast<double>(stored) / elems : 0;
  return st;
}

std::vector<uint8_t> GpuKv::record(int layer, int pos) const {
  KVD_ASSERT(pos >= 0 && pos < n_decided_ && layer >= 0 && layer < layout_.n_layers);
  const int c = cls_[static_cast<size_t>(pos)];
  std::vector<uint8_t> out(layout_.token_bytes(bits_of_class_[c]));
  const uint32_t loc = loc_[static_cast<size_t>(pos)];
  const uint8_t* src =
      pool_->page(dev_.geom.page_of(loc)) + dev_.geom.record_offset(c, layer, dev_.geom.slot_of(loc));
  KVD_CUDA(cudaMemcpy(out.data(), src, out.size(), cudaMemcpyDeviceToHost));
  return out;
}

// ---- availability and the probe ----

bool gpu_available(std::string* why) {
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess || n == 0) {
    if (why)
      *why = e != cudaSuccess ? std::string("no usable CUDA device: ") + cudaGetErrorString(e)
                              : "no CUDA device";
    cudaGetLastError();
    return false;
  }
  return true;
}

struct KvProbe::Impl {
  DeviceMemory mem;
  KvLayout layout;
  int n_heads, max_batch;
  GpuKv kv;
  cudaStream_t stream = nullptr;
  float* qkv = nullptr;
  float* q = nullptr;
  float* out = nullptr;
  float* part = nullptr;
  float2* rope = nullptr;  // identity rotation
  StepParams* params = nullptr;
  float *stat_attn = nullptr, *stat_kv = nullptr;
  uint8_t* flush = nullptr;  // time_attend's L2 flush buffer
  int max_chunks;
  int pos0 = 0, last_n = 0;
  Impl(const KvLayout& l, int nh, int max_tokens, int residual, int mb)
      : layout(l),
        n_heads(nh),
        max_batch(mb),
        kv(mem, l, max_tokens, residual, residual + mb),
        max_chunks((max_tokens + kAttnChunk - 1) / kAttnChunk) {
    KVD_CUDA(cudaStreamCreate(&stream));
    const size_t row = static_cast<size_t>(nh) * l.head_dim + 2 * l.kv_dim();
    qkv = static_cast<float*>(mem.alloc(mb * row * 4, MemKind::Work, "probe qkv"));
    q = static_cast<float*>(
        mem.alloc(static_cast<size_t>(mb) * nh * l.head_dim * 4, MemKind::Work, "probe q"));
    out = static_cast<float*>(
        mem.alloc(static_cast<size_t>(mb) * nh * l.head_dim * 4, MemKind::Work, "probe out"));
    part =
        static_cast<float*>(mem.alloc(std::max(static_cast<size_t>(mb) * nh * max_chunks * (l.head_dim + 2),
                                               static_cast<size_t>(nh) * kDecodeParts * (l.head_dim + 3)) *
                                          4,
                                      MemKind::Work, "probe part"));
    const size_t nrope = static_cast<size_t>(max_tokens) * (l.head_dim / 2);
    rope = static_cast<float2*>(mem.alloc(nrope * sizeof(float2), MemKind::Work, "probe rope"));
    std::vector<float2> id(nrope, make_float2(1.0f, 0.0f));
    KVD_CUDA(cudaMemcpy(rope, id.data(), nrope * sizeof(float2), cudaMemcpyHostToDevice));
    params = static_cast<StepParams*>(mem.alloc(sizeof(StepParams), MemKind::Work, "probe params"));
    const size_t n_stats = static_cast<size_t>(mb) * l.n_layers * nh * 2;
    stat_attn = static_cast<float*>(mem.alloc(n_stats * 4, MemKind::Work, "probe stats"));
    stat_kv = static_cast<float*>(
        mem.alloc(static_cast<size_t>(mb) * l.n_layers * 2 * 4, MemKind::Work, "probe stats"));
    kv.set_stats(stat_attn, stat_kv, nh);
  }
  ~Impl() { cudaStreamDestroy(stream); }
};

KvProbe::KvProbe(const KvLayout& layout, int n_heads, int max_tokens, int residual, int max_batch)
    : impl_(std::make_unique<Impl>(layout, n_heads, max_tokens, residual, max_batch)) {}
KvProbe::~KvProbe() = default;

void KvProbe::append(const float* k, const float* v, const uint8_t* bits, int n) {
  Impl& m = *impl_;
  KVD_ASSERT(n > 0 && n <= m.max_batch);
  const int kv_dim = m.layout.kv_dim(), q_dim = m.n_heads * m.layout.head_dim;
  const size_t row = static_cast<size_t>(q_dim) + 2 * kv_dim;
  m.pos0 = m.kv.begin(bits, n, true, m.stream);
  m.last_n = n;
  const StepParams p{m.pos0, n};
  KVD_CUDA(cudaMemcpyAsync(m.params, &p, sizeof p, cudaMemcpyHostToDevice, m.stream));
  std::vector<float> h(static_cast<size_t>(n) * row, 0.0f);
  for (int l = 0; l < m.layout.n_layers; ++l) {
    for (int i = 0; i < n; ++i) {
      const size_t src = (static_cast<size_t>(i) * m.layout.n_layers + l) * kv_dim;
      std::memcpy(&h[i * row + q_dim], k + src, kv_dim * 4);
      std::memcpy(&h[i * row + q_dim + kv_dim], v + src, kv_dim * 4);
    }
    KVD_CUDA(cudaMemcpyAsync(m.qkv, h.data(), h.size() * 4, cudaMemcpyHostToDevice, m.stream));
    // rope_dim 0: no rotation at all (an identity rotation would still turn -0 into +0).
    launch_rope_append(m.kv.dev(), l, m.qkv, m.n_heads, 0, false, m.rope, m.params, n, m.stream);
    KVD_CUDA_LAUNCH("rope_append");
    KVD_CUDA(cudaStreamSynchronize(m.stream));
  }
}

void KvProbe::attend(int layer, const float* q, int n, float* out, float* stats) {
  Impl& m = *impl_;
  KVD_ASSERT(n == m.last_n);
  const size_t qn = static_cast<size_t>(n) * m.n_heads * m.layout.head_dim;
  const StepParams p{m.pos0, n, 0x7fffffff, 0, stats ? 1 : 0};
  KVD_CUDA(cudaMemcpyAsync(m.params, &p, sizeof p, cudaMemcpyHostToDevice, m.stream));
  KVD_CUDA(cudaMemcpyAsync(m.q, q, qn * 4, cudaMemcpyHostToDevice, m.stream));
  launch_attention(m.kv.dev(), layer, m.q, m.n_heads * m.layout.head_dim, m.n_heads, m.params, n,
                   m.max_chunks, m.part, m.out, nullptr, m.stream);
  KVD_CUDA_LAUNCH("attention");
  KVD_CUDA(cudaMemcpyAsync(out, m.out, qn * 4, cudaMemcpyDeviceToHost, m.stream));
  if (stats) {
    // stat_attn is [i][layer][head][2]: this layer's rows of the n queries.
    const size_t row = static_cast<size_t>(m.n_heads) * 2 * sizeof(float);
    KVD_CUDA(cudaMemcpy2DAsync(stats, row, m.stat_attn + static_cast<size_t>(layer) * m.n_heads * 2,
                               row * m.layout.n_layers, row, static_cast<size_t>(n), cudaMemcpyDeviceToHost,
                               m.stream));
  }
  KVD_CUDA(cudaStreamSynchronize(m.stream));
}

double KvProbe::time_attend(int layer, const float* q, int iters, bool cold, float* out) {
  Impl& m = *impl_;
  const int n = m.last_n;
  const size_t qn = static_cast<size_t>(n) * m.n_heads * m.layout.head_dim;
  const StepParams p{m.pos0, n};
  KVD_CUDA(cudaMemcpyAsync(m.params, &p, sizeof p, cudaMemcpyHostToDevice, m.stream));
  KVD_CUDA(cudaMemcpyAsync(m.q, q, qn * 4, cudaMemcpyHostToDevice, m.stream));
  const size_t flush_bytes = size_t{256} << 20;  // several times L2
  if (cold && !m.flush) m.flush = static_cast<uint8_t*>(m.mem.alloc(flush_bytes, MemKind::Work, "L2 flush"));
  cudaEvent_t e0, e1;
  KVD_CUDA(cudaEventCreate(&e0));
  KVD_CUDA(cudaEventCreate(&e1));
  auto launch = [&] {
    launch_attention(m.kv.dev(), layer, m.q, m.n_heads * m.layout.head_dim, m.n_heads, m.params, n,
                     m.max_chunks, m.part, m.out, nullptr, m.stream);
  };
  double total_ms = 0;
  if (!cold) {  // back to back: the GPU never waits for the host between calls
    launch();
    KVD_CUDA(cudaEventRecord(e0, m.stream));
    for (int it = 0; it < iters; ++it) launch();
    KVD_CUDA(cudaEventRecord(e1, m.stream));
    KVD_CUDA(cudaEventSynchronize(e1));
    KVD_CUDA_LAUNCH("attention");
    float ms = 0;
    KVD_CUDA(cudaEventElapsedTime(&ms, e0, e1));
    total_ms = ms;
  }
  for (int it = 0; cold && it <= iters; ++it) {  // the first call warms up; the fill keeps the GPU busy
    KVD_CUDA(cudaMemsetAsync(m.flush, it & 0xff, flush_bytes, m.stream));
    KVD_CUDA(cudaEventRecord(e0, m.stream));
    launch();
    KVD_CUDA(cudaEventRecord(e1, m.stream));
    KVD_CUDA(cudaEventSynchronize(e1));
    KVD_CUDA_LAUNCH("attention");
    float ms = 0;
    KVD_CUDA(cudaEventElapsedTime(&ms, e0, e1));
    if (it > 0) total_ms += ms;
  }
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  KVD_CUDA(cudaMemcpy(out, m.out, qn * 4, cudaMemcpyDeviceToHost));
  return 1e3 * total_ms / std::max(1, iters);
}

std::vector<uint8_t> KvProbe::record(int layer, int pos) const { return impl_->kv.record(layer, pos); }
void KvProbe::truncate(int n) { impl_->kv.truncate(n); }
KvStats KvProbe::stats() const { return impl_->kv.stats(); }

std::vector<uint8_t> quantize_rows(const KvLayout& layout, int bits, const std::vector<uint16_t>& rows) {
  const int kv_dim = layout.kv_dim();
  const int n = static_cast<int>(rows.size() / kv_dim);
  KvLayout one = layout;
  one.n_layers = 1;
  KvProbe probe(one, layout.n_kv_heads, std::max(n, 1), 0, 256);
  std::vector<uint8_t> out;
  std::vector<float> x(static_cast<size_t>(kv_dim) * 256);
  for (int b = 0; b < n; b += 256) {
    const int nb = std::min(256, n - b);
    for (size_t j = 0; j < static_cast<size_t>(nb) * kv_dim; ++j)
      x[j] = h2f(rows[static_cast<size_t>(b) * kv_dim + j]);
    const std::vector<uint8_t> widths(static_cast<size_t>(nb), static_cast<uint8_t>(bits));
    probe.append(x.data(), x.data(), widths.data(), nb);
    for (int i = 0; i < nb; ++i) {
      const std::vector<uint8_t> rec = probe.record(0, b + i);
      out.insert(out.end(), rec.begin(), rec.begin() + static_cast<std::ptrdiff_t>(layout.row_bytes(bits)));
    }
  }
  return out;
}

}  // namespace kvd::cuda
