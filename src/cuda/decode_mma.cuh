// Decode attention on tensor cores over the paged mixed-precision KV cache (decode_mma.cu): the kernel
// kv_device.cu's dispatch uses for one query per head when the cache's shape fits it.
#pragma once
#include <cuda_runtime.h>

#include "cuda/kv_device.cuh"

namespace kvd::cuda {

// One query per head (q: n_heads * head_dim fp32, rotated) against the sequence's pages and ring; out as
// launch_attention's, part: the partial states (n_heads * kDecodeParts * (head_dim + 3) floats). Launches
// and returns true when the kernel handles this cache with G query heads per KV head (head dim 64 or 128,
// G <= 8, pages of 64 slots, every quantized class with groups of 32 and K and V at one width, a 16-bit
// class, records a multiple of 16 bytes); else false and launches nothing.
bool launch_decode_mma(const KvDev& kv, int layer, const float* q, int n_heads, int G,
                       const StepParams* params, float* part, float* out, cudaStream_t s);
// Raises the kernel's shared-memory limit; once, before any launch or capture.
void prepare_decode_mma();

}  // namespace kvd::cuda
