// Process memory figures read from /proc (Linux): peak and current resident set size.
#pragma once
#include <cstddef>

namespace kvd {
size_t peak_rss_bytes();     // VmHWM
size_t current_rss_bytes();  // VmRSS
}  // namespace kvd
