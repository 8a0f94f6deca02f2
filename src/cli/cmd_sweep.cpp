// `dit sweep`: runs (or prints) a grid of training runs and collects their results
// (trainers/sweep.h).
#include <pthread.h>
#include <signal.h>
#include <sys/wait.h>
#include <torch/cuda.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <filesystem>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "src/cli/args.h"
#include "src/cli/commands.h"
#include "src/common/error.h"
#include "src/common/log.h"
#include "src/common/text.h"
#include "src/config/config_loader.h"
#include "trainers/sweep.h"

namespace ditlab::cli {
namespace {
// This very binary, so that the runs use the build that expanded the sweep.
std::string self_path(const char* argv0) {
  char buf[PATH_MAX];
  const ssize_t n = ::readlink("/proc/self/exe", buf, sizeof(buf) - 1);
  return n > 0 ? std::string(buf, static_cast<size_t>(n)) : std::string(argv0);
}

// Stopping a sweep. SIGINT and SIGTERM mark the sweep as stopping (no run starts after that)
// and reach every running child as SIGTERM, on which dit train checkpoints and exits 0; the
// sweep waits for them and exits 1. The children are started with fork/exec, so that their pids
// are known, and stay in the sweep's process group, so that a terminal's Ctrl-C (and a second
// one, on which dit train exits at once) reaches them as it reaches any shell pipeline. A signal
// from the terminal (si_code SI_KERNEL) is therefore not passed on: a SIGTERM handled before the
// terminal's own SIGINT would make that SIGINT dit train's "second interrupt" (no checkpoint).
// Anything else (kill PID, a scheduler, timeout) reached the sweep alone and is passed on.
// The handler does only async-signal-safe work: lock-free atomics, kill() and write().
std::atomic<bool> g_stopping{false};
std::atomic<int> g_stop_signal{0};
// One slot per worker: the pid of its running child, or 0. Set before the handlers are
// installed and cleared after they are removed.
std::atomic<std::atomic<pid_t>*> g_children{nullptr};
std::atomic<size_t> g_num_children{0};

void on_stop_signal(int sig, siginfo_t* info, void*) {
  const int saved_errno = errno;
  if (!g_stopping.exchange(true)) {
    g_stop_signal.store(sig);
    const char msg[] = "\ndit sweep: stopping: no new run starts; waiting for the running ones to checkpoint\n";
    const ssize_t ignored = ::write(STDERR_FILENO, msg, sizeof(msg) - 1);
    (void)ignored;
  }
  if (info == nullptr || info->si_code != SI_KERNEL) {
    std::atomic<pid_t>* children = g_children.load();
    const size_t n = children == nullptr ? 0 : g_num_children.load();
    for (size_t i = 0; i < n; ++i) {
      const pid_t pid = children[i].load();
      if (pid > 0) ::kill(pid, SIGTERM);
    }
  }
  errno = saved_errno;
}

// Installs the handler above while the sweep runs, with a child slot per worker.
class SweepStopSignals {
 public:
  explicit SweepStopSignals(size_t workers) : slots_(new std::atomic<pid_t>[workers]) {
    for (size_t i = 0; i < workers; ++i) slots_[i].store(0);
    g_stopping.store(false);
    g_stop_signal.store(0);
    g_num_children.store(workers);
    g_children.store(slots_.get());
    struct sigaction action = {};
    action.sa_sigaction = on_stop_signal;
    action.sa_flags = SA_SIGINFO | SA_RESTART;  // restart: spdlog's writes need no EINTR handling
    sigemptyset(&action.sa_mask);
    sigaction(SIGINT, &action, &previous_[0]);
    sigaction(SIGTERM, &action, &previous_[1]);
  }
  ~SweepStopSignals() {
    sigaction(SIGINT, &previous_[0], nullptr);
    sigaction(SIGTERM, &previous_[1], nullptr);
    g_children.store(nullptr);
    g_num_children.store(0);
  }
  SweepStopSignals(const SweepStopSignals&) = delete;
  SweepStopSignals& operator=(const SweepStopSignals&) = delete;

  std::atomic<pid_t>& slot(size_t worker) { return slots_[worker]; }
  static bool stopping() { return g_stopping.load(); }
  static int stop_signal() { return g_stop_signal.load(); }

