#include "trainers/sweep.h"

#include <sys/wait.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>

#include "models/registry.h"
#include "src/common/error.h"
#include "src/common/log.h"
#include "src/common/text.h"
#include "src/config/config_loader.h"
#include "src/io/atomic_file.h"

namespace ditlab {
namespace fs = std::filesystem;
namespace {

std::vector<std::string> string_list(const YAML::Node& node, const std::string& file, const std::string& key) {
  if (!node.IsSequence()) throw ConfigError(file + ": '" + key + "' must be a list");
  std::vector<std::string> out;
  for (const auto& item : node) {
    if (!item.IsScalar()) throw ConfigError(file + ": '" + key + "' must hold plain values");
    out.push_back(item.as<std::string>());
  }
  return out;
}

// "model.conditioning" -> "conditioning"; values keep letters, digits, '.', '-' and '_'.
std::string name_part(const std::string& key, const std::string& value) {
  std::string clean;
  for (char c : value) clean += (std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '-' || c == '_') ? c : '_';
  return key.substr(key.rfind('.') + 1) + "-" + clean;
}

std::string number(double v) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.6g", v);
  return buf;
}

YAML::Node parse_json(const std::string& text, const std::string& path) {
  try {
    return YAML::Load(text);
  } catch (const YAML::Exception& e) {
    throw IoError(path + ": not valid JSON: " + e.what());
  }
}

// The last complete line of a JSON-lines file, parsed; a null node when there is none. A run
// killed while writing leaves a cut last line, which is passed over (with a warning) for the one
// before: collecting a sweep while its jobs run, or after a time limit, must not fail.
YAML::Node last_json_line(const std::string& path) {
  std::ifstream in(path);
  std::string line, last, before_last;
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    before_last = std::move(last);
    last = line;
  }
  if (last.empty()) return YAML::Node();
  try {
    return parse_json(last, path);
  } catch (const IoError&) {
    if (before_last.empty()) throw;
    spdlog::warn("{}: the last line is cut short (a run killed while writing); using the line before", path);
    return parse_json(before_last, path);
  }
}

template <typename T>
T json_field(const YAML::Node& node, const char* key, const std::string& path) {
  try {
    return node[key].as<T>();
  } catch (const YAML::Exception&) {
    throw IoError(path + ": '" + key + "' is not a number");
  }
}

// CSV cells with commas or quotes are quoted (RFC 4180).
std::string csv_cell(const std::string& s) {
  if (s.find_first_of(",\"\n") == std::string::npos) return s;
  std::string out = "\"";
  for (char c : s) out += c == '"' ? std::string("\"\"") : std::string(1, c);
  return out + "\"";
}

// The exclude list: each entry a map from grid keys to one of their values.
std::vector<std::vector<std::pair<std::string, std::string>>> exclusions(
    const YAML::Node& node, const std::vector<std::pair<std::string, std::vector<std::string>>>& grid,
    const std::string& file) {
  if (!node.IsSequence()) throw ConfigError(file + ": 'exclude' must be a list of {grid key: value} maps");
  std::vector<std::vector<std::pair<std::string, std::string>>> out;
  for (size_t i = 0; i < node.size(); ++i) {
    const std::string where = file + ": exclude[" + std::to_string(i) + "]";
    if (!node[i].IsMap() || node[i].size() == 0) throw ConfigError(where + " must map grid keys to values");
    std::vector<std::pair<std::string, std::string>> entry;
    for (const auto& item : node[i]) {
      const std::string key = item.first.as<std::string>();
      if (!item.second.IsScalar()) throw ConfigError(where + ": '" + key + "' must be one plain value");
      const std::string value = item.second.as<std::string>();
      const auto axis = std::find_if(grid.begin(), grid.end(), [&](const auto& g) { return g.first == key; });
      if (axis == grid.end()) throw ConfigError(where + ": '" + key + "' is not a key of the grid");
      if (std::find(axis->second.begin(), axis->second.end(), value) == axis->second.end()) {
        throw ConfigError(where + ": '" + value + "' is not one of grid." + key + "'s values");
      }
      entry.emplace_back(key, value);
    }
    out.push_back(std::move(entry));
  }
  return out;
}

