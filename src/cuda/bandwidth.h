// The GPU's memory bandwidth as kernels see it, measured in the run that uses it (host-only header):
// a read-only kernel over a buffer far larger than L2, and device-to-device copies.
#pragma once
#include <cstddef>

namespace kvd::cuda {

struct Bandwidth {
  double read_gbs = 0;  // bytes read / time, the kernel reading every byte once (16-byte loads)
  double copy_gbs = 0;  // (bytes read + bytes written) / time of cudaMemcpy device to device
};

// Best of iters runs over a buffer of `bytes` (default 2 GiB).
Bandwidth measure_bandwidth(size_t bytes = size_t{2} << 30, int iters = 10);

}  // namespace kvd::cuda