 private:
  std::unique_ptr<std::atomic<pid_t>[]> slots_;
  struct sigaction previous_[2];
};

// How one child process ended.
enum class Outcome { kDone, kFailed, kInterrupted };

// Runs `command` through /bin/sh, its output appended to `log` and, when `device` is set, with
// CUDA_VISIBLE_DEVICES=device; its pid sits in `slot` while it runs. Nothing starts once the sweep
// is stopping. A child stopped by a signal (killed, or dit train's _exit(130) after a second
// Ctrl-C) stops the sweep; any other non-zero exit is a failed run, counted in `failures`.
Outcome run_step(const std::string& command, const std::string& log, const std::string& device,
                 std::atomic<pid_t>& slot, const std::string& name, const char* what, int& failures) {
  if (SweepStopSignals::stopping()) return Outcome::kInterrupted;
  // `exec`, so that the pid is dit's own and not a shell's that would not pass a SIGTERM on.
  const std::string script = (device.empty() ? "" : "export CUDA_VISIBLE_DEVICES=" + shell_quoted(device) + "; ") +
                             "exec " + command + " >> " + shell_quoted(log) + " 2>&1";
  // Built before fork(): a child of a threaded process may only make async-signal-safe calls
  // until it execs.
  char sh[] = "/bin/sh", dash_c[] = "-c";
  std::vector<char> script_chars(script.begin(), script.end());
  script_chars.push_back('\0');
  char* const argv[] = {sh, dash_c, script_chars.data(), nullptr};
  // Between fork and exec the child would run the sweep's handler, which would swallow a stop
  // meant for it: the signals stay blocked across fork, the child takes the default actions
  // back before unblocking (a pending stop then ends it, which counts as interrupted), and the
  // parent unblocks once the pid is in its slot, where the handler finds it.
  sigset_t stop_signals, previous_mask;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  ::pthread_sigmask(SIG_BLOCK, &stop_signals, &previous_mask);
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::signal(SIGINT, SIG_DFL);
    ::signal(SIGTERM, SIG_DFL);
    ::pthread_sigmask(SIG_SETMASK, &previous_mask, nullptr);
    ::execv(sh, argv);
    ::_exit(127);
  }
  const int fork_errno = errno;
  if (pid > 0) slot.store(pid);
  ::pthread_sigmask(SIG_SETMASK, &previous_mask, nullptr);
  int status = -1;
  if (pid > 0) {
    // A signal that came after the check above found no pid to pass the stop on to.
    if (SweepStopSignals::stopping()) ::kill(pid, SIGTERM);
    while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    slot.store(0);
  }
  if (const int sig = stop_signal_of(status)) {
    spdlog::error("the {} of run {} was stopped by signal {} ({}); stopping the sweep", what, name, sig,
                  WIFSIGNALED(status) ? std::string("killed") : "exit status " + std::to_string(WEXITSTATUS(status)));
    return Outcome::kInterrupted;
  }
  if (pid > 0 && WIFEXITED(status) && WEXITSTATUS(status) == 0) return Outcome::kDone;
  ++failures;
  if (pid < 0) {
    spdlog::error("the {} of run {} could not start: fork failed: {}", what, name, std::strerror(fork_errno));
  } else {
    spdlog::error("the {} of run {} failed (exit status {}); see {}", what, name,
                  WIFEXITED(status) ? WEXITSTATUS(status) : -1, log);
  }
  return Outcome::kFailed;
}

// Trains and evaluates `run`, its output appended to its log, on `device` (see run_step).
Outcome run_pipeline(const SweepSpec& spec, const SweepRun& run, const std::string& dit, const std::string& device,
                     std::atomic<pid_t>& slot, std::atomic<int>& failures) {
  const std::string log = spec.dir + "/logs/" + run.name + ".log";
  int failed = 0;
  // Each run is its own process: its own log files, its own failure.
  const Outcome trained = run_step(train_command(spec, run, shell_quoted(dit)), log, device, slot, run.name,
                                   "training", failed);
  failures += failed;
  if (trained != Outcome::kDone) return trained;
  // dit train exits 0 after a signal too (it checkpointed): an unfinished run means the sweep
  // was interrupted, so it stops here and a second call resumes.
  const int64_t step = finished_step(run.run_dir);
  if (step < 0) {
    spdlog::error("run {} stopped before its last step; stopping the sweep (run it again to resume)", run.name);
    return Outcome::kInterrupted;
  }
  if (spec.eval && !evaluation_is_current(spec, run, step)) {
    const Outcome evaluated = run_step(eval_command(spec, run, shell_quoted(dit)), log, device, slot, run.name,
                                       "evaluation", failed);
    failures += failed;
    return evaluated;
  }
  return Outcome::kDone;
}

// Whether a run trains on a GPU (CUDA_VISIBLE_DEVICES then decides which).
bool trains_on_cuda(const SweepSpec& spec, const SweepRun& run) {
  std::string device;
  try {
    device = load_experiment_config(spec.base, run.overrides).train.device;
  } catch (const Error&) {
    return false;  // that run fails on its own, counted, as any other
  }
  return device.rfind("cuda", 0) == 0 || (device == "auto" && torch::cuda::is_available());
}

}  // namespace