bool excluded(const SweepSpec& spec, const SweepRun& run) {
  for (const auto& entry : spec.exclude) {
    const bool all = std::all_of(entry.begin(), entry.end(), [&](const auto& kv) {
      return std::find(run.values.begin(), run.values.end(), kv) != run.values.end();
    });
    if (all) return true;
  }
  return false;
}

}  // namespace

SweepSpec read_sweep(const std::string& path) {
  if (!fs::exists(path)) throw ConfigError("sweep file " + path + " does not exist");
  YAML::Node root;
  try {
    root = YAML::LoadFile(path);
  } catch (const YAML::Exception& e) {
    throw ConfigError(path + ": not valid YAML: " + e.what());
  }
  if (!root.IsMap()) throw ConfigError(path + ": a sweep file is a mapping (base, dir, overrides, grid, eval)");
  const std::set<std::string> known = {"base", "dir", "overrides", "grid", "exclude", "eval"};
  for (const auto& item : root) {
    const std::string key = item.first.as<std::string>();
    if (known.count(key) == 0) {
      throw ConfigError(path + ": unknown key '" + key + "'; expected base, dir, overrides, grid, exclude or eval");
    }
  }
  SweepSpec spec;
  spec.file = path;
  if (!root["base"] || !root["dir"] || !root["grid"]) throw ConfigError(path + ": base, dir and grid are required");
  const fs::path base = root["base"].as<std::string>();
  spec.base = base.is_absolute() ? base.string() : (fs::path(path).parent_path() / base).lexically_normal().string();
  // as<std::string>() reads an empty `dir:` as "null" and throws a bare yaml error on a map.
  const YAML::Node dir = root["dir"];
  if (!dir.IsScalar() || dir.Scalar().empty()) {
    throw ConfigError(path + ": 'dir' must be a non-empty folder path (where the runs go)");
  }
  spec.dir = dir.Scalar();
  if (root["overrides"]) spec.overrides = string_list(root["overrides"], path, "overrides");
  if (!root["grid"].IsMap() || root["grid"].size() == 0) {
    throw ConfigError(path + ": 'grid' must map config keys to lists of values");
  }
  for (const auto& item : root["grid"]) {
    const std::string key = item.first.as<std::string>();
    auto values = string_list(item.second, path, "grid." + key);
    if (values.empty()) throw ConfigError(path + ": grid." + key + " has no values");
    spec.grid.emplace_back(key, values);
  }
  if (root["exclude"]) spec.exclude = exclusions(root["exclude"], spec.grid, path);
  if (root["eval"]) {
    spec.eval = true;
    spec.eval_args = string_list(root["eval"], path, "eval");
  }
  return spec;
}

std::vector<SweepRun> expand_sweep(const SweepSpec& spec) {
  std::vector<SweepRun> runs = {SweepRun{}};
  for (const auto& [key, values] : spec.grid) {  // the first key varies slowest
    std::vector<SweepRun> next;
    for (const auto& run : runs) {
      for (const auto& value : values) {
        SweepRun r = run;
        r.values.emplace_back(key, value);
        r.name += (r.name.empty() ? "" : "_") + name_part(key, value);
        next.push_back(r);
      }
    }
    runs = std::move(next);
  }
  runs.erase(std::remove_if(runs.begin(), runs.end(), [&](const SweepRun& r) { return excluded(spec, r); }),
             runs.end());
  if (runs.empty()) throw ConfigError(spec.file + ": 'exclude' leaves no runs");
  std::set<std::string> names;
  for (auto& run : runs) {
    if (!names.insert(run.name).second) {
      throw ConfigError(spec.file + ": two runs would be named '" + run.name + "'; make the grid's values distinct");
    }
    run.run_dir = spec.dir + "/" + run.name;
    run.overrides = spec.overrides;
    for (const auto& [key, value] : run.values) run.overrides.push_back(key + "=" + value);
    run.overrides.push_back("run.dir=" + run.run_dir);
    try {
      load_experiment_config(spec.base, run.overrides);
    } catch (const Error& e) {
      throw ConfigError(spec.file + ": run '" + run.name + "': " + e.what());
    }
  }
  return runs;
}

