// Device allocations with the engine's own accounting (bytes now and at peak, by kind) beside what
// cudaMemGetInfo says (the lowest free memory seen), and CUDA error checks that throw kvd::Error.
#pragma once
#include <cuda_runtime.h>

#include <array>
#include <cstddef>
#include <string>
#include <unordered_map>

#include "util/error.h"

namespace kvd::cuda {

inline void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) throw Error(std::string("cuda: ") + what + ": " + cudaGetErrorString(e));
}
#define KVD_CUDA(call) ::kvd::cuda::check((call), #call)
#define KVD_CUDA_LAUNCH(what) ::kvd::cuda::check(cudaGetLastError(), what)

enum class MemKind { Weights, Kv, Work, Count };

class DeviceMemory {
 public:
  DeviceMemory();
  ~DeviceMemory();
  DeviceMemory(const DeviceMemory&) = delete;
  DeviceMemory& operator=(const DeviceMemory&) = delete;

  // Throws kvd::Error naming what could not be allocated and how much memory was free.
  void* alloc(size_t bytes, MemKind kind, const char* what);
  void free(void* p);
  // Samples cudaMemGetInfo (allocations do it too); call after work that may allocate inside libraries.
  void sample();

  size_t now() const { return now_; }
  size_t peak() const { return peak_; }
  size_t now_of(MemKind k) const { return by_kind_[static_cast<int>(k)]; }
  size_t peak_of(MemKind k) const { return peak_by_kind_[static_cast<int>(k)]; }
  size_t total() const { return total_; }
  size_t used_before() const { return used_before_; }  // device memory in use when this object was made
  size_t used_peak() const { return total_ - min_free_; }

 private:
  struct Block {
    size_t bytes;
    MemKind kind;
  };
  std::unordered_map<void*, Block> blocks_;
  size_t now_ = 0, peak_ = 0;
  std::array<size_t, static_cast<int>(MemKind::Count)> by_kind_{}, peak_by_kind_{};
  size_t total_ = 0, min_free_ = 0, used_before_ = 0;
};

}  // namespace kvd::cuda
