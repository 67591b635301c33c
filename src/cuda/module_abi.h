// The boundary between kvdial and the CUDA module (libkvdial_cuda.so, built from src/cuda/): one
// extern "C" entry point returning a table of functions. Host-only, no CUDA types. The module binds to
// the executable's own core symbols (Model, Error, kernels), so both must come from the same build:
// kModuleAbi (bumped by hand when this table or the types it passes change) and a fingerprint of the
// crossing types' sizes are checked by the loader (cli/gpu_loader.cpp) before anything is called.
#pragma once
#include <cstdint>
#include <memory>
#include <string>

#include "cuda/gpu_session.h"

namespace kvd::cuda {

// 2: SessionBase token_bits, rewinds_exactly, device peaks; GpuOptions ladder. 3: GpuSession's own peak
// getters gone (SessionBase's serve).
inline constexpr uint32_t kModuleAbi = 3;

// Sizes of the types passed across, folded: a module compiled against other headers differs.
inline constexpr uint64_t module_layout_fingerprint() {
  uint64_t h = 1469598103934665603ull;
  for (uint64_t s :
       {sizeof(GpuOptions), sizeof(Model), sizeof(ModelConfig), sizeof(Weights), sizeof(std::string)})
    h = (h ^ s) * 1099511628211ull;
  return h;
}

struct ModuleApi {
  uint32_t abi;          // kModuleAbi of the module's build; first, so any version can read it
  uint64_t fingerprint;  // module_layout_fingerprint() of the module's build
  std::unique_ptr<GpuSession> (*make_gpu_session)(const Model& model, const GpuOptions& options);
  bool (*gpu_available)(std::string* why);
};

}  // namespace kvd::cuda

// The module's one exported symbol: its table (never null). loader_abi is the caller's kModuleAbi.
#define KVDIAL_CUDA_MODULE_ENTRY "kvdial_cuda_module"
extern "C" const kvd::cuda::ModuleApi* kvdial_cuda_module(uint32_t loader_abi);
