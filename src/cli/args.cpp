#include "src/cli/args.h"

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "src/common/error.h"

namespace ditlab::cli {

Args::Args(const std::string& command, std::vector<Flag> flags, int argc, char** argv, int first)
    : command_(command), flags_(std::move(flags)) {
  flags_.push_back({"help", "show this help", false});
  for (int i = first; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg.rfind("--", 0) == 0) {
      std::string name = arg.substr(2), value;
      bool inline_value = false;
      if (auto eq = name.find('='); eq != std::string::npos) {
        value = name.substr(eq + 1);
        name = name.substr(0, eq);
        inline_value = true;
      }
      auto flag = std::find_if(flags_.begin(), flags_.end(),
                               [&](const Flag& f) { return f.name == name; });
      if (flag == flags_.end()) {
        throw UsageError("dit " + command_ + ": unknown option '--" + name + "'\n" + usage());
      }
      if (!flag->takes_value) {
        // A switch is on by being present: `--ema=false` must not silently mean on.
        if (inline_value) {
          throw UsageError("dit " + command_ + ": --" + name + " takes no value (got '" + arg +
                           "'); leave the option out to turn it off");
        }
        value = "true";
      } else if (!inline_value) {
        if (i + 1 >= argc) throw UsageError("dit " + command_ + ": option '--" + name + "' needs a value");
        value = argv[++i];
      }
      values_[name] = value;
    } else if (arg.find('=') != std::string::npos) {
      overrides_.push_back(arg);
    } else {
      throw UsageError("dit " + command_ + ": unexpected argument '" + arg +
                       "' (options start with --, config overrides look like key.sub=value)\n" +
                       usage());
    }
  }
}

std::optional<std::string> Args::get(const std::string& name) const {
  auto it = values_.find(name);
  if (it == values_.end()) return std::nullopt;
  return it->second;
}

std::string Args::get_or(const std::string& name, const std::string& fallback) const {
  return get(name).value_or(fallback);
}

std::string Args::require(const std::string& name) const {
  auto v = get(name);
  if (!v) throw UsageError("dit " + command_ + ": option '--" + name + "' is required\n" + usage());
  // `--config=` would otherwise pass "" on, which callers read as "not given".
  if (v->empty()) throw UsageError("dit " + command_ + ": option '--" + name + "' needs a non-empty value");
  return *v;
}

int64_t Args::get_int(const std::string& name, int64_t fallback) const {
  auto v = get(name);
  if (!v) return fallback;
  try {
    size_t used = 0;
    int64_t parsed = std::stoll(*v, &used);
    if (used == v->size()) return parsed;
  } catch (const std::exception&) {
  }
  throw UsageError("dit " + command_ + ": option '--" + name + "' expects an integer, got '" + *v + "'");
}

double Args::get_double(const std::string& name, double fallback) const {
  auto v = get(name);
  if (!v) return fallback;
  try {
    size_t used = 0;
    double parsed = std::stod(*v, &used);
    if (used == v->size() && std::isfinite(parsed)) return parsed;  // stod reads "nan" and "inf"
  } catch (const std::exception&) {
  }
  throw UsageError("dit " + command_ + ": option '--" + name + "' expects a finite number, got '" + *v + "'");
}

namespace {
std::vector<std::string> split_commas(const std::string& text) {
  std::vector<std::string> parts;
  size_t start = 0;
  while (true) {
    const size_t comma = text.find(',', start);
    parts.push_back(text.substr(start, comma - start));
    if (comma == std::string::npos) return parts;
    start = comma + 1;
  }
}
}  // namespace

std::vector<int64_t> Args::get_int_list(const std::string& name, std::vector<int64_t> fallback) const {
  auto v = get(name);
  if (!v) return fallback;
  std::vector<int64_t> out;
  for (const auto& part : split_commas(*v)) {
    try {
      size_t used = 0;
      out.push_back(std::stoll(part, &used));
      if (used == part.size()) continue;
    } catch (const std::exception&) {
    }
    throw UsageError("dit " + command_ + ": option '--" + name +
                     "' expects comma-separated integers, got '" + *v + "'");
  }
  return out;
}

std::vector<double> Args::get_double_list(const std::string& name, std::vector<double> fallback) const {
  auto v = get(name);
  if (!v) return fallback;
  std::vector<double> out;
  for (const auto& part : split_commas(*v)) {
    try {
      size_t used = 0;
      out.push_back(std::stod(part, &used));
      if (used == part.size() && std::isfinite(out.back())) continue;
    } catch (const std::exception&) {
    }
    throw UsageError("dit " + command_ + ": option '--" + name +
                     "' expects comma-separated finite numbers, got '" + *v + "'");
  }
  return out;
}

bool Args::get_bool(const std::string& name, bool fallback) const {
  auto v = get(name);
  if (!v) return fallback;
  if (*v == "true" || *v == "1") return true;
  if (*v == "false" || *v == "0") return false;
  throw UsageError("dit " + command_ + ": option '--" + name + "' expects true or false, got '" + *v + "'");
}

std::string Args::usage() const {
  std::string text = "usage: dit " + command_ + " [options] [key.sub=value ...]\noptions:\n";
  for (const auto& f : flags_) {
    text += "  --" + f.name + (f.takes_value ? " VALUE" : "") + "\n      " + f.help + "\n";
  }
  return text;
}

bool Args::print_help_if_asked() const {
  if (!has("help")) return false;
  std::printf("%s", usage().c_str());
  return true;
}

void Args::reject_overrides() const {
  if (overrides_.empty()) return;
  throw UsageError("dit " + command_ + " takes no config overrides (got '" + overrides_.front() +
                   "')\n" + usage());
}

std::string joined_command_line(int argc, char** argv) {
  std::string line;
  for (int i = 0; i < argc; ++i) {
    if (i) line += " ";
    std::string arg = argv[i];
    for (char c : arg) line += (c == '"' || c == '\\') ? std::string("\\") + c : std::string(1, c);
  }
  return line;
}

}  // namespace ditlab::cli
