// `dit export`: the weights of one checkpoint alone, in the official key layout.
#include "src/cli/args.h"
#include "src/cli/commands.h"
#include "src/common/error.h"
#include "src/common/log.h"
#include "src/common/text.h"
#include "src/config/config_loader.h"
#include "src/io/module_weights.h"
#include "src/io/safetensors.h"
#include "trainers/checkpoint.h"

namespace ditlab::cli {

int run_export(int argc, char** argv) {
  Args args("export",
            {{"checkpoint", "a checkpoint directory (run/checkpoints/step-N)"},
             {"out", "the weights file to write (.safetensors)"},
             {"ema", "export the EMA weights (default: the trained weights)", false}},
            argc, argv, 2);
  if (args.print_help_if_asked()) return 0;
  const std::string dir = args.require("checkpoint");
  const std::string out = args.require("out");
  args.reject_overrides();
  if (!ends_with(out, ".safetensors")) {
    throw UsageError("dit export: --out must name a .safetensors file, got '" + out + "'");
  }
  Checkpoint checkpoint = load_checkpoint(dir);  // verifies checksums before anything is written
  const bool ema = args.has("ema");
  write_safetensors(out, ema ? checkpoint.ema : checkpoint.model,
                    weights_metadata(checkpoint.config_yaml, checkpoint.step));
  spdlog::info("wrote {} ({} weights of step {})", out, ema ? "EMA" : "trained", checkpoint.step);
  ExperimentConfig config;
  apply_yaml_text(config, checkpoint.config_yaml, dir + " (config)");
  if (config.model.mup.enabled) {
    spdlog::warn("this is a µP model (model.mup, base width {}): its readout and attention "
                 "multipliers are in the embedded config, not in the tensors. dit sample applies "
                 "them; other code must too (docs/mup.md)", config.model.mup.base_width);
  }
  return 0;
}

}  // namespace ditlab::cli
