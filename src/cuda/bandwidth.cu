// Read and copy bandwidth of the device (bandwidth.h).
#include <cuda_runtime.h>

#include <algorithm>

#include "cuda/bandwidth.h"
#include "cuda/device_memory.cuh"

namespace kvd::cuda {
namespace {

// Every 16 bytes of the buffer loaded once (streaming, 4 loads in flight a thread); the XOR of all goes
// to *sink only when it equals a value no real run produces, so the loads cannot be dropped.
__global__ void read_kernel(const uint4* p, size_t n, unsigned* sink) {
  unsigned x = 0;
  const size_t stride = static_cast<size_t>(gridDim.x) * blockDim.x;
  size_t i = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  for (; i + 3 * stride < n; i += 4 * stride) {
    const uint4 a = __ldcs(p + i), b = __ldcs(p + i + stride), c = __ldcs(p + i + 2 * stride),
                d = __ldcs(p + i + 3 * stride);
    x ^= a.x ^ a.y ^ a.z ^ a.w ^ b.x ^ b.y ^ b.z ^ b.w ^ c.x ^ c.y ^ c.z ^ c.w ^ d.x ^ d.y ^ d.z ^ d.w;
  }
  for (; i < n; i += stride) {
    const uint4 a = __ldcs(p + i);
    x ^= a.x ^ a.y ^ a.z ^ a.w;
  }
  if (x == 0x9e3779b9u) *sink = x;
}

}  // namespace

Bandwidth measure_bandwidth(size_t bytes, int iters) {
  DeviceMemory mem;
  bytes = bytes / 16 * 16;
  auto* a = static_cast<uint8_t*>(mem.alloc(bytes, MemKind::Work, "the bandwidth buffer"));
  auto* b = static_cast<uint8_t*>(mem.alloc(bytes, MemKind::Work, "the bandwidth buffer"));
  auto* sink = static_cast<unsigned*>(mem.alloc(sizeof(unsigned), MemKind::Work, "the bandwidth sink"));
  KVD_CUDA(cudaMemset(a, 1, bytes));
  int sms = 0;
  KVD_CUDA(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
  cudaEvent_t e0, e1;
  KVD_CUDA(cudaEventCreate(&e0));
  KVD_CUDA(cudaEventCreate(&e1));
  Bandwidth bw;
  for (int it = 0; it <= iters; ++it) {  // the first run warms up
    float ms = 0;
    KVD_CUDA(cudaEventRecord(e0));
    read_kernel<<<sms * 8, 256>>>(reinterpret_cast<const uint4*>(a), bytes / 16, sink);
    KVD_CUDA(cudaEventRecord(e1));
    KVD_CUDA(cudaEventSynchronize(e1));
    KVD_CUDA_LAUNCH("read_kernel");
    KVD_CUDA(cudaEventElapsedTime(&ms, e0, e1));
    if (it > 0) bw.read_gbs = std::max(bw.read_gbs, static_cast<double>(bytes) / (ms * 1e6));
    KVD_CUDA(cudaEventRecord(e0));
    KVD_CUDA(cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice));
    KVD_CUDA(cudaEventRecord(e1));
    KVD_CUDA(cudaEventSynchronize(e1));
    KVD_CUDA(cudaEventElapsedTime(&ms, e0, e1));
    if (it > 0) bw.copy_gbs = std::max(bw.copy_gbs, 2.0 * static_cast<double>(bytes) / (ms * 1e6));
  }
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  return bw;
}

}  // namespace kvd::cuda
