// Stand-ins for libkvdial_cuda.so that drive the loader (cli/gpu_loader.cpp) through its error paths in
// every build, GPU or not (tests/test_cuda_module.cpp). One source, one variant per FAKE_* definition:
//   FAKE_THROWS    a valid module whose make_gpu_session throws kvd::Error (the error must reach the CLI)
//   FAKE_NO_ENTRY  no kvdial_cuda_module symbol
//   FAKE_ABI       another module ABI number
//   FAKE_LAYOUT    the right ABI number, other type sizes
#include "cuda/module_abi.h"
#include "util/error.h"

#ifndef FAKE_NO_ENTRY
namespace {

std::unique_ptr<kvd::cuda::GpuSession> fake_make(const kvd::Model&, const kvd::cuda::GpuOptions& o) {
  throw kvd::Error("fake CUDA module: no engine here (max_tokens " + std::to_string(o.max_tokens) + ")");
}

bool fake_available(std::string* why) {
  if (why) *why = "fake CUDA module: no GPU";
  return false;
}

}  // namespace

extern "C" __attribute__((visibility("default"))) const kvd::cuda::ModuleApi* kvdial_cuda_module(uint32_t) {
  uint32_t abi = kvd::cuda::kModuleAbi;
  uint64_t fingerprint = kvd::cuda::module_layout_fingerprint();
#if defined(FAKE_ABI)
  abi += 1000;
#elif defined(FAKE_LAYOUT)
  fingerprint += 1;
#endif
  static const kvd::cuda::ModuleApi api{abi, fingerprint, &fake_make, &fake_available};
  return &api;
}
#else
extern "C" __attribute__((visibility("default"))) int not_the_entry() { return 0; }
#endif
