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
             {"help", "show this help", false}},
            argc, argv, 2);
  if (args.has("help")) {
    std::printf("%s", args.usage().c_str());
    return 0;
  }
  auto config = load_experiment_config(config_path_or_default(args.get("config")), args.overrides());
  train(config, joined_command_line(argc, argv));
  return 0;
}

}  // namespace ditlab::cli
