// `dit train-vae`: an AutoencoderKL trained on the configured images (trainers/vae_trainer.h).
#include "src/cli/args.h"
#include "src/cli/commands.h"
#include "src/cli/config_file.h"
#include "src/config/config_loader.h"
#include "trainers/vae_trainer.h"

namespace ditlab::cli {

int run_train_vae(int argc, char** argv) {
  Args args("train-vae", {{"config", "experiment YAML (e.g. configs/vae/fashion_mnist_f4.yaml)"}}, argc, argv, 2);
  if (args.print_help_if_asked()) return 0;
  const auto config = load_experiment_config(config_path_or_default(args.get("config")), args.overrides());
  train_vae(config, joined_command_line(argc, argv));
  return 0;
}

}  // namespace ditlab::cli
