// Loading an experiment: YAML files (each may name a `base:` file it overrides), then
// `key.sub=value` overrides from the command line, validated against the option table.
#pragma once
#include <string>
#include <vector>

#include "src/config/experiment_config.h"

namespace ditlab {

// Resolves `path` (and its chain of `base:` files) plus `overrides` into a validated config.
// An empty `path` starts from the defaults. Throws ConfigError naming the file and the key.
ExperimentConfig load_experiment_config(const std::string& path,
                                        const std::vector<std::string>& overrides = {});

// Applies "key.sub=value" overrides to an existing config (source "command line").
void apply_overrides(ExperimentConfig& config, const std::vector<std::string>& overrides);

// Applies a YAML document's values (without `base:` handling); `source` names it in errors.
void apply_yaml_text(ExperimentConfig& config, const std::string& yaml_text,
                     const std::string& source);

// The complete resolved config as YAML, every key present, grouped by section.
std::string to_yaml(const ExperimentConfig& config);

// The keys whose values differ between two configs.
std::vector<std::string> differing_keys(const ExperimentConfig& a, const ExperimentConfig& b);

// docs/config.md: one table of every key with its type, default, range and help.
std::string config_reference_markdown();

}  // namespace ditlab
