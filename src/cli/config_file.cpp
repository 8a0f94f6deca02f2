#include "src/cli/config_file.h"

#include <filesystem>

#include "src/common/error.h"

namespace ditlab::cli {

std::string config_path_or_default(const std::optional<std::string>& given) {
  if (given) {
    // "" would reach load_experiment_config as "no file" and silently give the defaults.
    if (given->empty()) throw UsageError("--config needs a file path, got an empty value ('--config=')");
    return *given;  // load_experiment_config checks that it is a regular file
  }
  const std::string local = "configs/default.yaml";
  if (std::filesystem::is_regular_file(local)) return local;
  return std::string(DITLAB_SOURCE_DIR) + "/" + local;
}

}  // namespace ditlab::cli
