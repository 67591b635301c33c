// The randomized Hadamard rotation of quantized K/V head slices: y = H (s * x) / sqrt(n), with H the
// n x n Walsh-Hadamard matrix (n = head_dim, a power of two) and s a fixed +-1 sign per element, drawn
// per (layer, kv head) from a seeded generator. Orthogonal, so q.k = (Rq).(Rk) and sum p_t v_t =
// R^T sum p_t (R v_t): attention rotates the query and un-rotates its output once per head.
#pragma once
#include <cstdint>
#include <vector>

namespace kvd {

// Signs (+1/-1 floats) for every (layer, kv head, element): [layer][kvh][i].
std::vector<float> kv_rotation_signs(int n_layers, int n_kv_heads, int head_dim, uint64_t seed);
// In place: x <- H (s * x) / sqrt(n), n a power of two.
void kv_rotate(float* x, const float* signs, int n);
// In place, the inverse: x <- s * (H x) / sqrt(n).
void kv_unrotate(float* x, const float* signs, int n);
// Whether head_dim can be rotated (a power of two, at most 256).
bool kv_rotation_supported(int head_dim);

}  // namespace kvd
