#include <cstdio>

#include "src/cli/args.h"
#include "src/cli/commands.h"
#include "src/cli/config_file.h"
#include "src/config/config_loader.h"

namespace ditlab::cli {

int run_config(int argc, char** argv) {
  Args args("config",
            {{"config", "experiment YAML (default: configs/default.yaml)"},
             {"docs", "print the reference of every key (docs/config.md) instead", false}},
            argc, argv, 2);
  if (args.print_help_if_asked()) return 0;
  if (args.has("docs")) {
    std::printf("%s", config_reference_markdown().c_str());
    return 0;
  }
  auto config = load_experiment_config(config_path_or_default(args.get("config")), args.overrides());
  std::printf("%s", to_yaml(config).c_str());
  return 0;
}

}  // namespace ditlab::cli
