// A one-line progress bar for terminals: [#####.....] 120/2000  3.1 it/s  ETA 10:07  loss 0.21.
// Drawn on stderr, and only when stderr is a terminal, so batch logs never fill with carriage
// returns (callers log periodic lines either way).
#pragma once
#include <chrono>
#include <cstdint>
#include <string>

namespace ditlab {

class ProgressBar {
 public:
  // A disabled bar draws nothing (e.g. on every rank but rank 0).
  ProgressBar(int64_t total, std::string label, int64_t start = 0, bool enabled = true);
  ~ProgressBar();
  void update(int64_t done, const std::string& postfix = "");
  // Erases the bar before a log line is printed; the next update() draws it again.
  void clear();
  void finish();
  bool active() const { return active_; }

 private:
  int64_t total_, start_;
  std::string label_;
  bool active_;
  bool finished_ = false;
  std::chrono::steady_clock::time_point begin_, last_draw_;
};

// "1:02:03" or "02:03".
std::string format_duration(double seconds);

}  // namespace ditlab
