// `dit sweep`: runs (or prints) a grid of training runs and collects their results
// (trainers/sweep.h).
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <mutex>
#include <thread>

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

// What one run's pipeline (train, then eval) ended with.
enum class Outcome { kDone, kFailed, kInterrupted };

// Trains and evaluates `run`, its output appended to its log. `env` prefixes both commands
// (CUDA_VISIBLE_DEVICES=k with --devices).
Outcome run_pipeline(const SweepSpec& spec, const SweepRun& run, const std::string& dit,
                     const std::string& env, std::atomic<int>& failures) {
  const std::string log = spec.dir + "/logs/" + run.name + ".log";
  int failed = 0;
  // Each run is its own process: its own log files, its own failure.
  if (!run_step(env + train_command(spec, run, shell_quoted(dit)), log, run.name, "training", failed)) {
    failures += failed;
    return Outcome::kFailed;
  }
  // dit train exits 0 after a signal too (it checkpointed): an unfinished run means the sweep
  // was interrupted, so it stops here and a second call resumes.
  const int64_t step = finished_step(run.run_dir);
  if (step < 0) {
    spdlog::error("run {} stopped before its last step; stopping the sweep (run it again to resume)", run.name);
    return Outcome::kInterrupted;
  }
  if (spec.eval && evaluated_step(run.run_dir) != step) {
    run_step(env + eval_command(spec, run, shell_quoted(dit)), log, run.name, "evaluation", failed);
  }
  failures += failed;
  return failed == 0 ? Outcome::kDone : Outcome::kFailed;
}

}  // namespace

int run_sweep(int argc, char** argv) {
  Args args("sweep",
            {{"config", "the sweep YAML (base, dir, overrides, grid, eval)"},
             {"print", "print each run's commands (for a cluster) instead of running them", false},
             {"collect", "only collect the results of the runs into dir/results.{csv,md}", false},
             {"jobs", "runs at once (default: one per --devices entry, else 1)"},
             {"devices", "GPUs to spread the runs over, e.g. 0,1,2,3: each run sees one as "
                         "CUDA_VISIBLE_DEVICES"}},
            argc, argv, 2);
  if (args.print_help_if_asked()) return 0;
  args.reject_overrides();
  const SweepSpec spec = read_sweep(args.require("config"));
  const std::vector<SweepRun> runs = expand_sweep(spec);
  const std::string dit = self_path(argv[0]);
  const std::vector<int64_t> devices = args.get_int_list("devices", {});
  for (int64_t d : devices) {
    if (d < 0) throw UsageError("sweep: --devices takes GPU indices (>= 0), got " + std::to_string(d));
  }
  const int64_t jobs = args.get_int("jobs", devices.empty() ? 1 : static_cast<int64_t>(devices.size()));
  if (jobs < 1) throw UsageError("sweep: --jobs must be >= 1, got " + std::to_string(jobs));
  if (args.has("print")) {
    for (const auto& run : runs) {
      std::printf("%s\n", train_command(spec, run, dit).c_str());
      if (spec.eval) std::printf("%s\n", eval_command(spec, run, dit).c_str());
    }
    return 0;
  }
  std::atomic<int> failures{0};
  bool interrupted = false;
  if (!args.has("collect")) {
    std::filesystem::create_directories(spec.dir + "/logs");
    // Workers take the next run in grid order; worker w always uses device w mod |devices|. After
    // an interruption (or a killed child) no new run starts; the running ones finish.
    std::atomic<size_t> next{0};
    std::atomic<bool> stop{false};
    std::mutex error_mutex;
    std::exception_ptr error;
    auto worker = [&](int64_t w) {
      const std::string device =
          devices.empty() ? "" : std::to_string(devices[static_cast<size_t>(w) % devices.size()]);
      const std::string env = device.empty() ? "" : "CUDA_VISIBLE_DEVICES=" + device + " ";
      for (size_t i = next++; i < runs.size() && !stop; i = next++) {
        const auto& run = runs[i];
        spdlog::info("run {}/{}: {}{} (log: {}/logs/{}.log)", i + 1, runs.size(), run.name,
                     device.empty() ? "" : " on GPU " + device, spec.dir, run.name);
        try {
          if (run_pipeline(spec, run, dit, env, failures) == Outcome::kInterrupted) stop = true;
        } catch (...) {
          std::lock_guard<std::mutex> lock(error_mutex);
          if (!error) error = std::current_exception();
          stop = true;
        }
      }
    };
    const int64_t workers = std::min<int64_t>(jobs, static_cast<int64_t>(runs.size()));
    if (workers == 1) {
      worker(0);
    } else {
      std::vector<std::thread> threads;
      try {
        for (int64_t w = 0; w < workers; ++w) threads.emplace_back(worker, w);
      } catch (...) {  // no thread for the rest: the started ones finish what they took
        stop = true;
        for (auto& t : threads) t.join();
        throw;
      }
      for (auto& t : threads) t.join();
    }
    if (error) std::rethrow_exception(error);
    interrupted = stop;
  }
  if (interrupted) return 1;
  const SweepTable table = collect_sweep(spec, runs);
  write_sweep_table(spec, table);
  spdlog::info("{} runs, {} failed; results in {}/results.csv and results.md", runs.size(), failures.load(), spec.dir);
  return failures == 0 ? 0 : 1;
}

}  // namespace ditlab::cli
