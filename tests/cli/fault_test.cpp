// Faults against the real `dit` process: graceful stops on signals, and SIGKILL at random moments
// (also in the middle of writing a checkpoint) never costing more than the steps since the last
// complete checkpoint, nor changing the result.
#include <catch2/catch.hpp>

#include <ATen/ATen.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <random>
#include <thread>

#include "src/io/atomic_file.h"
#include "src/io/safetensors.h"
#include "tests/test_support.h"
#include "trainers/checkpoint.h"

using namespace ditlab;
using ditlab::testing::TempDir;
using ditlab::testing::wait_for;
using ditlab::testing::wait_until;
namespace fs = std::filesystem;

namespace {

// Starts `dit train` on the debug config with `args`, output into `log`; returns its pid.
pid_t start_training(const std::vector<std::string>& args, const std::string& log) {
  std::vector<std::string> argv = {ditlab::testing::dit_binary(), "train", "--config",
                                   ditlab::testing::source_dir() + "/configs/debug/dit.yaml",
                                   "sample.at_end=false"};
  argv.insert(argv.end(), args.begin(), args.end());
  pid_t pid = fork();
  if (pid == 0) {
    FILE* out = std::freopen(log.c_str(), "a", stdout);
    FILE* err = std::freopen(log.c_str(), "a", stderr);
    (void)out;
    (void)err;
    std::vector<char*> raw;
    for (auto& a : argv) raw.push_back(a.data());
    raw.push_back(nullptr);
    execv(raw[0], raw.data());
    _exit(127);
  }
  return pid;
}


}  // namespace

TEST_CASE("SIGTERM, SIGINT and SIGUSR1 checkpoint and exit 0, and the run resumes", "[faults]") {
  for (int sig : {SIGTERM, SIGINT, SIGUSR1}) {
    INFO("signal " << sig);
    TempDir dir("signal");
    auto run = dir / "run";
    pid_t pid = start_training({"train.steps=100000", "train.log_every=1", "run.dir=" + run},
                               dir / "log");
    REQUIRE(wait_until([&] { return fs::exists(run + "/metrics.jsonl") && fs::file_size(run + "/metrics.jsonl") > 0; }, 60));
    kill(pid, sig);
    CHECK(wait_for(pid) == 0);
    CHECK_THAT(read_file(dir / "log"), Catch::Contains("--resume auto"));
    auto checkpoint = load_latest_complete(run);
    REQUIRE(checkpoint.has_value());
    CHECK(checkpoint->step >= 1);
    pid = start_training({"--resume", "auto", "train.steps=" + std::to_string(checkpoint->step + 2),
                          "run.dir=" + run},
                         dir / "log2");
    CHECK(wait_for(pid) == 0);
    CHECK_THAT(read_file(dir / "log2"), Catch::Contains("resumed from step " + std::to_string(checkpoint->step)));
  }
}

TEST_CASE("SIGKILL at random moments loses nothing but time: the result is bit-identical",
          "[faults]") {
  TempDir dir("kill");
  // Long enough (a few seconds) that most attempts are killed part-way; frequent checkpoints so
  // that some kills land in the middle of writing one.
  const std::vector<std::string> common = {"train.steps=120", "checkpoint.every=3", "checkpoint.keep=2",
                                           "train.log_every=5"};
  auto with = [&](std::vector<std::string> args, const std::string& run) {
    args.insert(args.end(), common.begin(), common.end());
    args.push_back("run.dir=" + run);
    return args;
  };
  REQUIRE(wait_for(start_training(with({}, dir / "reference"), dir / "reference.log")) == 0);

  std::mt19937 rng(12345);  // fixed, so a failure can be replayed
  std::uniform_int_distribution<int> delay_ms(300, 2000);
  int kills = 0, exit_code = -1;
  for (int attempt = 0; attempt < 40 && exit_code != 0; ++attempt) {
    pid_t pid = start_training(with({"--resume", "auto"}, dir / "killed"), dir / "killed.log");
    if (attempt < 30) {
      std::this_thread::sleep_for(std::chrono::milliseconds(delay_ms(rng)));
      if (kill(pid, SIGKILL) == 0) ++kills;
    }
    exit_code = wait_for(pid);
    // Never a partial checkpoint: whatever is complete must verify.
    for (const auto& d : list_checkpoints(dir / "killed")) CHECK_NOTHROW(load_checkpoint(d));
  }
  INFO("killed " << kills << " times");
  INFO("log of the last attempt:\n" << read_file(dir / "killed.log"));
  REQUIRE(exit_code == 0);
  CHECK(kills >= 5);
  auto a = read_safetensors(dir / "reference/model.safetensors").tensors;
  auto b = read_safetensors(dir / "killed/model.safetensors").tensors;
  auto ea = read_safetensors(dir / "reference/ema.safetensors").tensors;
  auto eb = read_safetensors(dir / "killed/ema.safetensors").tensors;
  for (const auto& [name, t] : a) {
    INFO(name);
    CHECK(at::equal(t, b.at(name)));
    CHECK(at::equal(ea.at(name), eb.at(name)));
  }
}
