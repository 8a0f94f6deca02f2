#include "src/cli/config_file.h"

#include <filesystem>

namespace ditlab::cli {

std::string config_path_or_default(const std::optional<std::string>& given) {
  if (given) return *given;
  const std::string local = "configs/default.yaml";
  if (std::filesystem::exists(local)) return local;
  return std::string(DITLAB_SOURCE_DIR) + "/" + local;
}

}  // namespace ditlab::cli