std::string train_command(const SweepSpec& spec, const SweepRun& run, const std::string& dit) {
  std::string command = dit + " train --config " + shell_quoted(spec.base) + " --resume auto";
  for (const auto& o : run.overrides) command += " " + shell_quoted(o);
  return command;
}

std::string eval_command(const SweepSpec& spec, const SweepRun& run, const std::string& dit) {
  std::string command = dit + " eval --run-dir " + shell_quoted(run.run_dir);
  for (const auto& a : spec.eval_args) command += " " + shell_quoted(a);
  return command;
}

int64_t evaluated_step(const std::string& run_dir) {
  const std::string path = run_dir + "/eval.json";
  if (!fs::exists(path)) return -1;
  const YAML::Node eval = parse_json(read_file(path), path);
  return eval["step"] ? json_field<int64_t>(eval, "step", path) : -1;
}

namespace {
std::string spec_eval_text(const SweepSpec& spec) {
  std::string text;
  for (const auto& a : spec.eval_args) text += (text.empty() ? "" : " ") + a;
  return text.empty() ? "(defaults)" : text;
}
}  // namespace

bool evaluation_is_current(const SweepSpec& spec, const SweepRun& run, int64_t step) {
  if (step < 0 || evaluated_step(run.run_dir) != step) return false;
  if (!spec.eval) return true;  // the sweep asks for none: whatever evaluated these weights
  // The sweep's own evaluation: eval.json's command line (as joined_command_line writes it)
  // ends with the arguments eval_command gives, so an evaluation with other settings (fewer
  // samples, another sampler) is redone rather than tabulated beside the others.
  std::string expected = "eval --run-dir " + run.run_dir;
  for (const auto& a : spec.eval_args) expected += " " + a;
  std::string escaped;
  for (char c : expected) escaped += (c == '"' || c == '\\') ? std::string("\\") + c : std::string(1, c);
  const std::string path = run.run_dir + "/eval.json";
  const YAML::Node eval = parse_json(read_file(path), path);
  std::string command;
  try {
    command = eval["command"] ? eval["command"].as<std::string>() : "";
  } catch (const YAML::Exception&) {
    throw IoError(path + ": 'command' is not a string");
  }
  return command.size() >= escaped.size() && command.compare(command.size() - escaped.size(), escaped.size(), escaped) == 0;
}

int64_t finished_step(const std::string& run_dir) {
  const std::string config_path = run_dir + "/config.yaml";
  if (!fs::exists(config_path) || !fs::exists(run_dir + "/ema.safetensors")) return -1;
  ExperimentConfig config;
  apply_yaml_text(config, read_file(config_path), config_path);
  const std::string metrics_path = run_dir + "/metrics.jsonl";
  const YAML::Node last = last_json_line(metrics_path);
  const int64_t step = last && last["step"] ? json_field<int64_t>(last, "step", metrics_path) : -1;
  return step == config.train.steps ? step : -1;
}

