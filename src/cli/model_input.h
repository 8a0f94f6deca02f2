// The input a model is priced or timed at by the commands that do not train it (dit flops,
// dit bench): the flags first, then, under --config, the shape the experiment's data gives (as
// dit train resolves it, through the autoencoder), else DiT's ImageNet latents (32x32x4, 1000
// classes).
#pragma once
#include <vector>

#include "src/cli/args.h"
#include "src/config/experiment_config.h"

namespace ditlab::cli {

// --input-size, --in-channels and --num-classes, with their help.
std::vector<Flag> model_input_flags();

// Sets config.model's input_size, in_channels and num_classes. The data is opened only where the
// config leaves one of them to it (0) and no flag gives it; a UsageError naming `command` and
// the flags to pass if it cannot be.
void resolve_model_input(ExperimentConfig& config, const Args& args, const std::string& command);

}  // namespace ditlab::cli
