#include "data/progress.h"

#include <algorithm>
#include <cstdio>

#include <unistd.h>

namespace pt::data {

bool stderr_is_terminal() { return ::isatty(STDERR_FILENO) == 1; }

ProgressBar::ProgressBar(std::string label, uint64_t total, std::string unit, bool enabled)
    : label_(std::move(label)), unit_(std::move(unit)), total_(total), enabled_(enabled),
      start_(std::chrono::steady_clock::now()), last_draw_(start_) {}

void ProgressBar::update(uint64_t done) {
  done_ = done;
  const auto now = std::chrono::steady_clock::now();
  if (!enabled_ || now - last_draw_ < std::chrono::milliseconds(100)) return;
  last_draw_ = now;
  draw(done);
}

void ProgressBar::finish() {
  if (!enabled_) return;
  draw(done_);
  std::fputc('\n', stderr);
}

std::string ProgressBar::amount(double v) const {
  char buf[32];
  if (unit_ == "B") {
    const char* units[] = {"B", "KB", "MB", "GB", "TB"};
    int u = 0;
    while (v >= 1000 && u < 4) v /= 1000, ++u;
    std::snprintf(buf, sizeof buf, u ? "%.1f %s" : "%.0f %s", v, units[u]);
  } else {
    std::snprintf(buf, sizeof buf, "%.0f %s", v, unit_.c_str());
  }
  return buf;
}

void ProgressBar::draw(uint64_t done) {
  constexpr int kWidth = 30;
  const double frac = total_ ? std::min(1.0, static_cast<double>(done) / total_) : 1.0;
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  const double rate = secs > 0 ? done / secs : 0.0;
  const double eta = rate > 0 && total_ > done ? (total_ - done) / rate : 0.0;
  const int filled = static_cast<int>(frac * kWidth);
  std::string bar = std::string(filled, '=') + (filled < kWidth ? ">" : "") + std::string(std::max(0, kWidth - filled - 1), ' ');
  std::fprintf(stderr, "\r%s [%s] %5.1f%% %s / %s  %s/s  eta %.0fs   ", label_.c_str(), bar.c_str(), frac * 100,
               amount(done).c_str(), amount(total_).c_str(), amount(rate).c_str(), eta);
  std::fflush(stderr);
}

}  // namespace pt::data
