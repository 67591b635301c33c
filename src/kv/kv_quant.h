// Group quantization of K/V rows for the mixed-precision cache (layout in kv/kv_layout.h):
// asymmetric integer codes with an fp16 scale and minimum per group of G elements.
#pragma once
#include <cstdint>

#include "kv/kv_layout.h"

namespace kvd {

// Quantizes one row of kv_dim floats into layout.row_bytes(bits) bytes at dst.
// bits == 16 stores fp16. The minimum is rounded down and the scale up to fp16 before coding, so
// every element is within half a step (scale / 2) of its dequantized value.
void kv_quantize_row(const KvLayout& layout, int bits, const float* src, uint8_t* dst);
// Same, from an fp16 source row (the cache's staging area).
void kv_quantize_row_fp16(const KvLayout& layout, int bits, const uint16_t* src, uint8_t* dst);
// Dequantizes one stored row back to kv_dim floats.
void kv_dequantize_row(const KvLayout& layout, int bits, const uint8_t* src, float* dst);
// Dequantizes one head's slice (head_dim elements starting at head * head_dim) of a stored row.
void kv_dequantize_head(const KvLayout& layout, int bits, const uint8_t* src, int head, float* dst);

}  // namespace kvd
