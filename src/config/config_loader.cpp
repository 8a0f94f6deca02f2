#include "src/config/config_loader.h"

#include <yaml-cpp/yaml.h>

#include <filesystem>
#include <map>
#include <set>
#include <sstream>

#include "src/common/error.h"
#include "src/config/option_table.h"

namespace ditlab {
namespace fs = std::filesystem;

namespace {

// A leaf value together with the file (or "command line") it came from.
struct SourcedValue {
  YAML::Node value;
  std::string source;
};
using FlatConfig = std::map<std::string, SourcedValue>;

// Configs nest 2 or 3 levels; far deeper is a YAML alias inside its own anchor
// (`model: &m {x: *m}` is a cyclic node graph), which would recurse until the stack overflows.
constexpr int kMaxNesting = 64;

// Flattens nested maps into dotted keys; an entry that is not a map is a leaf.
void flatten(const YAML::Node& node, const std::string& prefix, const std::string& source,
             FlatConfig& out, int depth = 0) {
  if (depth >= kMaxNesting) {
    throw ConfigError(source + ": key '" + prefix + "' nests more than " + std::to_string(kMaxNesting) +
                      " levels deep (an alias *name inside its own &name anchor?)");
  }
  for (const auto& item : node) {
    std::string name = item.first.as<std::string>();
    std::string key = prefix.empty() ? name : prefix + "." + name;
    if (item.second.IsMap()) {
      flatten(item.second, key, source, out, depth + 1);
    } else {
      out[key] = {item.second, source};
    }
  }
}

YAML::Node parse_file(const fs::path& path) {
  if (!fs::exists(path)) throw ConfigError("config file not found: " + path.string());
  // A directory opens, then fails to read with a bare stream error; is_regular_file follows links.
  if (!fs::is_regular_file(path)) {
    throw ConfigError("config file " + path.string() + " is not a regular file (a directory?); "
                      "expected a YAML file");
  }
  try {
    YAML::Node doc = YAML::LoadFile(path.string());
    if (doc.IsNull()) return YAML::Node(YAML::NodeType::Map);
    if (!doc.IsMap()) {
      throw ConfigError(path.string() + ": expected a YAML map of sections (model:, train:, ...)");
    }
    return doc;
  } catch (const YAML::Exception& e) {
    throw ConfigError(path.string() + ": invalid YAML: " + e.what());
  }
}

// Loads `path` after its `base:` chain; later files override earlier ones key by key.
void load_chain(const fs::path& path, std::vector<std::string>& stack, FlatConfig& out) {
  std::string canonical = fs::weakly_canonical(path).string();
  for (const auto& seen : stack) {
    if (seen == canonical) throw ConfigError(path.string() + ": `base:` files form a cycle");
  }
  stack.push_back(canonical);
  YAML::Node doc = parse_file(path);
  if (doc["base"]) {
    const YAML::Node& base = doc["base"];
    // `base: ""` would name this file's own folder.
    if (!base.IsScalar() || base.Scalar().empty()) {
      throw ConfigError(path.string() + ": `base:` must be a file path (relative to this file)");
    }
    load_chain(path.parent_path() / base.Scalar(), stack, out);
    doc.remove("base");
  }
  flatten(doc, "", path.string(), out);
  stack.pop_back();
}

void apply_flat(ExperimentConfig& config, const FlatConfig& flat) {
  for (const auto& [key, sourced] : flat) {
    const OptionSpec* spec = find_option(key);
    if (spec == nullptr) {
      throw ConfigError(sourced.source + ": unknown key '" + key + "' (did you mean '" +
                        closest_option(key) + "'? `dit config --docs` lists every key)");
    }
    spec->set(config, sourced.value, sourced.source);
  }
}

FlatConfig parse_overrides(const std::vector<std::string>& overrides) {
  FlatConfig flat;
  for (const auto& text : overrides) {
    auto eq = text.find('=');
    if (eq == std::string::npos || eq == 0) {
      throw ConfigError("command line: override '" + text + "' is not of the form key.sub=value");
    }
    std::string key = text.substr(0, eq);
    std::string value = text.substr(eq + 1);
    YAML::Node node;
    try {
      node = YAML::Load(value);
    } catch (const YAML::Exception&) {
      node = YAML::Node(value);  // not YAML: take it as a plain string
    }
    // YAML would drop " #..." as a comment (data.path=/data/run #2 -> /data/run): on a command
    // line it is part of the value.
    const bool comment = value.find(" #") != std::string::npos || value.find("\t#") != std::string::npos;
    // Only a plain scalar (tag "?"): a quoted one ("/data/run #2") already holds the whole text.
    // `key=` is the empty string; `key=null` (or ~) is YAML's null, as in a file (it clears an
    // optional path such as train.init_from, and is refused where a value is required).
    if ((node.IsNull() && value.empty()) || (comment && node.IsScalar() && node.Tag() == "?")) {
      node = YAML::Node(value);
    }
    flat[key] = {node, "command line"};
  }
  return flat;
}

}  // namespace

ExperimentConfig load_experiment_config(const std::string& path,
                                        const std::vector<std::string>& overrides) {
  FlatConfig flat;
  if (!path.empty()) {
    std::vector<std::string> stack;
    load_chain(path, stack, flat);
  }
  ExperimentConfig config;
  apply_flat(config, flat);
  apply_flat(config, parse_overrides(overrides));
  return config;
}

void apply_overrides(ExperimentConfig& config, const std::vector<std::string>& overrides) {
  apply_flat(config, parse_overrides(overrides));
}

void apply_yaml_text(ExperimentConfig& config, const std::string& yaml_text,
                     const std::string& source) {
  YAML::Node doc;
  try {
    doc = YAML::Load(yaml_text);
  } catch (const YAML::Exception& e) {
    throw ConfigError(source + ": invalid YAML: " + e.what());
  }
  if (doc.IsNull()) return;
  if (!doc.IsMap()) throw ConfigError(source + ": expected a YAML map of sections");
  FlatConfig flat;
  flatten(doc, "", source, flat);
  apply_flat(config, flat);
}

std::string to_yaml(const ExperimentConfig& config) {
  std::ostringstream out;
  std::string section;
  for (const auto& spec : option_table()) {
    auto dot = spec.key.find('.');
    std::string this_section = spec.key.substr(0, dot);
    if (this_section != section) {
      section = this_section;
      out << section << ":\n";
    }
    std::string value = spec.get(config);
    if (spec.type == "string") {
      YAML::Emitter quoted;  // quotes strings that YAML would otherwise read as numbers or bools
      quoted << YAML::DoubleQuoted << value;
      value = quoted.c_str();
    }
    out << "  " << spec.key.substr(dot + 1) << ": " << value << "\n";
  }
  return out.str();
}

std::vector<std::string> differing_keys(const ExperimentConfig& a, const ExperimentConfig& b) {
  std::vector<std::string> keys;
  for (const auto& spec : option_table()) {
    if (spec.get(a) != spec.get(b)) keys.push_back(spec.key);
  }
  return keys;
}

std::string config_reference_markdown() {
  ExperimentConfig defaults;
  std::ostringstream out;
  out << "# Configuration reference\n\n"
      << "Generated by `build/dit config --docs` from `src/config/option_table.cpp` and the\n"
      << "defaults in `src/config/experiment_config.h`; a test keeps this page in sync.\n\n"
      << "| key | type | default | valid values | meaning |\n"
      << "|---|---|---|---|---|\n";
  for (const auto& spec : option_table()) {
    std::string value = spec.get(defaults);
    out << "| `" << spec.key << "` | " << spec.type << " | `" << value << "` | " << spec.range
        << " | " << spec.help << " |\n";
  }
  return out.str();
}

}  // namespace ditlab
