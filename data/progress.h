// A one-line progress bar on stderr, drawn only when stderr is a terminal, at most 10 times a second.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

namespace pt::data {

class ProgressBar {
 public:
  // unit "B" shows human-readable byte sizes; any other unit is shown after plain counts.
  ProgressBar(std::string label, uint64_t total, std::string unit, bool enabled);
  void update(uint64_t done);
  // Draws the final state and ends the line.
  void finish();

 private:
  void draw(uint64_t done);
  std::string amount(double v) const;

  std::string label_, unit_;
  uint64_t total_;
  bool enabled_;
  std::chrono::steady_clock::time_point start_, last_draw_;
  uint64_t done_ = 0;
};

// Whether stderr is a terminal (the default for showing progress).
bool stderr_is_terminal();

}  // namespace pt::data
