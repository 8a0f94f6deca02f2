// `dit train-classifier`: the feature network of `dit eval` (trainers/classifier_trainer.h).
#include "src/cli/args.h"
#include "src/cli/commands.h"
#include "src/cli/config_file.h"
#include "src/config/config_loader.h"
#include "trainers/classifier_trainer.h"

namespace ditlab::cli {

int run_train_classifier(int argc, char** argv) {
  Args args("train-classifier",
            {{"config", "experiment YAML (e.g. configs/eval/fashion_mnist_classifier.yaml)"}}, argc, argv, 2);
  if (args.print_help_if_asked()) return 0;
  const auto config = load_experiment_config(config_path_or_default(args.get("config")), args.overrides());
  train_classifier(config, joined_command_line(argc, argv));
  return 0;
}

}  // namespace ditlab::cli
