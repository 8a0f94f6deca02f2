// `dit sweep`: runs (or prints) a grid of training runs and collects their results
// (trainers/sweep.h).
#include <unistd.h>

#include <climits>
#include <cstdio>
#include <cstdlib>
#include <filesystem>

#include "src/cli/args.h"
#include "src/cli/commands.h"
#include "src/common/error.h"
#include "src/common/log.h"
#include "trainers/sweep.h"

namespace ditlab::cli {
namespace {
// This very binary, so that the runs use the build that expanded the sweep.
std::string self_path(const char* argv0) {
  char buf[PATH_MAX];
  const ssize_t n = ::readlink("/proc/self/exe", buf, sizeof(buf) - 1);
  return n > 0 ? std::string(buf, static_cast<size_t>(n)) : std::string(argv0);
}
}  // namespace

int run_sweep(int argc, char** argv) {
  Args args("sweep",
            {{"config", "the sweep YAML (base, dir, overrides, grid, eval)"},
             {"print", "print each run's commands (for a cluster) instead of running them", false},
             {"collect", "only collect the results of the runs into dir/results.{csv,md}", false}},
            argc, argv, 2);
  if (args.print_help_if_asked()) return 0;
  args.reject_overrides();
  const SweepSpec spec = read_sweep(args.require("config"));
  const std::vector<SweepRun> runs = expand_sweep(spec);
  const std::string dit = self_path(argv[0]);
  if (args.has("print")) {
    for (const auto& run : runs) {
      std::printf("%s\n", train_command(spec, run, dit).c_str());
      if (spec.eval) std::printf("%s\n", eval_command(spec, run, dit).c_str());
    }
    return 0;
  }
  int failures = 0;
  if (!args.has("collect")) {
    std::filesystem::create_directories(spec.dir + "/logs");
    for (size_t i = 0; i < runs.size(); ++i) {
      const auto& run = runs[i];
      const std::string log = spec.dir + "/logs/" + run.name + ".log";
      spdlog::info("run {}/{}: {} (log: {})", i + 1, runs.size(), run.name, log);
      // Each run is its own process: its own log files, its own failure.
      int status = std::system((train_command(spec, run, dit) + " >> '" + log + "' 2>&1").c_str());
      if (status == 0 && spec.eval) status = std::system((eval_command(spec, run, dit) + " >> '" + log + "' 2>&1").c_str());
      if (status != 0) {
        ++failures;
        spdlog::error("run {} failed (exit status {}); see {}", run.name, status, log);
      }
    }
  }
  const SweepTable table = collect_sweep(spec, runs);
  write_sweep_table(spec, table);
  spdlog::info("{} runs, {} failed; results in {}/results.csv and results.md", runs.size(), failures, spec.dir);
  return failures == 0 ? 0 : 1;
}

}  // namespace ditlab::cli
