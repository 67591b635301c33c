// How a run's KV layout is assembled from the user's options and its policy: one place, used by every
// command, benchmark and test that builds a cache.
//   static:B (B = 2, 4, 8, 16) and static:SETTING (e.g. static:K5V4g64): every token at that one setting
//     (B = KBVB at the default group), whatever the ladder says: classes 2, 4 and 8 hold it and the policy
//     chooses 4; class 16 stays fp16 (staged tokens read as class 16, and KL references run at it);
//   any other policy: its width classes 2, 4, 8, 16 map through the ladder.
#pragma once
#include <string>

#include "kv/kv_layout.h"

namespace kvd {

inline constexpr const char* kDefaultKvLadder = "2=K3V2g64,4=K5V4g64,8=K8V8g32,16=F16";

struct KvQuantOptions {
  int group = 32;                         // --kv-group: default group size
  std::string ladder = kDefaultKvLadder;  // --kv-ladder
  int rotate = 1;                         // --kv-rotate: randomized Hadamard on quantized rows
  int clip = -1;  // --kv-clip: MSE clip search; -1 = as --kv-rotate (0 0 = the original cache)
};

struct KvPlan {
  KvLayout layout;
  std::string policy_spec;  // what make_policy gets (static:SETTING becomes static:4, or static:16 for F16)
  std::string display;      // the policy as the user named it
};

// Throws kvd::Error for a bad setting, ladder or group.
KvPlan make_kv_plan(int n_layers, int n_kv_heads, int head_dim, const KvQuantOptions& q,
                    const std::string& policy);

}  // namespace kvd
