// Comma lists of the command line: split into parts, or into non-negative integers with an error that
// names the option.
#pragma once
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "util/error.h"

namespace kvd {

// The non-empty parts of s between separators.
inline std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  std::string part;
  while (std::getline(ss, part, sep))
    if (!part.empty()) out.push_back(part);
  return out;
}

// The comma-separated non-negative integers of s; throws kvd::Error naming `what` for any other part.
inline std::vector<int> split_ints(const std::string& s, const char* what) {
  std::vector<int> out;
  for (const auto& p : split(s, ',')) {
    try {
      size_t used = 0;
      const int v = std::stoi(p, &used);
      if (used != p.size() || v < 0) throw std::invalid_argument(p);
      out.push_back(v);
    } catch (const std::exception&) {
      throw Error(std::string(what) + ": '" + p + "' is not a non-negative integer");
    }
  }
  return out;
}

}  // namespace kvd
