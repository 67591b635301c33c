// kvdial_cuda_selftest: runs the CUDA self-test kernel; exit 0 when it computed the right values.
#include <cstdio>

#include "cuda/selftest.h"

int main() {
  const int bad = kvd::cuda::selftest(1 << 20);
  std::printf("cuda selftest: %s\n", bad == 0 ? "ok" : bad < 0 ? "no usable GPU" : "wrong results");
  return bad == 0 ? 0 : 1;
}
