// Which config changes a resumed run may make.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "src/config/experiment_config.h"

namespace ditlab {

// Whether `key` only affects bookkeeping (how long, how often to log or save, where, sampling
// at the end), so that a resumed run may change it freely.
bool free_on_resume(const std::string& key);

// Compares the checkpoint's resolved config with the resumed run's. Architecture keys
// (model.*) must match; other keys that change the maths must match unless `allow_change`.
// Throws ConfigError listing every offending key with both values; returns the keys that
// differ and were allowed (for the log).
std::vector<std::string> check_resume_config(const ExperimentConfig& saved,
                                             const ExperimentConfig& now, bool allow_change);

// The data order is a function of the dataset's size, which no config key holds (an image
// folder gains files under the same data.path): a checkpoint's "dataset_size" (its trainer
// metadata; checkpoints from before it was saved pass) must be `size` unless `allow_change`.
// Throws ConfigError naming `checkpoint_dir` and both sizes; true when they differ and it was
// allowed (for the log).
// A checkpoint's "random_streams" (trainer metadata) must be kRandomStreams: a checkpoint of
// another ditlab's streams (or of one from before they were recorded) resumed here would draw
// other timesteps, noise and epoch order. Throws ConfigError naming `checkpoint_dir` unless
// `allow_change`; true when it differs and was allowed (for the log).
bool check_resume_random_streams(const std::map<std::string, std::string>& trainer_metadata,
                                 const std::string& checkpoint_dir, bool allow_change);

bool check_resume_dataset_size(const std::map<std::string, std::string>& trainer_metadata,
                               const std::string& checkpoint_dir, int64_t size, bool allow_change);

}  // namespace ditlab
