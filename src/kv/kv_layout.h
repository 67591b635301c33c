// Byte layout of one token's K and V in the mixed-precision KV cache. Plain data (no pointers, no
// strings) so that the same description can travel to a GPU.
//
// Policies choose one of four width classes per token (2, 4, 8, 16: the seed's classes). A ladder maps each
// class to a KvSetting: K width, V width (each from 2, 3, 4, 5, 6, 8, 16) and their group sizes. Without a
// ladder (has_ladder false) class b is K = V = b bits at `group`, the original cache.
//
// One token, one layer, K (or V) at b bits, kv_dim = n_kv_heads * head_dim, G = group size:
//   b == 16:   kv_dim x fp16                                                 = 2 * kv_dim bytes
//   b < 16:    kv_dim/G groups, each [fp16 scale][fp16 min][low plane][high plane]
//              low plane:  G*lo/8 bytes, lo = 2 (b = 2, 3), 4 (b = 4, 5, 6) or 8 (b = 8)
//              high plane: G*hi/8 bytes, hi = b - lo (0, 1 or 2)                = (4 + G*b/8) bytes
// Each plane packs its codes little-end first: element i of a w-bit plane sits in byte i/(8/w) at bit
// (i%(8/w))*w. The code is low | high << lo; the value is code * scale + min. Groups never straddle heads
// (head_dim % G == 0). A token's record is [K row][V row]. With `rotate`, quantized rows hold each head
// slice after a randomized Hadamard transform (kv/kv_rotate.h); fp16 rows are never rotated.
#pragma once
#include <array>
#include <cstddef>
#include <cstdint>

namespace kvd {

// One stored width setting: K and V bit-widths and group sizes.
struct KvSetting {
  int kbits = 16, vbits = 16;
  int kgroup = 32, vgroup = 32;
  bool operator==(const KvSetting& o) const {  // spelled out: the CUDA files compile as C++17
    return kbits == o.kbits && vbits == o.vbits && kgroup == o.kgroup && vgroup == o.vgroup;
  }
};

// Low and high plane widths of a b-bit code (see above).
inline int kv_lo_bits(int bits) { return bits == 8 ? 8 : bits >= 4 ? 4 : 2; }
inline int kv_hi_bits(int bits) { return bits == 16 ? 0 : bits - kv_lo_bits(bits); }

// Index of a width class in ladders: 2 -> 0, 4 -> 1, 8 -> 2, 16 -> 3.
inline int kv_class_index(int cls) { return cls == 2 ? 0 : cls == 4 ? 1 : cls == 8 ? 2 : 3; }
inline constexpr int kKvClasses[4] = {2, 4, 8, 16};

struct KvLayout {
  int n_layers = 0;
  int n_kv_heads = 0;
  int head_dim = 0;
  int group = 32;  // default group (and every group when has_ladder is false)
  bool has_ladder = false;
  std::array<KvSetting, 4> ladder{};  // by kv_class_index
  bool rotate = false;                // randomized Hadamard on quantized rows
  bool clip = false;                  // per-group MSE clip search at encode time
  uint64_t rotate_seed = 0x6b76646961ull;

  int kv_dim() const { return n_kv_heads * head_dim; }
  int groups_per_row() const { return kv_dim() / group; }

  // The setting of a width class.
  KvSetting setting(int cls) const {
    if (has_ladder) return ladder[static_cast<size_t>(kv_class_index(cls))];
    return KvSetting{cls, cls, group, group};
  }

  // Bytes of one quantized group of g elements at b bits (scale, min, codes).
  static size_t group_bytes_of(int bits, int g) { return 4 + static_cast<size_t>(g) * bits / 8; }
  // Bytes of one row (kv_dim elements) at b bits in groups of g.
  size_t plain_row_bytes(int bits, int g) const {
    return bits == 16 ? 2 * static_cast<size_t>(kv_dim())
                      : static_cast<size_t>(kv_dim() / g) * group_bytes_of(bits, g);
  }
  // Bytes of one quantized group at b bits at the default group.
  size_t group_bytes(int bits) const { return group_bytes_of(bits, group); }

  // Bytes of K, of V, and of both, of one token in one layer at a width class.
  size_t k_row_bytes(int cls) const {
    const KvSetting s = setting(cls);
    return plain_row_bytes(s.kbits, s.kgroup);
  }
  size_t v_row_bytes(int cls) const {
    const KvSetting s = setting(cls);
    return plain_row_bytes(s.vbits, s.vgroup);
  }
  // K bytes (= V bytes when K and V share their setting, as without a ladder).
  size_t row_bytes(int cls) const { return k_row_bytes(cls); }
  size_t token_bytes(int cls) const { return k_row_bytes(cls) + v_row_bytes(cls); }
  // The largest record of any class (staging keeps one per staged token).
  size_t max_token_bytes() const {
    size_t m = 4 * static_cast<size_t>(kv_dim());
    for (int c : kKvClasses) m = token_bytes(c) > m ? token_bytes(c) : m;
    return m;
  }
  // Stored bits per element (K and V averaged), scales and minimums included.
  double effective_bits(int cls) const { return 4.0 * static_cast<double>(token_bytes(cls)) / kv_dim(); }
  double k_effective_bits(int cls) const { return 8.0 * static_cast<double>(k_row_bytes(cls)) / kv_dim(); }
  double v_effective_bits(int cls) const { return 8.0 * static_cast<double>(v_row_bytes(cls)) / kv_dim(); }
};

// Width classes a policy may choose.
inline bool kv_bits_valid(int bits) { return bits == 2 || bits == 4 || bits == 8 || bits == 16; }
// Widths a K or V row may be stored at.
inline bool kv_width_valid(int bits) {
  return bits == 2 || bits == 3 || bits == 4 || bits == 5 || bits == 6 || bits == 8 || bits == 16;
}

}  // namespace kvd
