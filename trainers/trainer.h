// The single-process training loop shared by every backbone.
#pragma once
#include <string>

#include "src/config/experiment_config.h"

namespace ditlab {

struct TrainSummary {
  std::string run_dir;
  int64_t steps = 0;
  double first_loss = 0.0;  // mean loss of the first logging window
  double last_loss = 0.0;   // mean loss of the last logging window
  double seconds = 0.0;
};

// Trains as `config` says, writing everything into run.dir: config.yaml, run_info.yaml,
// train.log, metrics.jsonl, model.safetensors, ema.safetensors and samples.png.
TrainSummary train(const ExperimentConfig& config, const std::string& command_line);

}  // namespace ditlab
