// KV bit-width policies behind one interface, chosen with --kv-policy:
//   static:B         every token at B bits (B in 2, 4, 8, 16)
//   rule[:T1,T2,T3]  (or T1/T2/T3) next-token entropy thresholds (nats): H >= T3 -> 16, H >= T2 -> 8, H >= T1
//   -> 4,
//                    else 2. Defaults 2.0, 4.0, 6.5 reproduce the seed's observed mapping (docs/policies.md)
//   pattern:W1/W2/.. the widths in turn by position (token at position p gets W[p % n]): mixtures with a
//                    known average, for benchmarks and tests (e.g. pattern:2/2/8 stores 5 bits per element,
//                    as static:4 does)
//   learned:FILE     a trained controller (docs/controller.md): the MLP of the file decides each width
//   random:SEED      (with a budget only) random mixing of the classes, seeded: a baseline
// Any spec takes a budget suffix @B (e.g. learned:FILE@5, rule@3.5, random@4): stored bits per element,
// scales included, whose running average stays <= B from the 32nd token of a sequence on
// (policy/budget.h, docs/policies.md).
#pragma once
#include <array>
#include <cstdint>
#include <memory>
#include <string>

#include "policy/features.h"

namespace kvd {

class KvPolicy {
 public:
  virtual ~KvPolicy() = default;
  // Bit-width for a token, from its features. position and token are always filled in; the rest only
  // when needs_features().
  virtual int choose(const TokenFeatures& f) = 0;
  // True when choose() reads the features beyond position and token (so the caller must compute logits
  // for every token and decide after the token's forward pass).
  virtual bool needs_features() const = 0;
  // A one-line description, e.g. "rule:2.00,4.00,6.50".
  virtual std::string describe() const = 0;

  // Time spent deciding, for policies that run a model (the learned controller); others report no calls.
  struct DecisionCost {
    int64_t calls = 0;
    int64_t ns = 0;
    double ns_per_call() const { return calls ? static_cast<double>(ns) / static_cast<double>(calls) : 0.0; }
  };
  virtual DecisionCost decision_cost() const { return {}; }
  // Mean time of one choose() in nanoseconds (0 for policies whose choice costs nothing worth reporting).
  double ns_per_choice() const { return decision_cost().ns_per_call(); }
};

// What a policy needs to know about the cache that runs it.
struct PolicyContext {
  // Stored bits per element (scales included) of the width classes 2, 4, 8, 16: what a budget counts.
  // The defaults are the quantizer ladder's (2 = K3V2g64 3.0 bits, 4 = K5V4g64 5.0, 8 = K8V8g32 9.0,
  // 16 = F16), which are also today's cache at group 32.
  std::array<double, 4> class_bits{3.0, 5.0, 9.0, 16.0};
  // The cache's quantizer settings; a learned controller trained on labels made with other settings is
  // refused. Empty: not checked.
  std::string quantizer = "";
};

// The width a policy that decides before the forward pass (!needs_features()) gives a token.
int width_in_advance(KvPolicy& policy, int32_t position, int32_t token);

// Parses a --kv-policy spec. Throws kvd::Error naming what is wrong.
std::unique_ptr<KvPolicy> make_policy(const std::string& spec, const PolicyContext& ctx);
std::unique_ptr<KvPolicy> make_policy(const std::string& spec);  // default PolicyContext

}  // namespace kvd
