// `dit flops`: what a model costs, from its config alone (nothing is built or allocated):
// parameters, activated parameters, tokens, forward MACs per image (the DiT papers' "Gflops")
// and training FLOPs per image (forward + backward ~ 3 forwards of 2 FLOPs per MAC).
#include <cstdio>

#include "models/registry.h"
#include "src/cli/args.h"
#include "src/cli/commands.h"
#include "src/cli/model_input.h"
#include "src/config/config_loader.h"

namespace ditlab::cli {

int run_flops(int argc, char** argv) {
  std::vector<Flag> flags = {{"model", "preset or family (default: the config's model.name)"},
                             {"config", "experiment YAML whose model and data sections to use"}};
  for (auto& flag : model_input_flags()) flags.push_back(flag);
  Args args("flops", flags, argc, argv, 2);
  if (args.print_help_if_asked()) return 0;
  // key=value overrides (model.hidden_size=...) apply either way.
  ExperimentConfig config;
  if (args.has("config")) {
    config = load_experiment_config(args.require("config"), args.overrides());
  } else {
    apply_overrides(config, args.overrides());
  }
  if (args.has("model")) config.model.name = args.require("model");
  resolve_model_input(config, args, "flops");
  const ModelConfig& mc = config.model;
  const ModelCost cost = model_cost(mc);
  std::printf("model              %s (input %lldx%lldx%lld, %lld classes)\n", mc.name.c_str(),
              static_cast<long long>(mc.input_size), static_cast<long long>(mc.input_size),
              static_cast<long long>(mc.in_channels), static_cast<long long>(mc.num_classes));
  std::printf("parameters         %lld (%.2fM)\n", static_cast<long long>(cost.parameters), cost.parameters / 1e6);
  std::printf("active parameters  %lld (%.2fM)\n", static_cast<long long>(cost.active_parameters),
              cost.active_parameters / 1e6);
  std::printf("tokens             %lld\n", static_cast<long long>(cost.tokens));
  std::printf("GMACs / image      %.2f   (forward; the papers' \"Gflops\")\n", cost.forward_macs / 1e9);
  std::printf("train GFLOPs/image %.2f   (6 x MACs of the forward pass as trained: forward + backward, 2 FLOPs per MAC)\n",
              6.0 * cost.training_forward_macs / 1e9);
  return 0;
}

}  // namespace ditlab::cli
