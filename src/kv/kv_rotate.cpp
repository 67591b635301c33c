#include "kv/kv_rotate.h"

#include <cmath>

namespace kvd {
namespace {

uint64_t splitmix64(uint64_t& s) {
  uint64_t z = (s += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

// Unnormalized fast Walsh-Hadamard transform (plain butterflies: n log n adds for n <= 256, too small for
// a library to pay off).
void fwht(float* x, int n) {
  for (int len = 1; len < n; len <<= 1)
    for (int i = 0; i < n; i += 2 * len)
      for (int j = i; j < i + len; ++j) {
        const float a = x[j], b = x[j + len];
        x[j] = a + b;
        x[j + len] = a - b;
      }
}

}  // namespace

std::vector<float> kv_rotation_signs(int n_layers, int n_kv_heads, int head_dim, uint64_t seed) {
  std::vector<float> s(static_cast<size_t>(n_layers) * n_kv_heads * head_dim);
  uint64_t state = seed;
  for (size_t i = 0; i < s.size(); i += 64) {
    const uint64_t bits = splitmix64(state);
    for (size_t b = 0; b < 64 && i + b < s.size(); ++b) s[i + b] = (bits >> b) & 1 ? -1.0f : 1.0f;
  }
  return s;
}

bool kv_rotation_supported(int head_dim) {
  return head_dim > 0 && head_dim <= 256 && (head_dim & (head_dim - 1)) == 0;
}

void kv_rotate(float* x, const float* signs, int n) {
  for (int i = 0; i < n; ++i) x[i] *= signs[i];
  fwht(x, n);
  const float inv = 1.0f / std::sqrt(static_cast<float>(n));
  for (int i = 0; i < n; ++i) x[i] *= inv;
}

void kv_unrotate(float* x, const float* signs, int n) {
  fwht(x, n);
  const float inv = 1.0f / std::sqrt(static_cast<float>(n));
  for (int i = 0; i < n; ++i) x[i] *= inv * signs[i];
}

}  // namespace kvd
