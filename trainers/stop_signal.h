// Graceful stops: SIGTERM, SIGINT and SIGUSR1 (what Slurm sends before preemption) ask the
// trainer to finish its step, checkpoint and exit 0. A second SIGINT exits at once (code 130).
#pragma once
#include <csignal>

namespace ditlab {

class StopSignals {
 public:
  StopSignals();   // installs the handlers
  ~StopSignals();  // restores the previous ones
  StopSignals(const StopSignals&) = delete;
  StopSignals& operator=(const StopSignals&) = delete;

  // The signal that asked for a stop, or 0.
  static int requested();

 private:
  struct sigaction previous_[3];
};

}  // namespace ditlab
