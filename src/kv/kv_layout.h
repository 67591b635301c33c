// Byte layout of one token's K and V in the mixed-precision KV cache. Plain data so that the same
// description can travel to a GPU later.
//
// One token, one layer, bit-width b, kv_dim = n_kv_heads * head_dim, G = group size:
//   b == 16:   [K: kv_dim x fp16][V: kv_dim x fp16]                         = 4 * kv_dim bytes
//   b < 16:    [K: kv_dim/G groups][V: kv_dim/G groups], each group =
//              [fp16 scale][fp16 min][G*b/8 bytes of codes]                 = (4 + G*b/8) bytes
// Codes are packed little-end first: element i of a group sits in byte i/(8/b) at bit (i%(8/b))*b.
// A value is code * scale + min. Groups never straddle heads (head_dim % G == 0).
#pragma once
#include <cstddef>
#include <cstdint>

namespace kvd {

struct KvLayout {
  int n_layers = 0;
  int n_kv_heads = 0;
  int head_dim = 0;
  int group = 32;

  int kv_dim() const { return n_kv_heads * head_dim; }
  int groups_per_row() const { return kv_dim() / group; }
  // Bytes of one quantized group (scale, min, codes) at b bits.
  size_t group_bytes(int bits) const { return 4 + static_cast<size_t>(group) * bits / 8; }
  // Bytes of K (or V) of one token in one layer.
  size_t row_bytes(int bits) const {
    return bits == 16 ? 2 * static_cast<size_t>(kv_dim()) : groups_per_row() * group_bytes(bits);
  }
  // Bytes of K and V of one token in one layer.
  size_t token_bytes(int bits) const { return 2 * row_bytes(bits); }
  // Stored bits per element, scales and minimums included.
  double effective_bits(int bits) const { return 8.0 * static_cast<double>(row_bytes(bits)) / kv_dim(); }
};

inline bool kv_bits_valid(int bits) { return bits == 2 || bits == 4 || bits == 8 || bits == 16; }

}  // namespace kvd