SweepTable collect_sweep(const SweepSpec& spec, const std::vector<SweepRun>& runs) {
  SweepTable table;
  table.columns = {"run"};
  for (const auto& [key, values] : spec.grid) table.columns.push_back(key);
  const std::vector<std::string> measured = {"status", "step", "loss", "params_m", "gmacs", "training_flops",
                                             "fid", "precision", "recall", "inception_score", "accuracy",
                                             "eval_samples"};
  table.columns.insert(table.columns.end(), measured.begin(), measured.end());
  for (const auto& run : runs) {
    std::map<std::string, std::string> cell;
    cell["run"] = run.name;
    for (const auto& [key, value] : run.values) cell[key] = value;
    const std::string config_path = run.run_dir + "/config.yaml";
    if (!fs::exists(config_path)) {
      cell["status"] = "missing";
    } else {
      ExperimentConfig config;
      apply_yaml_text(config, read_file(config_path), config_path);
      const ModelCost cost = model_cost(config.model);
      cell["params_m"] = number(cost.parameters / 1e6);
      cell["gmacs"] = number(cost.forward_macs / 1e9);
      const std::string metrics_path = run.run_dir + "/metrics.jsonl";
      const YAML::Node last = last_json_line(metrics_path);
      const int64_t step = last && last["step"] ? json_field<int64_t>(last, "step", metrics_path) : 0;
      cell["step"] = std::to_string(step);
      if (last && last["loss"]) cell["loss"] = number(json_field<double>(last, "loss", metrics_path));
      cell["training_flops"] = number(6.0 * static_cast<double>(cost.training_forward_macs) * static_cast<double>(step) *
                                      static_cast<double>(config.train.global_batch_size));
      cell["status"] = fs::exists(run.run_dir + "/ema.safetensors") && step == config.train.steps ? "done" : "incomplete";
      // An evaluation of other weights (the run was extended since), or with other settings
      // than the sweep's eval:, is not this row's.
      if (evaluation_is_current(spec, run, step)) {
        const std::string eval_path = run.run_dir + "/eval.json";
        const YAML::Node eval = parse_json(read_file(eval_path), eval_path);
        for (const char* key : {"fid", "precision", "recall", "inception_score", "accuracy"}) {
          if (eval[key] && !eval[key].IsNull()) cell[key] = number(json_field<double>(eval, key, eval_path));
        }
        if (eval["num_samples"]) cell["eval_samples"] = std::to_string(json_field<int64_t>(eval, "num_samples", eval_path));
      } else if (evaluated_step(run.run_dir) == step) {
        spdlog::warn("{}: eval.json was made with other settings than the sweep's eval: {}; left out "
                     "(run dit sweep again to evaluate it as the sweep asks)", run.run_dir, spec_eval_text(spec));
      }
    }
    std::vector<std::string> row;
    for (const auto& column : table.columns) row.push_back(cell.count(column) ? cell[column] : "");
    table.rows.push_back(row);
  }
  return table;
}

void write_sweep_table(const SweepSpec& spec, const SweepTable& table) {
  std::string csv, md;
  for (size_t i = 0; i < table.columns.size(); ++i) {
    csv += (i ? "," : "") + csv_cell(table.columns[i]);
    md += "| " + table.columns[i] + " ";
  }
  csv += "\n";
  md += "|\n";
  for (size_t i = 0; i < table.columns.size(); ++i) md += "|---";
  md += "|\n";
  for (const auto& row : table.rows) {
    for (size_t i = 0; i < row.size(); ++i) {
      csv += (i ? "," : "") + csv_cell(row[i]);
      md += "| " + row[i] + " ";
    }
    csv += "\n";
    md += "|\n";
  }
  write_file_atomically(spec.dir + "/results.csv", csv);
  write_file_atomically(spec.dir + "/results.md", md);
}

std::string visible_device(int64_t index, const char* inherited) {
  if (index < 0) throw UsageError("--devices takes GPU indices (>= 0), got " + std::to_string(index));
  if (inherited == nullptr) return std::to_string(index);
  std::vector<std::string> entries;
  std::string entry;
  for (const char* c = inherited;; ++c) {
    if (*c == ',' || *c == '\0') {
      const size_t first = entry.find_first_not_of(" \t"), last = entry.find_last_not_of(" \t");
      if (first != std::string::npos) entries.push_back(entry.substr(first, last - first + 1));
      entry.clear();
      if (*c == '\0') break;
    } else {
      entry += *c;
    }
  }
  if (static_cast<size_t>(index) >= entries.size()) {
    throw UsageError("--devices " + std::to_string(index) + " is beyond the inherited CUDA_VISIBLE_DEVICES=" +
                     inherited + " (" + std::to_string(entries.size()) + " GPUs visible" +
                     (entries.empty() ? "" : ": --devices takes 0.." + std::to_string(entries.size() - 1)) +
                     "); --devices counts the GPUs this process sees, so pass indices into that list "
                     "or unset CUDA_VISIBLE_DEVICES");
  }
  return entries[static_cast<size_t>(index)];
}

int stop_signal_of(int wait_status) {
  if (wait_status == -1) return 0;  // WIFSIGNALED(-1) would read as true
  if (WIFSIGNALED(wait_status)) return WTERMSIG(wait_status);
  const int code = WIFEXITED(wait_status) ? WEXITSTATUS(wait_status) : 0;
  return code > 128 && code < 128 + NSIG ? code - 128 : 0;
}

}  // namespace ditlab
