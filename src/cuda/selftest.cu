// CUDA backend seed: a trivial kernel compiled wherever nvcc exists (CI checks it builds; it runs only
// on a machine with a GPU). The paged mixed-precision attention kernels will live beside it.
#include <cuda_runtime.h>

#include "cuda/selftest.h"

namespace kvd::cuda {
namespace {
__global__ void add_one(float* x, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) x[i] += 1.0f;
}
}  // namespace

int selftest(int n) {
  float* d = nullptr;
  if (cudaMalloc(&d, sizeof(float) * n) != cudaSuccess) return -1;
  cudaMemset(d, 0, sizeof(float) * n);
  add_one<<<(n + 255) / 256, 256>>>(d, n);
  float* h = new float[n];
  const cudaError_t err = cudaMemcpy(h, d, sizeof(float) * n, cudaMemcpyDeviceToHost);
  int bad = 0;
  for (int i = 0; i < n; ++i) bad += h[i] != 1.0f;
  delete[] h;
  cudaFree(d);
  return err == cudaSuccess ? bad : -1;
}
}  // namespace kvd::cuda
