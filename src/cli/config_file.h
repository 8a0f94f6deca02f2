// Where the CLI finds experiment files.
#pragma once
#include <optional>
#include <string>

namespace ditlab::cli {

// The given path, or configs/default.yaml (in the working directory, else in the source tree).
std::string config_path_or_default(const std::optional<std::string>& given);

}  // namespace ditlab::cli
