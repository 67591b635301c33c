// Progress bar on stderr.
#include "util/progress.h"

#include <unistd.h>

namespace kvd {

ProgressBar::ProgressBar(std::FILE* out, std::string label, int64_t total, std::string unit)
    : out_(out),
      label_(std::move(label)),
      unit_(std::move(unit)),
      total_(total),
      tty_(out && isatty(fileno(out))) {}

void ProgressBar::update(int64_t done) {
  done_ = done;
  draw(done, false);
}

void ProgressBar::finish() {
  if (!tty_ && total_ > 0 && last_decile_ == 10) return;  // the last line is already printed
  draw(done_, true);
}

void ProgressBar::draw(int64_t done, bool last) {
  if (!out_) return;
  const double now = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0_).count();
  if (tty_) {
    if (!last && now - drawn_ < 0.25) return;
  } else {
    const int64_t decile = total_ > 0 ? done * 10 / total_ : 0;
    if (!last && decile == last_decile_) return;
    last_decile_ = decile;
  }
  drawn_ = now;
  const double rate = now > 0 ? static_cast<double>(done) / now : 0;
  const double eta = rate > 0 ? static_cast<double>(total_ - done) / rate : 0;
  const int width = 24;
  const int fill =
      total_ > 0 ? static_cast<int>(width * static_cast<double>(done) / static_cast<double>(total_)) : 0;
  std::fprintf(out_, "%s%s [%s%s] %lld/%lld %s  %.1f s  ETA %d:%02d%s", tty_ ? "\r" : "", label_.c_str(),
               std::string(static_cast<size_t>(fill), '#').c_str(),
               std::string(static_cast<size_t>(width - fill), '.').c_str(), static_cast<long long>(done),
               static_cast<long long>(total_), unit_.c_str(), now, static_cast<int>(eta) / 60,
               static_cast<int>(eta) % 60, tty_ && !last ? "  " : "\n");
  std::fflush(out_);
}

}  // namespace kvd
