// Host side of the GPU KV cache (layout and kernels: kv_device.cuh): pages, the fp16 ring, the token
// tables, offsets assigned as kv/kv_cache.cpp's arena assigns them, and the statistics of KvStats.
#pragma once
#include <cuda_runtime.h>

#include <vector>

#include "cuda/device_memory.cuh"
#include "cuda/kv_device.cuh"
#include "kv/kv_cache.h"
#include "kv/kv_layout.h"

namespace kvd::cuda {

class GpuKv {
 public:
  // ring: fp16 slots for the newest tokens; at least residual + the largest batch.
  GpuKv(DeviceMemory& mem, const KvLayout& layout, int max_tokens, int residual, int ring, size_t page_bytes);
  ~GpuKv();
  GpuKv(const GpuKv&) = delete;
  GpuKv& operator=(const GpuKv&) = delete;

  // Class index of a bit-width (2, 4, 8, 16). Throws for other widths.
  int class_of(int bits) const;
  // Reserves positions [n_tokens, n_tokens + n) at the given widths: assigns classes and offsets,
  // allocating pages (and writing their table entries) as needed. Returns the first position. When
  // upload is set the token tables are copied to the device on the stream; otherwise the caller writes
  // them (the decode graph does, from its step parameters). Throws when the context is full.
  int begin(const uint8_t* bits, int n, bool upload, cudaStream_t s);
  // Widths decided after the forward pass: bits == nullptr above reserves undecided positions (no
  // offsets yet); assign gives the next undecided one (positions in order) its class and offset,
  // allocating pages, and returns them. The page record is written by launch_decide_tokens.
  static constexpr uint8_t kUndecided = 0xfe;
  void assign(int pos, int bits, uint8_t* cls, uint32_t* off);
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
  uint32_t off_at(int pos) const { return off_[static_cast<size_t>(pos)]; }
  const KvDev& dev() const { return dev_; }
  const KvLayout& layout() const { return layout_; }
  KvStats stats() const;
  // Copies the record (K row then V row) of a stored token of one layer back to the host.
  std::vector<uint8_t> record(int layer, int pos) const;

 private:
  DeviceMemory& mem_;
  KvLayout layout_;
  int max_tokens_, residual_;
  size_t page_bytes_;
  KvDev dev_{};
  std::vector<uint8_t*> pages_;  // physical pages, in order of the sequence's page space
  std::vector<uint8_t> cls_;     // host mirror of the token tables
  std::vector<uint32_t> off_;
  int n_tokens_ = 0;
  int n_decided_ = 0;          // positions [0, n_decided_) have offsets
  uint64_t end_ = 0;           // next free byte offset
  uint32_t place(size_t rec);  // offset of a new record of rec bytes (pages allocated as needed)
  int bits_of_class_[kMaxKvClasses] = {};
};

}  // namespace kvd::cuda
