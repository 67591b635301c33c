// The CUDA module's exported entry point (see cuda/module_abi.h). Everything else in the module is
// compiled with hidden visibility, so its make_gpu_session and gpu_available stay its own even though
// the kvdial executable, which exports its symbols, defines loader functions of the same names.
#include "cuda/gpu_kv.h"
#include "cuda/gpu_session.h"
#include "cuda/module_abi.h"

extern "C" __attribute__((visibility("default"))) const kvd::cuda::ModuleApi* kvdial_cuda_module(
    uint32_t /*loader_abi: the loader compares the table's abi with its own*/) {
  static const kvd::cuda::ModuleApi api{kvd::cuda::kModuleAbi, kvd::cuda::module_layout_fingerprint(),
                                        &kvd::cuda::make_gpu_session, &kvd::cuda::gpu_available};
  return &api;
}
