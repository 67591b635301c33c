// Errors at the edges (files, flags, user data) are exceptions carrying a one-line message for the
// user; internal invariants use KVD_ASSERT, which names the file and line.
#pragma once
#include <cstdio>
#include <cstdlib>
#include <stdexcept>
#include <string>

namespace kvd {

// A problem with user input: the message is printed as is, on one line, and the program exits non-zero.
class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& msg) : std::runtime_error(msg) {}
};

[[noreturn]] inline void assert_fail(const char* expr, const char* file, int line) {
  std::fprintf(stderr, "kvdial: internal error: %s at %s:%d\n", expr, file, line);
  std::abort();
}

}  // namespace kvd

#define KVD_ASSERT(cond) \
  do { \
    if (!(cond)) ::kvd::assert_fail(#cond, __FILE__, __LINE__); \
  } while (0)
