// The CUDA engine lives in a module (libkvdial_cuda.so) that kvdial dlopens for --device cuda only:
// the executable must not link cuBLAS or the CUDA runtime (they cost ~195 MiB of RSS in every CPU run),
// and every way the module can fail to load must end as the CLI's one-line error.
#include <elf.h>
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "test_util.h"

namespace kvd {
namespace {

namespace fs = std::filesystem;

// DT_NEEDED entries of a 64-bit little-endian ELF file, from its SHT_DYNAMIC section and the string table
// that section links to. Fails the test (and returns what it has) on anything else.
std::vector<std::string> elf_needed(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  const std::string b((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::vector<std::string> out;
  EXPECT_GE(b.size(), sizeof(Elf64_Ehdr)) << path;
  if (b.size() < sizeof(Elf64_Ehdr)) return out;
  Elf64_Ehdr eh;
  std::memcpy(&eh, b.data(), sizeof eh);
  EXPECT_EQ(std::memcmp(eh.e_ident, ELFMAG, SELFMAG), 0) << path << " is not ELF";
  EXPECT_EQ(eh.e_ident[EI_CLASS], ELFCLASS64) << path;
  if (std::memcmp(eh.e_ident, ELFMAG, SELFMAG) != 0 || eh.e_ident[EI_CLASS] != ELFCLASS64) return out;
  auto section = [&](size_t i) {
    Elf64_Shdr sh{};
    const size_t at = eh.e_shoff + i * eh.e_shentsize;
    if (at + sizeof sh <= b.size()) std::memcpy(&sh, b.data() + at, sizeof sh);
    return sh;
  };
  bool found = false;
  for (size_t i = 0; i < eh.e_shnum; ++i) {
    const Elf64_Shdr dyn = section(i);
    if (dyn.sh_type != SHT_DYNAMIC) continue;
    found = true;
    const Elf64_Shdr str = section(dyn.sh_link);
    for (size_t off = 0; off + sizeof(Elf64_Dyn) <= dyn.sh_size; off += sizeof(Elf64_Dyn)) {
      Elf64_Dyn d;
      if (dyn.sh_offset + off + sizeof d > b.size()) break;
      std::memcpy(&d, b.data() + dyn.sh_offset + off, sizeof d);
      if (d.d_tag == DT_NULL) break;
      if (d.d_tag == DT_NEEDED && str.sh_offset + d.d_un.d_val < b.size())
        out.emplace_back(b.c_str() + str.sh_offset + d.d_un.d_val);
    }
  }
  EXPECT_TRUE(found) << path << ": no dynamic section";
  return out;
}

bool any_contains(const std::vector<std::string>& libs, const std::string& part) {
  for (const std::string& l : libs)
    if (l.find(part) != std::string::npos) return true;
  return false;
}

struct CmdRun {
  int rc = -1;
  std::vector<std::string> err;  // stderr, by line
};

// Runs kvdial under a shell prefix (environment settings) with args; stdout dropped.
CmdRun kvdial(const std::string& env, const std::string& args, const std::string& tag) {
  const std::string err = (fs::temp_directory_path() / ("kvdial_cudamod_" + tag + ".err")).string();
  const std::string cmd = env + " " + std::string(KVDIAL_BINARY) + " " + args + " >/dev/null 2>" + err;
  CmdRun r;
  const int st = std::system(cmd.c_str());
  r.rc = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  std::ifstream in(err);
  for (std::string line; std::getline(in, line);) r.err.push_back(line);
  fs::remove(err);
  return r;
}

std::string fake_module(const std::string& kind) {
  return std::string(KVDIAL_FAKE_MODULE_DIR) + "/libfake_cuda_module_" + kind + ".so";
}

// generate --device cuda with the module at `module` (empty: the default beside the binary) and the
// model at model_path; the GPU-cache checks pass (static:16, unrotated), so the module is what decides.
CmdRun generate_cuda(const std::string& module, const std::string& model_path, const std::string& tag) {
  const std::string env = module.empty() ? "env -u KVDIAL_CUDA_MODULE CUDA_VISIBLE_DEVICES="
                                         : "env KVDIAL_CUDA_MODULE='" + module + "' CUDA_VISIBLE_DEVICES=";
  return kvdial(env, "generate -m '" + model_path + "' -p hi -n 1 --temp 0 --device cuda --kv-rotate 0", tag);
}

// One line, "kvdial: error: " + a message containing every part.
void expect_one_line_error(const CmdRun& r, const std::vector<std::string>& parts) {
  EXPECT_EQ(r.rc, 1);
  ASSERT_EQ(r.err.size(), 1u) << (r.err.empty() ? "(no stderr)" : r.err[0] + "\n" + r.err.back());
  EXPECT_EQ(r.err[0].rfind("kvdial: error: --device cuda: ", 0), 0u) << r.err[0];
  for (const std::string& p : parts)
    EXPECT_NE(r.err[0].find(p), std::string::npos) << p << " in: " << r.err[0];
}

TEST(CudaModule, KvdialLinksNoCudaLibrary) {
  const std::vector<std::string> needed = elf_needed(KVDIAL_BINARY);
  EXPECT_TRUE(any_contains(needed, "libc.so")) << "the parser found no libc: it reads nothing";
  for (const char* lib : {"cublas", "cudart", "libcuda.so", "nvrtc"})
    EXPECT_FALSE(any_contains(needed, lib))
        << KVDIAL_BINARY << " needs " << lib << ": the CUDA engine must stay in libkvdial_cuda.so";
}

TEST(CudaModule, ModuleCarriesCublas) {
  const std::string module = KVDIAL_CUDA_MODULE_FILE;
  if (module.empty()) GTEST_SKIP() << "CPU-only build: no CUDA module";
  ASSERT_TRUE(fs::exists(module)) << module;
  EXPECT_EQ(fs::path(module).parent_path(), fs::path(KVDIAL_BINARY).parent_path())
      << "kvdial looks for the module in its own directory";
  EXPECT_TRUE(any_contains(elf_needed(module), "libcublas")) << module;
}

// Fails before mapping the model: the model path does not exist either.
TEST(CudaModule, MissingModuleIsOneLineError) {
  const CmdRun r = generate_cuda("/nonexistent/libkvdial_cuda.so", "/nonexistent/model.gguf", "missing");
  expect_one_line_error(
      r, {"/nonexistent/libkvdial_cuda.so", "cannot open shared object file", "KVDIAL_CUDA_MODULE"});
}

TEST(CudaModule, NotAnElfFileIsOneLineError) {
  const std::string junk = (fs::temp_directory_path() / "kvdial_cudamod_junk.so").string();
  std::ofstream(junk) << "not a shared object\n";
  const CmdRun r = generate_cuda(junk, "/nonexistent/model.gguf", "junk");
  fs::remove(junk);
  expect_one_line_error(r, {"cannot load the CUDA module", junk});
}

TEST(CudaModule, MissingEntryIsOneLineError) {
  const CmdRun r = generate_cuda(fake_module("noentry"), "/nonexistent/model.gguf", "noentry");
  expect_one_line_error(r, {"is not a kvdial CUDA module", "kvdial_cuda_module"});
}

TEST(CudaModule, OtherAbiIsOneLineError) {
  const CmdRun r = generate_cuda(fake_module("abi"), "/nonexistent/model.gguf", "abi");
  expect_one_line_error(r, {"is from another kvdial build", "rebuild"});
}

TEST(CudaModule, OtherLayoutIsOneLineError) {
  const CmdRun r = generate_cuda(fake_module("layout"), "/nonexistent/model.gguf", "layout");
  expect_one_line_error(r, {"is from another kvdial build", "other type layouts"});
}

// A kvd::Error thrown inside a module reaches the CLI's handler: one line, exit status 1.
TEST(CudaModule, ErrorThrownInModuleReachesCli) {
  KVD_REQUIRE_MODEL(model);
  const CmdRun r =
      kvdial("env KVDIAL_CUDA_MODULE='" + fake_module("throws") + "'",
             "generate -m '" + model + "' -p hi -n 1 --temp 0 --device cuda --kv-rotate 0 -c 64", "throws");
  EXPECT_EQ(r.rc, 1);
  ASSERT_EQ(r.err.size(), 1u) << (r.err.empty() ? "(no stderr)" : r.err.back());
  EXPECT_EQ(r.err[0], "kvdial: error: fake CUDA module: no engine here (max_tokens 64)");
}

// The real module loads (RTLD_NOW: every symbol it takes from kvdial resolves) before the model is mapped:
// the error is the model's, not the module's. Needs no model.
TEST(CudaModule, RealModuleLoadsBesideTheBinary) {
  if (std::string(KVDIAL_CUDA_MODULE_FILE).empty()) GTEST_SKIP() << "CPU-only build: no CUDA module";
  const CmdRun r = generate_cuda("", "/nonexistent/model.gguf", "loads");
  EXPECT_EQ(r.rc, 1);
  ASSERT_EQ(r.err.size(), 1u) << (r.err.empty() ? "(no stderr)" : r.err.back());
  EXPECT_EQ(r.err[0].rfind("kvdial: error: /nonexistent/model.gguf: ", 0), 0u) << r.err[0];
}

// The real module, found beside the binary, with no device visible: its own kvd::Error (from
// make_gpu_session in src/cuda/engine.cu) comes back as the one-line message.
TEST(CudaModule, RealModuleErrorReachesCli) {
  if (std::string(KVDIAL_CUDA_MODULE_FILE).empty()) GTEST_SKIP() << "CPU-only build: no CUDA module";
  KVD_REQUIRE_MODEL(model);
  expect_one_line_error(generate_cuda("", model, "real"), {"CUDA device"});
}

// A CPU-only build has no module beside the binary: --device cuda says so and how to get one.
TEST(CudaModule, CpuOnlyBuildSaysHowToGetTheModule) {
  if (!std::string(KVDIAL_CUDA_MODULE_FILE).empty()) GTEST_SKIP() << "this build has the CUDA module";
  expect_one_line_error(generate_cuda("", "/nonexistent/model.gguf", "cpuonly"),
                        {"this build has no CUDA module", "-DKVDIAL_CUDA=ON"});
}

}  // namespace
}  // namespace kvd
