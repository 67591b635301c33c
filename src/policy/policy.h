// KV bit-width policies behind one interface, chosen with --kv-policy:
//   static:B         every token at B bits (B in 2, 4, 8, 16)
//   rule[:T1,T2,T3]  (or T1/T2/T3) next-token entropy thresholds (nats): H >= T3 -> 16, H >= T2 -> 8, H >= T1 -> 4,
//                    else 2. Defaults 2.0, 4.0, 6.5 reproduce the seed's observed mapping (docs/policies.md)
//   learned:FILE     a trained controller (the controller issue fills this in)
#pragma once
#include <memory>
#include <string>

#include "policy/features.h"

namespace kvd {

class KvPolicy {
 public:
  virtual ~KvPolicy() = default;
  // Bit-width for a token, from its features.
  virtual int choose(const TokenFeatures& f) = 0;
  // True when choose() reads the features (so the caller must compute logits for every token).
  virtual bool needs_features() const = 0;
  // A one-line description, e.g. "rule:2.00,4.00,6.50".
  virtual std::string describe() const = 0;
};

// Parses a --kv-policy spec. Throws kvd::Error naming what is wrong.
std::unique_ptr<KvPolicy> make_policy(const std::string& spec);

}  // namespace kvd
