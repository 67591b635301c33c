// Group quantization of K/V rows for the mixed-precision cache (layout in kv/kv_layout.h): asymmetric
// integer codes (2, 3, 4, 5, 6 or 8 bits, in a low and a high plane) with an fp16 scale and minimum per
// group of G elements, optionally after a per-group clip of the range chosen by MSE, and optionally in a
// rotated basis (kv/kv_rotate.h).
//
// Error bound (every width, every group): the minimum is rounded down and the scale up to fp16 before
// coding, so every element inside the coded range [min, min + scale * (2^b - 1)] is within half a step
// (scale / 2) of its dequantized value. Without clipping the range covers the group. With clipping, the
// candidates are the ranges [mid - r*half, mid + r*half] for r in {1, 0.95, ..., 0.5}; the three with the
// least squared error are refitted (up to three rounds of: codes fixed, least-squares scale and minimum,
// rounded to fp16, kept only while the error falls) and the best of all is stored. r = 1 is among the
// candidates and refitting never raises an error, so the group's squared error never exceeds the unclipped
// quantizer's; an element outside the coded range is clamped to it, so its error is at most that group
// bound: sqrt(group squared error of the unclipped quantizer) <= sqrt(G) * unclipped scale / 2.
#pragma once
#include <cstdint>

#include "kv/kv_layout.h"

namespace kvd {

// Encodes n elements (n % group == 0) at b bits in groups of `group` (bits == 16: fp16).
void kv_encode(const float* src, int n, int bits, int group, bool clip, uint8_t* dst);
// kv_encode with the clip search one candidate at a time (the plain form the fast search is tested against:
// both store the same bytes).
void kv_encode_plain(const float* src, int n, int bits, int group, bool clip, uint8_t* dst);
// Decodes n elements stored by kv_encode.
void kv_decode(const uint8_t* src, int n, int bits, int group, float* dst);

// Quantizes one row of kv_dim floats at b bits in the layout's default group (no clip, no rotation):
// layout.plain_row_bytes(bits, layout.group) bytes at dst. The original cache's quantizer.
void kv_quantize_row(const KvLayout& layout, int bits, const float* src, uint8_t* dst);
// Same, from an fp16 source row.
void kv_quantize_row_fp16(const KvLayout& layout, int bits, const uint16_t* src, uint8_t* dst);
// Dequantizes one row / one head's slice stored by kv_quantize_row.
void kv_dequantize_row(const KvLayout& layout, int bits, const uint8_t* src, float* dst);
void kv_dequantize_head(const KvLayout& layout, int bits, const uint8_t* src, int head, float* dst);

// The cache's quantizer: K (is_v false) or V of one token at width class cls, from its fp16 row, with the
// layout's clip and rotation (signs: the layer's kv_rotation_signs, n_kv_heads x head_dim; unused when the
// layout does not rotate). Writes layout.k_row_bytes(cls) (or v_row_bytes) bytes.
void kv_store_row(const KvLayout& layout, int cls, bool is_v, const uint16_t* src, const float* signs,
                  uint8_t* dst);
// One head's slice of a row stored by kv_store_row, back in the original (unrotated) basis.
void kv_load_head(const KvLayout& layout, int cls, bool is_v, const uint8_t* row, int head,
                  const float* signs, float* dst);
// Whether rows of this width are stored rotated under this layout.
inline bool kv_row_rotated(const KvLayout& layout, int bits) { return layout.rotate && bits != 16; }

}  // namespace kvd
