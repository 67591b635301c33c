#include "kv/kv_setting.h"

#include <cctype>
#include <cstdio>
#include <tuple>
#include <vector>

#include "util/error.h"

namespace kvd {
namespace {

// Reads an unsigned integer at text[i...]; false when there is none.
bool read_int(const std::string& t, size_t& i, int& out) {
  if (i >= t.size() || !std::isdigit(static_cast<unsigned char>(t[i]))) return false;
  long v = 0;
  while (i < t.size() && std::isdigit(static_cast<unsigned char>(t[i]))) {
    v = v * 10 + (t[i] - '0');
    if (v > 100000) return false;
    ++i;
  }
  out = static_cast<int>(v);
  return true;
}

[[noreturn]] void bad_setting(const std::string& text, const std::string& why) {
  throw Error("KV setting '" + text + "': " + why +
              " (expected F16, B, KaVb or KaVbgG with widths 2, 3, 4, 5, 6, 8, 16, e.g. K5V4g64)");
}

}  // namespace

KvSetting parse_kv_setting(const std::string& text, int default_group) {
  KvSetting s{16, 16, default_group, default_group};
  std::string t;
  for (char c : text) t += static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  if (t.empty()) bad_setting(text, "empty");
  if (t == "F16" || t == "16") return s;
  size_t i = 0;
  int b = 0;
  if (std::isdigit(static_cast<unsigned char>(t[0]))) {
    read_int(t, i, b);
    s.kbits = s.vbits = b;
    if (i < t.size() && t[i] == 'G') {
      ++i;
      int g = 0;
      if (!read_int(t, i, g)) bad_setting(text, "no group size after 'g'");
      s.kgroup = s.vgroup = g;
    }
  } else {
    if (t[i] != 'K') bad_setting(text, "must start with K, F16 or a width");
    ++i;
    if (!read_int(t, i, s.kbits)) bad_setting(text, "no K width");
    bool kgroup_given = false;
    if (i < t.size() && t[i] == 'G') {
      ++i;
      if (!read_int(t, i, s.kgroup)) bad_setting(text, "no group size after 'g'");
      kgroup_given = true;
    }
    if (i >= t.size() || t[i] != 'V') bad_setting(text, "no V width");
    ++i;
    if (!read_int(t, i, s.vbits)) bad_setting(text, "no V width");
    if (i < t.size() && t[i] == 'G') {
      ++i;
      int g = 0;
      if (!read_int(t, i, g)) bad_setting(text, "no group size after 'g'");
      s.vgroup = g;
      if (!kgroup_given) s.kgroup = g;
    }
  }
  if (i != t.size()) bad_setting(text, "unexpected '" + text.substr(i) + "'");
  if (!kv_width_valid(s.kbits)) bad_setting(text, "K width " + std::to_string(s.kbits) + " is not supported");
  if (!kv_width_valid(s.vbits)) bad_setting(text, "V width " + std::to_string(s.vbits) + " is not supported");
  for (int g : {s.kgroup, s.vgroup})
    if (g != 16 && g != 32 && g != 64 && g != 128)
      bad_setting(text, "group " + std::to_string(g) + " is not 16, 32, 64 or 128");
  if (s.kbits == 16) s.kgroup = default_group;
  if (s.vbits == 16) s.vgroup = default_group;
  return s;
}

std::string format_kv_setting(const KvSetting& s) {
  if (s.kbits == 16 && s.vbits == 16) return "F16";
  char buf[64];
  if (s.kbits == 16)
    std::snprintf(buf, sizeof buf, "K16V%dg%d", s.vbits, s.vgroup);
  else if (s.vbits == 16)
    std::snprintf(buf, sizeof buf, "K%dg%dV16", s.kbits, s.kgroup);
  else if (s.kgroup == s.vgroup)
    std::snprintf(buf, sizeof buf, "K%dV%dg%d", s.kbits, s.vbits, s.kgroup);
  else
    std::snprintf(buf, sizeof buf, "K%dg%dV%dg%d", s.kbits, s.kgroup, s.vbits, s.vgroup);
  return buf;
}

void parse_kv_ladder(const std::string& text, int default_group, KvLayout& layout) {
  bool seen[4] = {};
  std::array<KvSetting, 4> ladder{};
  size_t start = 0;
  while (start <= text.size()) {
    size_t end = text.find(',', start);
    if (end == std::string::npos) end = text.size();
    const std::string item = text.substr(start, end - start);
    const size_t eq = item.find('=');
    if (eq == std::string::npos)
      throw Error("--kv-ladder '" + text + "': item '" + item + "' is not CLASS=SETTING (e.g. 2=K3V2g64)");
    const std::string cls_s = item.substr(0, eq);
    const int cls = cls_s == "2" ? 2 : cls_s == "4" ? 4 : cls_s == "8" ? 8 : cls_s == "16" ? 16 : -1;
    if (cls < 0) throw Error("--kv-ladder '" + text + "': class '" + cls_s + "' is not one of 2, 4, 8, 16");
    const int ci = kv_class_index(cls);
    if (seen[ci]) throw Error("--kv-ladder '" + text + "': class " + cls_s + " given twice");
    seen[ci] = true;
    ladder[static_cast<size_t>(ci)] = parse_kv_setting(item.substr(eq + 1), default_group);
    start = end + 1;
  }
  for (int c : kKvClasses)
    if (!seen[kv_class_index(c)])
      throw Error("--kv-ladder '" + text + "': class " + std::to_string(c) +
                  " is missing (give 2, 4, 8 and 16)");
  layout.ladder = ladder;
  layout.has_ladder = true;
}

std::string format_kv_ladder(const KvLayout& layout) {
  std::string s;
  for (int c : kKvClasses)
    s += (s.empty() ? "" : ",") + std::to_string(c) + "=" + format_kv_setting(layout.setting(c));
  return s;
}

std::string kv_quantizer_id(const KvLayout& layout) {
  char buf[64];
  std::snprintf(buf, sizeof buf, ";rotate=%d;clip=%d;seed=%llu", layout.rotate ? 1 : 0, layout.clip ? 1 : 0,
                static_cast<unsigned long long>(layout.rotate ? layout.rotate_seed : 0));
  return "ladder=" + format_kv_ladder(layout) + buf;
}

void validate_kv_layout(const KvLayout& layout) {
  // Staged tokens read at fp16 carry class 16 (kv/kv_cache.h), so class 16 must store fp16.
  if (!(layout.setting(16) == KvSetting{16, 16, layout.setting(16).kgroup, layout.setting(16).vgroup}))
    throw Error("KV class 16 must be F16 (got " + format_kv_setting(layout.setting(16)) + ")");
  for (int c : kKvClasses) {
    const KvSetting s = layout.setting(c);
    for (auto [bits, g, what] : {std::tuple{s.kbits, s.kgroup, "K"}, std::tuple{s.vbits, s.vgroup, "V"}}) {
      if (!kv_width_valid(bits))
        throw Error(std::string("KV class ") + std::to_string(c) + ": " + what + " width " +
                    std::to_string(bits) + " is not supported");
      if (bits == 16) continue;
      if (g <= 0 || (g * kv_lo_bits(bits)) % 8 != 0 || (g * kv_hi_bits(bits)) % 8 != 0 ||
          layout.head_dim % g != 0)
        throw Error("KV group " + std::to_string(g) + " (class " + std::to_string(c) + ", " + what + " at " +
                    std::to_string(bits) + " bits) must divide the head dimension (" +
                    std::to_string(layout.head_dim) + ") and pack into whole bytes");
    }
  }
}

}  // namespace kvd
