#include "policy/policy_context.h"

#include "kv/kv_setting.h"

namespace kvd {

PolicyContext policy_context_for(const KvLayout& layout) {
  PolicyContext ctx;
  for (int c : kKvClasses) ctx.class_bits[static_cast<size_t>(kv_class_index(c))] = layout.effective_bits(c);
  ctx.quantizer = kv_quantizer_id(layout);
  return ctx;
}

}  // namespace kvd
