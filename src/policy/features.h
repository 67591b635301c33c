// Saliency features of one token, as every KV policy sees them. Definitions (docs/features.md):
//   entropy   nats, of the next-token distribution predicted at this token's position
//   rarity    ln(2 + merge rank) of the token: byte-level BPE ids follow merge order, and a later
//             merge joins a rarer pair of the tokenizer's training corpus (special tokens: 0)
//   attn_var  mean over layers and query heads of the variance of this token's attention weights
//             over the keys [0, pos] (its own query's distribution)
//   attn_max  mean over layers and heads of this token's largest attention weight
//   k_norm, v_norm  mean over layers of the L2 norms of its key (after RoPE) and value
//   max_prob  probability of the most likely next token
//   position  index in the sequence
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "model/forward.h"

namespace kvd {

struct TokenFeatures {
  float entropy = 0;
  float rarity = 0;
  float attn_var = 0;
  float attn_max = 0;
  float k_norm = 0;
  float v_norm = 0;
  float max_prob = 0;
  int32_t position = 0;
  int32_t token = 0;
  int32_t argmax = 0;  // most likely next token
};

// Names of the features in TokenFeatures order (for CSV headers and the learned controller).
const std::vector<std::string>& feature_names();
// The features as floats, in feature_names() order.
std::vector<float> feature_vector(const TokenFeatures& f);
// Feature i of feature_names() (no allocation: the learned controller calls it per token).
float feature_at(const TokenFeatures& f, size_t i);

// Entropy (nats) of softmax(logits), the largest probability and its index.
void logits_summary(const float* logits, int vocab, float* entropy, float* max_prob, int32_t* argmax);

// Rarity of a token id (see above); the tokenizer tells which ids are special.
float token_rarity(const Tokenizer& tok, int32_t id);

// Combines what the forward pass measured with what the logits say.
TokenFeatures make_features(const Tokenizer& tok, int32_t token, int32_t position, const float* logits, int vocab,
                            const TokenForwardStats& fwd);

}  // namespace kvd
