// KV bit-width policies behind one interface, chosen with --kv-policy:
//   static:B         every token at B bits (B in 2, 4, 8, 16)
//   rule[:T1,T2,T3]  (or T1/T2/T3) next-token entropy thresholds (nats): H >= T3 -> 16, H >= T2 -> 8, H >= T1
//   -> 4,
//                    else 2. Defaults 2.0, 4.0, 6.5 reproduce the seed's observed mapping (docs/policies.md)
//   pattern:W1/W2/.. the widths in turn by position (token at position p gets W[p % n]): mixtures with a
//                    known average, for benchmarks and tests (e.g. pattern:2/2/8 stores 5 bits per element,
//                    as static:4 does)
//   learned:FILE     a trained controller (the controller issue fills this in)
#pragma once
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
  // Mean time of one choose() in nanoseconds, for policies that measure it (the learned controller);
  // 0 for policies whose choice costs nothing worth reporting.
  virtual double ns_per_choice() const { return 0; }
};

// The width a policy that decides before the forward pass (!needs_features()) gives a token.
int width_in_advance(KvPolicy& policy, int32_t position, int32_t token);

// Parses a --kv-policy spec. Throws kvd::Error naming what is wrong.
std::unique_ptr<KvPolicy> make_policy(const std::string& spec);

}  // namespace kvd
