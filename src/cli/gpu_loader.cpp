#include "cli/gpu_loader.h"

#include <dlfcn.h>

#include <cstdlib>
#include <filesystem>
#include <string>

#include "cuda/gpu_kv.h"
#include "cuda/gpu_session.h"
#include "cuda/module_abi.h"
#include "util/error.h"

namespace kvd::cuda {
namespace {

constexpr const char* kModuleFile = "libkvdial_cuda.so";

// What to do when the module cannot be opened: depends on whether this build made one.
std::string missing_advice(bool from_env) {
  if (from_env) return "point KVDIAL_CUDA_MODULE to a libkvdial_cuda.so of this build, or unset it";
#ifdef KVDIAL_CUDA_MODULE_BUILT
  return std::string("keep ") + kModuleFile +
         " from the build directory next to the kvdial binary, or set KVDIAL_CUDA_MODULE";
#else
  return "configure with -DKVDIAL_CUDA=ON (needs nvcc) to build it";
#endif
}

const ModuleApi& open_module() {
  const char* env = std::getenv("KVDIAL_CUDA_MODULE");
  const bool from_env = env && *env;
  const std::string path = module_path();
  // The handle is never closed: GPU sessions' code and vtables live in the module.
  void* handle = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (!handle) {
    const char* e = dlerror();
    const std::string why = e ? e : "unknown dlopen error";
    std::error_code ec;
    if (!std::filesystem::exists(path, ec)) {
#ifdef KVDIAL_CUDA_MODULE_BUILT
      const char* what = "the CUDA module is missing";
#else
      const char* what = "this build has no CUDA module";
#endif
      throw Error(std::string("--device cuda: ") + what + " (" + why + "); " + missing_advice(from_env));
    }
    throw Error(
        "--device cuda: cannot load the CUDA module " + path + ": " + why +
        " (it needs the CUDA toolkit's libcublas on the library path and a kvdial from the same build)");
  }
  dlerror();
  void* sym = dlsym(handle, KVDIAL_CUDA_MODULE_ENTRY);
  if (!sym) {
    const char* e = dlerror();
    throw Error("--device cuda: " + path + " is not a kvdial CUDA module (" +
                (e ? e : "no " KVDIAL_CUDA_MODULE_ENTRY) + "); " + missing_advice(from_env));
  }
  using Entry = const ModuleApi* (*)(uint32_t);
  const ModuleApi* api = reinterpret_cast<Entry>(sym)(kModuleAbi);
  if (!api || api->abi != kModuleAbi || api->fingerprint != module_layout_fingerprint())
    throw Error("--device cuda: " + path + " is from another kvdial build (module ABI " +
                (api ? std::to_string(api->abi) : std::string("unknown")) + ", this kvdial expects " +
                std::to_string(kModuleAbi) +
                (api && api->abi == kModuleAbi ? " with other type layouts" : "") +
                "); rebuild both, or carry the kvdial and libkvdial_cuda.so of one build");
  return *api;
}

const ModuleApi& module() {
  static const ModuleApi& api = open_module();  // a throw leaves it unset: the next call tries again
  return api;
}

}  // namespace

std::string module_path() {
  if (const char* env = std::getenv("KVDIAL_CUDA_MODULE"); env && *env) return env;
  std::error_code ec;
  const std::filesystem::path exe = std::filesystem::read_symlink("/proc/self/exe", ec);
  if (ec) return kModuleFile;  // no /proc: dlopen's own search (LD_LIBRARY_PATH, ...)
  return (exe.parent_path() / kModuleFile).string();
}

void load_module() { module(); }

std::unique_ptr<GpuSession> make_gpu_session(const Model& model, const GpuOptions& options) {
  return module().make_gpu_session(model, options);
}

bool gpu_available(std::string* why) {
  const ModuleApi* api = nullptr;
  try {
    api = &module();
  } catch (const Error& e) {
    if (why) *why = e.what();
    return false;
  }
  return api->gpu_available(why);
}

}  // namespace kvd::cuda
