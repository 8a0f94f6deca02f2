// The run directory at the start of training: a fresh one, or the one a resume continues.
#pragma once
#include <cstdint>
#include <optional>
#include <string>

#include "src/config/experiment_config.h"
#include "trainers/checkpoint.h"
#include "trainers/trainer.h"

namespace ditlab {

// The checkpoint that `options.resume` asks for ("auto": the newest that verifies, or none), with
// its config checked against `config` (resolved). Throws ConfigError / IoError when it cannot be
// used; nothing on disk changes before this returns.
std::optional<Checkpoint> find_resume_checkpoint(const ExperimentConfig& config,
                                                 const TrainOptions& options);

// Makes run.dir ready. Fresh (no checkpoint): refuses a directory that holds a run, unless
// `options.resume` is "auto" (then the leftovers of a run killed before its first checkpoint
// are removed). Resuming: sets newer checkpoints aside and drops the metrics records the
// resumed run will log again.
// Whether `dir` holds a run's final weights (model.safetensors and ema.safetensors), both
// written at step `steps`.
bool run_is_finished(const std::string& dir, int64_t steps);

void prepare_run_directory(const ExperimentConfig& config, const TrainOptions& options,
                           const std::optional<Checkpoint>& resume_from);

}  // namespace ditlab
