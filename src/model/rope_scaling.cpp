// RoPE scaling (linear, YaRN, Llama 3 frequency factors): the frequency table and the rotation.
#include "model/rope_scaling.h"

#include <algorithm>
#include <cmath>

#include "gguf/gguf.h"
#include "kernels/kernels.h"
#include "model/model.h"
#include "util/error.h"

namespace kvd {

RopeScaling rope_scaling_from_gguf(const gguf::File& f, const std::string& arch, int rope_dim, float theta) {
  const std::string a = arch + ".";
  RopeScaling rs;
  rs.type = f.get_string(a + "rope.scaling.type", "none");
  rs.factor = static_cast<float>(f.get_float(a + "rope.scaling.factor", 1.0));
  if (rs.type == "none" && f.find(a + "rope.scale_linear")) {  // older files
    rs.type = "linear";
    rs.factor = static_cast<float>(f.get_float(a + "rope.scale_linear", 1.0));
  }
  const int half = rope_dim / 2;
  rs.freq.resize(static_cast<size_t>(half));
  for (int i = 0; i < half; ++i) rs.freq[i] = std::pow(static_cast<double>(theta), -2.0 * i / rope_dim);

  // Llama 3 (and any file with per-frequency factors): freq_i / factor_i, whatever the scaling type says.
  if (const gguf::TensorInfo* t = f.find_tensor("rope_freqs.weight")) {
    if (t->n_elements != static_cast<uint64_t>(half))
      throw Error(f.path() + ": tensor 'rope_freqs.weight' has " + std::to_string(t->n_elements) +
                  " elements, expected rope.dimension_count / 2 = " + std::to_string(half));
    std::vector<float> fac(static_cast<size_t>(half));
    ref::dequantize_row(t->type, t->data, fac.data(), half);
    for (int i = 0; i < half; ++i) {
      if (!(fac[i] > 0.0f) || !std::isfinite(fac[i]))
        throw Error(f.path() + ": rope_freqs.weight[" + std::to_string(i) + "] is not a positive number");
      rs.freq[i] /= fac[i];
    }
    if (rs.type == "none") rs.type = "llama3";
  }
  if (rs.type == "none" || rs.type == "llama3") return rs;
  if (!(rs.factor >= 1.0f) || !std::isfinite(rs.factor))
    throw Error(f.path() + ": metadata '" + a + "rope.scaling.factor' = " + std::to_string(rs.factor) +
                " is out of range (must be >= 1)");
  if (rs.type == "linear") {
    for (double& v : rs.freq) v /= rs.factor;
    return rs;
  }
  if (rs.type == "yarn") {
    rs.orig_ctx = static_cast<int>(f.get_int(a + "rope.scaling.original_context_length", 0));
    if (rs.orig_ctx <= 0)
      throw Error(f.path() + ": yarn rope scaling needs '" + a + "rope.scaling.original_context_length'");
    const double beta_fast = f.get_float(a + "rope.scaling.yarn_beta_fast", 32.0);
    const double beta_slow = f.get_float(a + "rope.scaling.yarn_beta_slow", 1.0);
    // The frequency index where a dimension completes `rot` rotations over the original context.
    const auto corr_dim = [&](double rot) {
      return rope_dim * std::log(rs.orig_ctx / (rot * 2.0 * M_PI)) /
             (2.0 * std::log(static_cast<double>(theta)));
    };
    const double low = std::max(0.0, std::floor(corr_dim(beta_fast)));
    const double high = std::min(static_cast<double>(rope_dim - 1), std::ceil(corr_dim(beta_slow)));
    for (int i = 0; i < half; ++i) {
      // 1 = keep the original frequency (fast dimensions), 0 = interpolate (slow ones).
      const double y = (i - low) / std::max(0.001, high - low);
      const double keep = 1.0 - std::clamp(y, 0.0, 1.0);
      rs.freq[i] = rs.freq[i] / rs.factor * (1.0 - keep) + rs.freq[i] * keep;
    }
    const double attn_factor = f.get_float(a + "rope.scaling.attn_factor", 1.0);
    rs.mscale = static_cast<float>(attn_factor * (1.0 + 0.1 * std::log(rs.factor)));
    return rs;
  }
  throw Error(f.path() + ": rope scaling type '" + rs.type +
              "' is not supported (none, linear, yarn, llama3 are)");
}

void rope_scaled(const RopeScaling& rs, float* x, int n, int n_heads, int head_dim, int pos0,
                 RopeStyle style) {
  const int half = static_cast<int>(rs.freq.size());
  for (int t = 0; t < n; ++t) {
    const double pos = pos0 + t;
    for (int i = 0; i < half; ++i) {
      const float c = static_cast<float>(std::cos(pos * rs.freq[i])) * rs.mscale;
      const float s = static_cast<float>(std::sin(pos * rs.freq[i])) * rs.mscale;
      for (int h = 0; h < n_heads; ++h) {
        float* v = x + (static_cast<size_t>(t) * n_heads + h) * head_dim;
        const int ia = style == RopeStyle::Adjacent ? 2 * i : i;
        const int ib = style == RopeStyle::Adjacent ? 2 * i + 1 : i + half;
        const float a = v[ia], b = v[ib];
        v[ia] = a * c - b * s;
        v[ib] = a * s + b * c;
      }
    }
  }
}

}  // namespace kvd
