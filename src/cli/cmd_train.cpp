#include <filesystem>

#include "src/cli/args.h"
#include "src/cli/commands.h"
#include "src/cli/config_file.h"
#include "src/config/config_loader.h"
#include "trainers/trainer.h"

namespace ditlab::cli {

int run_train(int argc, char** argv) {
  Args args("train",
            {{"config", "experiment YAML (default: configs/default.yaml)"},
             {"resume", "auto (newest complete checkpoint of run.dir, else start fresh) or a "
                        "checkpoint directory"},
             {"allow-config-change", "let a resumed run change keys that change the maths "
                                     "(e.g. train.lr); model.* never", false}},
            argc, argv, 2);
  if (args.print_help_if_asked()) return 0;
  auto config = load_experiment_config(config_path_or_default(args.get("config")), args.overrides());
  TrainOptions options;
  options.resume = args.get_or("resume", "");
  options.allow_config_change = args.has("allow-config-change");
  options.command_line = joined_command_line(argc, argv);
  train(config, options);  // a stop by signal has checkpointed: exit 0
  return 0;
}

}  // namespace ditlab::cli
