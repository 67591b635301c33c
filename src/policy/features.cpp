// Feature extraction from logits and forward-pass statistics.
#include "policy/features.h"

#include <algorithm>
#include <cmath>

namespace kvd {

const std::vector<std::string>& feature_names() {
  static const std::vector<std::string> names = {"entropy", "rarity", "attn_var", "attn_max",
                                                 "k_norm",  "v_norm", "max_prob", "position"};
  return names;
}

std::vector<float> feature_vector(const TokenFeatures& f) {
  return {f.entropy, f.rarity, f.attn_var, f.attn_max, f.k_norm, f.v_norm, f.max_prob, static_cast<float>(f.position)};
}

float feature_at(const TokenFeatures& f, size_t i) {
  switch (i) {
    case 0: return f.entropy;
    case 1: return f.rarity;
    case 2: return f.attn_var;
    case 3: return f.attn_max;
    case 4: return f.k_norm;
    case 5: return f.v_norm;
    case 6: return f.max_prob;
    case 7: return static_cast<float>(f.position);
    default: return 0.0f;
  }
}

float token_rarity(const Tokenizer& tok, int32_t id) {
  if (tok.is_control(id)) return 0.0f;
  return static_cast<float>(std::log(2.0 + id));
}

TokenFeatures make_features(const Tokenizer& tok, int32_t token, int32_t position, const float* logits, int vocab,
                            const TokenForwardStats& fwd) {
  TokenFeatures f;
  logits_summary(logits, vocab, &f.entropy, &f.max_prob, &f.argmax);
  f.rarity = token_rarity(tok, token);
  f.attn_var = fwd.attn_var;
  f.attn_max = fwd.attn_max;
  f.k_norm = fwd.k_norm;
  f.v_norm = fwd.v_norm;
  f.position = position;
  f.token = token;
  return f;
}

}  // namespace kvd
