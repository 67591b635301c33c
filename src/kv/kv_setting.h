// Text forms of KV width settings and ladders (kv/kv_layout.h):
//   setting: "F16" | "B" (K = V = B bits at the default group) | "KaVb" | "KaVbgG" | "KagGVbgH"
//            e.g. "K5V4g64" = K 5 bits, V 4 bits, groups of 64; "4" = K4V4 at --kv-group
//   ladder:  "2=K3V2g64,4=K5V4g64,8=K8V8g32,16=F16" (every class 2, 4, 8, 16 once)
#pragma once
#include <string>

#include "kv/kv_layout.h"

namespace kvd {

// Parses a setting; default_group fills in groups the text leaves out. Throws kvd::Error naming the problem.
KvSetting parse_kv_setting(const std::string& text, int default_group);
std::string format_kv_setting(const KvSetting& s);
// Parses a ladder into layout.ladder (has_ladder = true). Throws kvd::Error.
void parse_kv_ladder(const std::string& text, int default_group, KvLayout& layout);
std::string format_kv_ladder(const KvLayout& layout);
// One line naming everything that decides the stored bytes of a token: the ladder, rotation (with its seed)
// and clipping; the controller file and collect's sidecar record it, and loading compares it.
std::string kv_quantizer_id(const KvLayout& layout);
// Checks that every setting of the layout fits its head dimension (groups divide it, widths valid).
void validate_kv_layout(const KvLayout& layout);

}  // namespace kvd
