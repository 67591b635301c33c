// Host side of the GPU KV cache (layout and kernels: kv_device.cuh): the page pool, a sequence's pages
// (kv/kv_pages.h), the fp16 ring, the token tables and the statistics of KvStats.
#pragma once
#include <cuda_runtime.h>

#include <memory>
#include <vector>

#include "cuda/device_memory.cuh"
#include "cuda/kv_device.cuh"
#include "kv/kv_cache.h"
#include "kv/kv_layout.h"
#include "kv/kv_pages.h"

namespace kvd::cuda {

// The page pool: device pages of one width class each (kv/kv_pages.h) and the device page table
// (page -> address). Shared by sequences.
class KvPagePool final : public KvPagePoolBase {
 public:
  KvPagePool(DeviceMemory& mem, const KvPageGeom& geom, int capacity);
  KvPagePool(const KvPagePool&) = delete;
  KvPagePool& operator=(const KvPagePool&) = delete;
  uint8_t* page(int p) const { return ptr_[static_cast<size_t>(p)]; }
  uint8_t** device_table() const { return table_; }

 private:
  void create_page(int cls) override;
  void empty_header(int page) override;
  DeviceMemory& mem_;
  int capacity_;
  uint8_t** table_ = nullptr;
  std::vector<uint8_t*> ptr_;
};

class GpuKv {
 public:
  // ring: fp16 slots for the newest tokens; at least residual + the largest batch. Pages come from pool
  // when given (shared with other sequences), else from a pool of this cache's own.
  GpuKv(DeviceMemory& mem, const KvLayout& layout, int max_tokens, int residual, int ring,
        KvPagePool* pool = nullptr);
  ~GpuKv();
  GpuKv(const GpuKv&) = delete;
  GpuKv& operator=(const GpuKv&) = delete;

  // Class index of a bit-width (2, 4, 8, 16). Throws for other widths.
  int class_of(int bits) const;
  // Reserves positions [n_tokens, n_tokens + n) at the given widths: assigns classes and page slots,
  // taking pages from the pool (and updating the block table on the device) as needed. Returns the first
  // position. When upload is set the token tables are copied to the device on the stream; otherwise the
  // caller writes them (the decode graph does, from its step parameters). Throws when the context is full.
  int begin(const uint8_t* bits, int n, bool upload, cudaStream_t s);
  // Widths decided after the forward pass: bits == nullptr above reserves undecided positions (no
  // slots yet); assign gives the next undecided one (positions in order) its class and slot, and returns
  // them. The page record is written by launch_decide_tokens.
  static constexpr uint8_t kUndecided = 0xfe;
  void assign(int pos, int bits, uint8_t* cls, uint32_t* loc);
  bool decided(int pos) const { return cls_[static_cast<size_t>(pos)] != kUndecided; }
  int bits_at(int pos) const { return decided(pos) ? bits_of_class_[cls_[static_cast<size_t>(pos)]] : 16; }
  // Per-token statistics buffers (KvDev::stat_attn / stat_kv) and the query head count.
  void set_stats(float* attn, float* kv, int n_heads) {
    dev_.stat_attn = attn;
    dev_.stat_kv = kv;
    dev_.n_heads = n_heads;
  }
  void clear();
  void truncate(int n);

  int n_tokens() const { return n_tokens_; }
  int max_tokens() const { return max_tokens_; }
  uint8_t cls_at(int pos) const { return cls_[static_cast<size_t>(pos)]; }
  uint32_t loc_at(int pos) const { return loc_[static_cast<size_t>(pos)]; }
  const KvDev& dev() const { return dev_; }
  const KvLayout& layout() const { return layout_; }
  KvStats stats() const;
  // Copies the record (K row then V row) of a stored token of one layer back to the host.
  std::vector<uint8_t> record(int layer, int pos) const;

 private:
  void upload_block();  // the block table to the device, when it changed
  uint32_t place(int cls);

  DeviceMemory& mem_;
  KvLayout layout_;
  int max_tokens_, residual_;
  std::unique_ptr<KvPagePool> own_pool_;
  KvPagePool* pool_;
  KvSeqPages seq_;
  KvDev dev_{};
  KvPageRef* block_ = nullptr;  // device block table [block_capacity_]
  int* n_block_ = nullptr;      // device count
  int block_capacity_ = 0;
  std::vector<uint8_t> cls_;  // host mirror of the token tables
  std::vector<uint32_t> loc_;
  int n_tokens_ = 0;
  int n_decided_ = 0;  // positions [0, n_decided_) have slots
  int bits_of_class_[kMaxKvClasses] = {};
};

}  // namespace kvd::cuda
