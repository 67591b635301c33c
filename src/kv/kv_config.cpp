#include "kv/kv_config.h"

#include "kv/kv_rotate.h"
#include "kv/kv_setting.h"
#include "util/error.h"

namespace kvd {

KvPlan make_kv_plan(int n_layers, int n_kv_heads, int head_dim, const KvQuantOptions& q,
                    const std::string& policy) {
  KvPlan p;
  p.display = policy;
  p.policy_spec = policy;
  KvLayout& l = p.layout;
  l.n_layers = n_layers;
  l.n_kv_heads = n_kv_heads;
  l.head_dim = head_dim;
  l.group = q.group;
  if (q.rotate != 0 && q.rotate != 1) throw Error("--kv-rotate must be 0 or 1");
  if (q.clip < -1 || q.clip > 1) throw Error("--kv-clip must be 0 or 1");
  l.rotate = q.rotate == 1;
  l.clip = q.clip == -1 ? l.rotate : q.clip == 1;
  if (l.rotate && !kv_rotation_supported(head_dim))
    throw Error("--kv-rotate 1 needs a power-of-two head dimension of at most 256 (this model's is " +
                std::to_string(head_dim) + "): use --kv-rotate 0");
  const std::string prefix = "static:";
  if (policy.rfind(prefix, 0) == 0) {
    const std::string arg = policy.substr(prefix.size());
    const KvSetting s = parse_kv_setting(arg, q.group);
    // Classes 2, 4, 8 hold the setting (the policy chooses 4); 16 stays fp16 (staged tokens, the KL
    // reference).
    for (auto& c : l.ladder) c = s;
    l.ladder[static_cast<size_t>(kv_class_index(16))] = KvSetting{16, 16, q.group, q.group};
    l.has_ladder = true;
    p.policy_spec = s.kbits == 16 && s.vbits == 16 ? "static:16" : "static:4";
  } else {
    parse_kv_ladder(q.ladder, q.group, l);
  }
  validate_kv_layout(l);
  return p;
}

}  // namespace kvd
