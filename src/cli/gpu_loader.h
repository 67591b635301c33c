// kvdial's side of the CUDA module (cuda/module_abi.h): the executable links no CUDA library; the
// engine (libkvdial_cuda.so, with cuBLAS and the CUDA runtime) is dlopen'ed the first time --device
// cuda needs it. This file defines kvd::cuda::make_gpu_session (cuda/gpu_session.h) and
// kvd::cuda::gpu_available (cuda/gpu_kv.h) for the executable by forwarding to the module.
#pragma once
#include <string>

namespace kvd::cuda {

// Where the module is looked for: $KVDIAL_CUDA_MODULE if set, else libkvdial_cuda.so in the directory
// of the running executable.
std::string module_path();

// Loads the module once (later calls return at once). Throws kvd::Error, one line naming what is
// wrong (file missing, dlopen's message, no entry symbol, another build's module) and what to do.
void load_module();

}  // namespace kvd::cuda
