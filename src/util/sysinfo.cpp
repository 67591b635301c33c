#include "util/sysinfo.h"

#include <fstream>
#include <string>

namespace kvd {
namespace {
size_t status_kib(const char* key) {
  std::ifstream in("/proc/self/status");
  std::string line;
  const std::string k = key;
  while (std::getline(in, line))
    if (line.compare(0, k.size(), k) == 0) return std::stoull(line.substr(k.size() + 1)) * 1024;
  return 0;
}
}  // namespace
size_t peak_rss_bytes() { return status_kib("VmHWM"); }
size_t current_rss_bytes() { return status_kib("VmRSS"); }
}  // namespace kvd
