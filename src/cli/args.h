// Command-line parsing for the subcommands: `--flag value` / `--flag=value` from a declared set,
// and bare `key.sub=value` config overrides. Anything else is a UsageError naming it.
#pragma once
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace ditlab::cli {

struct Flag {
  std::string name;  // without the dashes
  std::string help;
  bool takes_value = true;
};

class Args {
 public:
  Args(const std::string& command, std::vector<Flag> flags, int argc, char** argv, int first);

  std::optional<std::string> get(const std::string& name) const;
  std::string get_or(const std::string& name, const std::string& fallback) const;
  std::string require(const std::string& name) const;
  bool has(const std::string& name) const { return values_.count(name) > 0; }
  int64_t get_int(const std::string& name, int64_t fallback) const;
  double get_double(const std::string& name, double fallback) const;
  bool get_bool(const std::string& name, bool fallback) const;
  // Comma-separated lists ("64,128,256"); `fallback` when the flag is absent.
  std::vector<int64_t> get_int_list(const std::string& name, std::vector<int64_t> fallback) const;
  std::vector<double> get_double_list(const std::string& name, std::vector<double> fallback) const;
  const std::vector<std::string>& overrides() const { return overrides_; }
  std::string usage() const;
  // Prints the usage to stdout if --help was given (every command has it); returns whether.
  bool print_help_if_asked() const;
  // For commands that are not configured by an experiment: a key=value argument is a UsageError.
  void reject_overrides() const;

 private:
  std::string command_;
  std::vector<Flag> flags_;
  std::map<std::string, std::string> values_;
  std::vector<std::string> overrides_;
};

// The whole command line as typed, for run_info.yaml.
std::string joined_command_line(int argc, char** argv);

}  // namespace ditlab::cli
