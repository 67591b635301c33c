// A trivial CUDA self-test: returns the number of wrong elements after adding 1 on the GPU, or -1
// when no GPU could be used.
#pragma once
namespace kvd::cuda {
int selftest(int n);
}
