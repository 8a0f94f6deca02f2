// The training loop shared by every backbone.
#pragma once
#include <string>

#include "src/config/experiment_config.h"

namespace ditlab {

struct TrainOptions {
  // "": a fresh run (refuses a run directory that already holds one); "auto": continue from the
  // newest complete checkpoint of run.dir, or start fresh if there is none; otherwise the path
  // of a checkpoint directory.
  std::string resume;
  // Allow a resumed run to change config keys that change the maths (not model.*).
  bool allow_config_change = false;
  std::string command_line;
};

struct TrainSummary {
  std::string run_dir;
  int64_t start_step = 0;   // > 0 when resumed
  int64_t steps = 0;        // optimizer steps completed
  double first_loss = 0.0;  // mean loss of the first logging window of this process
  double last_loss = 0.0;   // mean loss of the last logging window
  double seconds = 0.0;
  int stopped_by_signal = 0;  // the signal that ended the run early (after a checkpoint), or 0
};

// Trains as `config` says, writing everything into run.dir: config.yaml, run_info.yaml,
// train.log, metrics.jsonl, checkpoints/, model.safetensors, ema.safetensors and samples.png.
TrainSummary train(const ExperimentConfig& config, const TrainOptions& options = {});

}  // namespace ditlab
