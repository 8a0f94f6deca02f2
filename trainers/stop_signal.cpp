#include "trainers/stop_signal.h"

#include <unistd.h>

#include <atomic>

namespace ditlab {
namespace {

std::atomic<int> g_requested{0};
constexpr int kSignals[3] = {SIGTERM, SIGINT, SIGUSR1};

void on_signal(int sig) {
  if (sig == SIGINT && g_requested.load() != 0) {
    // Second Ctrl-C: the user does not want to wait for the checkpoint.
    const char msg[] = "\nsecond interrupt: exiting without a checkpoint\n";
    ssize_t ignored = ::write(STDERR_FILENO, msg, sizeof(msg) - 1);
    (void)ignored;
    ::_exit(130);
  }
  g_requested.store(sig);
}

}  // namespace

StopSignals::StopSignals() {
  g_requested.store(0);
  struct sigaction action = {};
  action.sa_handler = on_signal;
  sigemptyset(&action.sa_mask);
  for (int i = 0; i < 3; ++i) sigaction(kSignals[i], &action, &previous_[i]);
}

StopSignals::~StopSignals() {
  for (int i = 0; i < 3; ++i) sigaction(kSignals[i], &previous_[i], nullptr);
}

int StopSignals::requested() { return g_requested.load(); }

}  // namespace ditlab
