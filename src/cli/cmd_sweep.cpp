// `dit sweep`: runs (or prints) a grid of training runs and collects their results
// (trainers/sweep.h).
#include <sys/wait.h>
#include <unistd.h>

#include <climits>
#include <cstdio>
#include <cstdlib>
#include <filesystem>

#include "src/cli/args.h"
#include "src/cli/commands.h"
#include "src/common/error.h"
#include "src/common/log.h"
#include "src/common/text.h"
#include "trainers/sweep.h"

namespace ditlab::cli {
namespace {
// This very binary, so that the runs use the build that expanded the sweep.
std::string self_path(const char* argv0) {
  char buf[PATH_MAX];
  const ssize_t n = ::readlink("/proc/self/exe", buf, sizeof(buf) - 1);
  return n > 0 ? std::string(buf, static_cast<size_t>(n)) : std::string(argv0);
}
// Runs one command with its output appended to `log`; false (and a failure counted) unless it
// exits 0. A command killed by a signal (Ctrl-C reaches the child) stops the whole sweep.
bool run_step(const std::string& command, const std::string& log, const std::string& name, const char* what,
              int& failures) {
  const int status = std::system((command + " >> " + shell_quoted(log) + " 2>&1").c_str());
  if (status != -1 && WIFSIGNALED(status)) {
    throw Error("the " + std::string(what) + " of run " + name + " was killed by signal " +
                std::to_string(WTERMSIG(status)) + "; stopping the sweep");
  }
  const int code = status == -1 ? -1 : WEXITSTATUS(status);
  if (code == 0) return true;
  ++failures;
  spdlog::error("the {} of run {} failed (exit status {}); see {}", what, name, code, log);
  return false;
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
      if (!run_step(train_command(spec, run, shell_quoted(dit)), log, run.name, "training", failures)) continue;
      // dit train exits 0 after a signal too (it checkpointed): an unfinished run means the
      // sweep was interrupted, so it stops here and a second call resumes.
      const int64_t step = finished_step(run.run_dir);
      if (step < 0) {
        spdlog::error("run {} stopped before its last step; stopping the sweep (run it again to resume)", run.name);
        return 1;
      }
      if (spec.eval && evaluated_step(run.run_dir) != step) {
        run_step(eval_command(spec, run, shell_quoted(dit)), log, run.name, "evaluation", failures);
      }
    }
  }
  const SweepTable table = collect_sweep(spec, runs);
  write_sweep_table(spec, table);
  spdlog::info("{} runs, {} failed; results in {}/results.csv and results.md", runs.size(), failures, spec.dir);
  return failures == 0 ? 0 : 1;
}

}  // namespace ditlab::cli