int run_sweep(int argc, char** argv) {
  Args args("sweep",
            {{"config", "the sweep YAML (base, dir, overrides, grid, eval)"},
             {"print", "print each run's commands (for a cluster) instead of running them", false},
             {"collect", "only collect the results of the runs into dir/results.{csv,md}", false},
             {"jobs", "runs at once (default: one per --devices entry, else 1)"},
             {"devices", "GPUs to spread the runs over, e.g. 0,1,2,3: each run sees one as "
                         "CUDA_VISIBLE_DEVICES (indices into an inherited CUDA_VISIBLE_DEVICES)"}},
            argc, argv, 2);
  if (args.print_help_if_asked()) return 0;
  args.reject_overrides();
  const SweepSpec spec = read_sweep(args.require("config"));
  const std::vector<SweepRun> runs = expand_sweep(spec);
  const std::string dit = self_path(argv[0]);
  const std::vector<int64_t> devices = args.get_int_list("devices", {});
  std::vector<std::string> visible;  // what each --devices entry becomes as CUDA_VISIBLE_DEVICES
  for (int64_t d : devices) {
    if (d < 0) throw UsageError("sweep: --devices takes GPU indices (>= 0), got " + std::to_string(d));
    visible.push_back(visible_device(d, std::getenv("CUDA_VISIBLE_DEVICES")));
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
    const int64_t workers = std::min<int64_t>(jobs, static_cast<int64_t>(runs.size()));
    if (workers > 1 && devices.empty()) {
      for (const auto& run : runs) {
        if (trains_on_cuda(spec, run)) {
          spdlog::warn("--jobs {} without --devices: the runs at once all train on the same (default) GPU; "
                       "pass --devices 0,1,... to give each its own", workers);
          break;
        }
      }
    }
    // Workers take the next run in grid order; worker w always uses device w mod |devices|. After
    // an interruption (a signal to the sweep, a stopped run) or an error no new run starts; the
    // running ones finish (or checkpoint) first.
    SweepStopSignals signals(static_cast<size_t>(workers));
    std::atomic<size_t> next{0};
    std::atomic<bool> stop{false};
    std::mutex error_mutex;
    std::exception_ptr error;
    auto worker = [&](int64_t w) {
      const std::string device = visible.empty() ? "" : visible[static_cast<size_t>(w) % visible.size()];
      for (size_t i = next++; i < runs.size() && !stop && !SweepStopSignals::stopping(); i = next++) {
        const auto& run = runs[i];
        spdlog::info("run {}/{}: {}{} (log: {}/logs/{}.log)", i + 1, runs.size(), run.name,
                     device.empty() ? "" : " on GPU " + device, spec.dir, run.name);
        try {
          if (run_pipeline(spec, run, dit, device, signals.slot(static_cast<size_t>(w)), failures) ==
              Outcome::kInterrupted) {
            stop = true;
          }
        } catch (...) {
          std::lock_guard<std::mutex> lock(error_mutex);
          if (!error) error = std::current_exception();
          stop = true;
        }
      }
    };
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
    interrupted = stop || SweepStopSignals::stopping();
    if (const int sig = SweepStopSignals::stop_signal()) {
      spdlog::error("the sweep was interrupted by signal {} ({})", sig, ::strsignal(sig));
    }
  }
  if (interrupted) {
    spdlog::error("sweep interrupted: to resume, run `dit sweep --config {}` again (finished runs are kept, "
                  "unfinished ones continue from their last checkpoint)", spec.file);
    return 1;
  }
  const SweepTable table = collect_sweep(spec, runs);
  write_sweep_table(spec, table);
  spdlog::info("{} runs, {} failed; results in {}/results.csv and results.md", runs.size(), failures.load(), spec.dir);
  return failures == 0 ? 0 : 1;
}

}  // namespace ditlab::cli
