// A progress bar on a stream (stderr): label, done/total units, rate, ETA. On a terminal it redraws one
// line at most 4 times a second; elsewhere (a log file) it prints a line at every tenth of the total.
#pragma once
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <string>

namespace kvd {

class ProgressBar {
 public:
  // out nullptr: silent. unit names what is counted ("rows", "chunks", "tokens").
  ProgressBar(std::FILE* out, std::string label, int64_t total, std::string unit);
  void update(int64_t done);
  void finish();  // draws the final state and ends the line

 private:
  void draw(int64_t done, bool last);
  std::FILE* out_;
  std::string label_, unit_;
  int64_t total_;
  bool tty_;
  int64_t last_decile_ = -1;
  std::chrono::steady_clock::time_point t0_ = std::chrono::steady_clock::now();
  double drawn_ = -1;
  int64_t done_ = 0;
};

}  // namespace kvd
