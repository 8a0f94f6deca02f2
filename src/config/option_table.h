// The schema of the experiment configuration: one row per key, with its type, range and help.
#pragma once
#include <functional>
#include <string>
#include <vector>

#include "src/config/experiment_config.h"

namespace YAML {
class Node;
}

namespace ditlab {

struct OptionSpec {
  std::string key;   // dotted path, e.g. "train.lr"
  std::string type;  // "int", "float", "bool" or "string"
  std::string range; // human-readable constraint, e.g. ">= 1" or "one of: ddpm, ddim"
  std::string help;
  // Parses `value` into the config; throws ConfigError naming key, source and expectation.
  std::function<void(ExperimentConfig&, const YAML::Node& value, const std::string& source)> set;
  // The current value as a YAML scalar.
  std::function<std::string(const ExperimentConfig&)> get;
};

// Every key, in documentation order.
const std::vector<OptionSpec>& option_table();

// The row for `key`, or nullptr.
const OptionSpec* find_option(const std::string& key);

// The valid key closest to `key` by edit distance (for "did you mean" hints).
std::string closest_option(const std::string& key);

}  // namespace ditlab
