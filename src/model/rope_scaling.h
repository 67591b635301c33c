// RoPE frequency scaling read from GGUF metadata, as llama.cpp applies it: `linear` (positions divided by
// the factor), `yarn` (NTK-by-parts ramp between interpolated and original frequencies, plus the
// attention factor 1 + 0.1 ln(factor) on cos and sin), and Llama 3's per-frequency factors (stored by
// the converters as the tensor rope_freqs.weight). Plain RoPE (no scaling) stays on Backend::rope; the
// scaled kinds rotate with the table built here.
#pragma once
#include <string>
#include <vector>

namespace kvd {

namespace gguf {
class File;
}
enum class RopeStyle;  // model/model.h

struct RopeScaling {
  std::string type = "none";  // none, linear, yarn, llama3 (rope_freqs.weight)
  float factor = 1.0f;
  int orig_ctx = 0;  // yarn: rope.scaling.original_context_length
  // Per frequency index i < rope_dim / 2: the angle per position (theta^(-2i/rope_dim), scaled).
  std::vector<double> freq;
  float mscale = 1.0f;  // multiplies cos and sin (yarn)
  bool active() const { return type != "none"; }
};

// Reads {arch}.rope.scaling.* (and the older {arch}.rope.scale_linear) and rope_freqs.weight. Throws
// kvd::Error naming the key for a type it does not implement (e.g. longrope) or bad values.
RopeScaling rope_scaling_from_gguf(const gguf::File& f, const std::string& arch, int rope_dim, float theta);

// Rotates the first freq.size() * 2 dimensions of each head of n rows (row i at position pos0 + i).
void rope_scaled(const RopeScaling& rs, float* x, int n, int n_heads, int head_dim, int pos0,
                 RopeStyle style);

}  // namespace kvd
