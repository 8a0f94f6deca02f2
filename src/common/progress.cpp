#include "src/common/progress.h"

#include <cstdio>

#include "src/common/log.h"

namespace ditlab {

std::string format_duration(double seconds) {
  if (seconds < 0 || seconds > 1e7) return "--:--";
  auto s = static_cast<int64_t>(seconds + 0.5);
  char buf[32];
  if (s >= 3600) {
    std::snprintf(buf, sizeof(buf), "%ld:%02ld:%02ld", static_cast<long>(s / 3600),
                  static_cast<long>(s / 60 % 60), static_cast<long>(s % 60));
  } else {
    std::snprintf(buf, sizeof(buf), "%02ld:%02ld", static_cast<long>(s / 60), static_cast<long>(s % 60));
  }
  return buf;
}

ProgressBar::ProgressBar(int64_t total, std::string label, int64_t start, bool enabled)
    : total_(total),
      start_(start),
      label_(std::move(label)),
      active_(enabled && log::stderr_is_terminal()) {
  begin_ = last_draw_ = std::chrono::steady_clock::now();
}

ProgressBar::~ProgressBar() { finish(); }

void ProgressBar::update(int64_t done, const std::string& postfix) {
  if (!active_ || finished_) return;
  auto now = std::chrono::steady_clock::now();
  // Redraw at most ten times a second, and always at the end.
  if (done < total_ && now - last_draw_ < std::chrono::milliseconds(100)) return;
  last_draw_ = now;
  double elapsed = std::chrono::duration<double>(now - begin_).count();
  double rate = elapsed > 0 ? static_cast<double>(done - start_) / elapsed : 0.0;
  double eta = rate > 0 ? static_cast<double>(total_ - done) / rate : -1;
  constexpr int kWidth = 30;
  int filled = total_ > 0 ? static_cast<int>(kWidth * done / total_) : kWidth;
  std::string bar(filled, '#');
  bar += std::string(kWidth - filled, '.');
  std::fprintf(stderr, "\r%s [%s] %ld/%ld  %.2f it/s  ETA %s  %s\033[K", label_.c_str(), bar.c_str(),
              static_cast<long>(done), static_cast<long>(total_), rate, format_duration(eta).c_str(),
              postfix.c_str());
  std::fflush(stderr);
}

void ProgressBar::clear() {
  if (!active_ || finished_) return;
  std::fprintf(stderr, "\r\033[K");  // the next log line takes the bar's place; update() redraws it
  last_draw_ = {};
}

void ProgressBar::finish() {
  if (!active_ || finished_) return;
  finished_ = true;
  std::fprintf(stderr, "\n");
  std::fflush(stderr);
}

}  // namespace ditlab
