// The CUDA engine behind the CLI's --device cuda, as a SessionBase (host-only header: no CUDA types,
// so the CLI and tests include it from plain C++). The whole forward pass runs on the GPU: weights
// uploaded once, cuBLAS GEMMs for prompt batches, GEMV kernels and a captured CUDA graph for decode
// steps, the KV cache in the layout of kv/kv_layout.h in device pages (cuda/kv_device.cuh).
#pragma once
#include <array>
#include <memory>
#include <string>

#include "model/model.h"
#include "model/session_base.h"

namespace kvd::cuda {

struct GpuOptions {
  int max_tokens = 4096;
  int n_batch = 256;  // tokens per prompt batch
  int kv_group = 32;
  // The stored setting of each width class (the plan's ladder, kv/kv_layout.h); without one, class b
  // is K = V = b bits at kv_group. The GPU cache stores K = V widths of 2, 4, 8, 16 at one group.
  bool kv_has_ladder = false;
  std::array<KvSetting, 4> kv_ladder{};
  int kv_residual = 0;
  // Decode GEMV weights: "f16" (dequantized at load) or "q" (Q4_1 matrices kept quantized, others
  // f16). Default from $KVDIAL_CUDA_WEIGHTS, else the faster one measured (see results/cuda_*.md).
  std::string weights;
  bool graphs = true;  // capture the decode step in a CUDA graph ($KVDIAL_CUDA_GRAPHS=0 turns it off)
};

// The GPU engine's session (its peak device memory: SessionBase::device_engine_peak_bytes and
// device_used_peak_bytes).
class GpuSession : public SessionBase {};

// Uploads the model and allocates the cache. Throws kvd::Error without a usable GPU or for a model the
// engine does not run.
std::unique_ptr<GpuSession> make_gpu_session(const Model& model, const GpuOptions& options);

}  // namespace kvd::cuda
