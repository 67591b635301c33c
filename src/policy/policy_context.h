// The PolicyContext of a cache layout: the stored bits of each width class and the quantizer id (what a
// learned controller's labels must have been made with).
#pragma once
#include "kv/kv_layout.h"
#include "policy/policy.h"

namespace kvd {

PolicyContext policy_context_for(const KvLayout& layout);

}  // namespace kvd
