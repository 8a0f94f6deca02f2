// Several `dit train` ranks on this machine over Gloo (the torchrun environment set by hand, or
// by scripts/launch.sh): equivalence with one rank, and a dying rank failing the others.
#include <catch2/catch.hpp>

#include <ATen/ATen.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <thread>

#include "src/io/atomic_file.h"
#include "src/io/safetensors.h"
#include "tests/test_support.h"

// The ranks run on CPUs, over Gloo; builds without it (CUDA builds use NCCL) skip these.
#ifdef DITLAB_WITH_GLOO
using namespace ditlab;
using ditlab::testing::TempDir;
using ditlab::testing::wait_for;
using ditlab::testing::run_command;
namespace fs = std::filesystem;

namespace {
std::string train_command(const std::string& args) {
  return ditlab::testing::dit_binary() + " train --config " + ditlab::testing::source_dir() +
         "/configs/debug/dit.yaml sample.at_end=false " + args;
}

// The largest |a - b| over the weights of two weight files with the same keys.
double max_weight_difference(const std::string& a_path, const std::string& b_path) {
  const auto a = read_safetensors(a_path).tensors, b = read_safetensors(b_path).tensors;
  double max_diff = 0;
  for (const auto& [name, t] : a) max_diff = std::max(max_diff, (t - b.at(name)).abs().max().item<double>());
  return max_diff;
}

// One rank with the torchrun variables set; returns its pid.
pid_t start_rank(int rank, int world, int port, const std::string& args, const std::string& log) {
  pid_t pid = fork();
  if (pid == 0) {
    setenv("RANK", std::to_string(rank).c_str(), 1);
    setenv("WORLD_SIZE", std::to_string(world).c_str(), 1);
    setenv("LOCAL_RANK", std::to_string(rank).c_str(), 1);
    setenv("LOCAL_WORLD_SIZE", std::to_string(world).c_str(), 1);
    setenv("MASTER_ADDR", "127.0.0.1", 1);
    setenv("MASTER_PORT", std::to_string(port).c_str(), 1);
    std::string command = "exec " + train_command(args) + " > '" + log + "' 2>&1";
    execl("/bin/sh", "sh", "-c", command.c_str(), static_cast<char*>(nullptr));
    _exit(127);
  }
  return pid;
}

}  // namespace

TEST_CASE("2 ranks with half batches give the weights of 1 rank with the whole batch",
          "[distributed]") {
  TempDir dir("ddp");
  const std::string common = "train.steps=6 train.log_every=3 ";
  REQUIRE(run_command(train_command(common + "run.dir=" + (dir / "one")), dir / "one.log") == 0);
  REQUIRE(run_command(ditlab::testing::source_dir() + "/scripts/launch.sh --nproc 2 --master-port 29631 -- " +
                          train_command(common + "run.dir=" + (dir / "two")),
                      dir / "two.log") == 0);
  CHECK_THAT(read_file(dir / "two.log"), Catch::Contains("2 ranks (torchrun, gloo)"));
  const double max_diff = max_weight_difference(dir / "one/model.safetensors", dir / "two/model.safetensors");
  INFO("max |1 rank - 2 ranks| = " << max_diff);
  CHECK(max_diff < 1e-4);  // only the order of floating-point sums differs
  // Only rank 0 wrote the run directory.
  CHECK(fs::exists(dir / "two/metrics.jsonl"));
  CHECK(fs::exists(dir / "two/checkpoints/step-00000006/manifest.json"));
  // The global batch must split evenly over the ranks.
  CHECK(run_command(ditlab::testing::source_dir() + "/scripts/launch.sh --nproc 3 --master-port 29632 -- " +
                        train_command("run.dir=" + (dir / "three")),
                    dir / "three.log") != 0);
  CHECK_THAT(read_file(dir / "three.log"), Catch::Contains("not divisible by 3 ranks"));
  // Without overlap (all buckets after backward) the result is the same.
  REQUIRE(run_command(ditlab::testing::source_dir() + "/scripts/launch.sh --nproc 2 --master-port 29633 -- " +
                          train_command(common + "train.grad_reduce_overlap=false run.dir=" + (dir / "serial")),
                      dir / "serial.log") == 0);
  const auto two = read_safetensors(dir / "two/model.safetensors").tensors;
  auto serial = read_safetensors(dir / "serial/model.safetensors").tensors;
  for (const auto& [name, t] : two) CHECK(at::allclose(t, serial.at(name), 1e-5, 1e-6));
  // Checkpointed blocks accumulate their parameters' gradients in a nested backward, which
  // fires the overlapping all-reduce's hooks from inside the outer one: still the same weights.
  REQUIRE(run_command(ditlab::testing::source_dir() + "/scripts/launch.sh --nproc 2 --master-port 29638 -- " +
                          train_command(common + "model.checkpoint_blocks=true run.dir=" + (dir / "recompute")),
                      dir / "recompute.log") == 0);
  auto recompute = read_safetensors(dir / "recompute/model.safetensors").tensors;
  for (const auto& [name, t] : two) CHECK(at::allclose(t, recompute.at(name), 1e-5, 1e-6));
  // The log reports what the all-reduce cost.
  CHECK_THAT(read_file(dir / "two.log"), Catch::Contains("overlap on") && Catch::Contains("not hidden"));
  CHECK_THAT(read_file(dir / "serial.log"), Catch::Contains("overlap off"));
}

TEST_CASE("Skip-DiT, U-DiT and DiT-MoE train the same on 2 ranks as on 1", "[distributed]") {
  for (const char* backbone : {"skip-dit", "u-dit", "dit-moe"}) {
    TempDir dir("ddp");
    const std::string config = ditlab::testing::source_dir() + "/configs/debug/" + backbone + ".yaml";
    auto command = [&](const std::string& run) {
      return ditlab::testing::dit_binary() + " train --config " + config +
             " sample.at_end=false train.steps=4 train.log_every=2 run.dir=" + (dir / run) +
             // The load-balancing loss is computed on each rank's own tokens (as the official
             // code does), so it is not split-invariant; without it the rest must be.
             (std::string(backbone) == "dit-moe" ? " model.moe.aux_loss_weight=0" : "");
    };
    REQUIRE(run_command(command("one"), dir / "one.log") == 0);
    REQUIRE(run_command(ditlab::testing::source_dir() + "/scripts/launch.sh --nproc 2 --master-port 29635 -- " +
                            command("two"),
                        dir / "two.log") == 0);
    const double max_diff = max_weight_difference(dir / "one/model.safetensors", dir / "two/model.safetensors");
    INFO(backbone << ": max |1 rank - 2 ranks| = " << max_diff);
    CHECK(max_diff < 1e-4);
  }
}

TEST_CASE("a µP model trains the same on 2 ranks as on 1", "[distributed][mup]") {
  TempDir dir("ddp-mup");
  const std::string common = "train.steps=4 train.log_every=2 model.hidden_size=128 "
                             "model.mup.enabled=true model.mup.base_width=64 ";
  REQUIRE(run_command(train_command(common + "run.dir=" + (dir / "one")), dir / "one.log") == 0);
  REQUIRE(run_command(ditlab::testing::source_dir() + "/scripts/launch.sh --nproc 2 --master-port 29637 -- " +
                          train_command(common + "run.dir=" + (dir / "two")),
                      dir / "two.log") == 0);
  const double max_diff = max_weight_difference(dir / "one/model.safetensors", dir / "two/model.safetensors");
  INFO("max |1 rank - 2 ranks| = " << max_diff);
  CHECK(max_diff < 1e-4);
}

TEST_CASE("a bf16 gradient all-reduce the backend cannot do is a clear error", "[distributed]") {
  TempDir dir("ddp");
  const int code = run_command(
      ditlab::testing::source_dir() + "/scripts/launch.sh --nproc 2 --master-port 29634 -- " +
          train_command("train.grad_reduce_dtype=bf16 run.dir=" + (dir / "run")),
      dir / "run.log");
  const std::string log = read_file(dir / "run.log");
  INFO(log);
  // Gloo in LibTorch 1.13 cannot sum bf16; a newer Gloo can, and then the run trains.
  if (code != 0) {
    CHECK_THAT(log, Catch::Contains("train.grad_reduce_dtype bf16") &&
                        Catch::Contains("cannot sum bf16"));
  } else {
    CHECK_THAT(log, Catch::Contains("in bf16"));
  }
}

TEST_CASE("every rank resumes from the checkpoint rank 0 chooses", "[distributed][resume]") {
  TempDir dir("ddp-resume");
  const std::string common = "train.steps=4 train.log_every=2 ";
  REQUIRE(run_command(train_command("train.steps=2 train.log_every=2 run.dir=" + (dir / "run")), dir / "first.log") == 0);
  // Rank 1 looks into another folder (a run.dir on a disk of its own): it cannot load the
  // checkpoint rank 0 resumes from, and both stop with an error instead of rank 1 starting over.
  pid_t rank0 = start_rank(0, 2, 29643, common + "--resume auto run.dir=" + (dir / "run"), dir / "rank0.log");
  pid_t rank1 = start_rank(1, 2, 29643, common + "--resume auto run.dir=" + (dir / "elsewhere"), dir / "rank1.log");
  CHECK(wait_for(rank0) == 1);
  CHECK(wait_for(rank1) == 1);
  const std::string log0 = read_file(dir / "rank0.log"), log1 = read_file(dir / "rank1.log");
  INFO(log0 << "\n---\n" << log1);
  CHECK_THAT(log1, Catch::Contains("rank 1 cannot read the checkpoint rank 0 resumes from (step 2) at " +
                                   (dir / "elsewhere/checkpoints/step-00000002")) &&
                       Catch::Contains("every rank sees the same"));
  CHECK_THAT(log0, Catch::Contains("1 other rank failed while loading the checkpoint rank 0 resumes from"));
  CHECK_FALSE(fs::exists(dir / "run/checkpoints/step-00000004"));
  // Sharing the folder, they resume together and end where one uninterrupted rank does.
  REQUIRE(run_command(ditlab::testing::source_dir() + "/scripts/launch.sh --nproc 2 --master-port 29644 -- " +
                          train_command(common + "--resume auto run.dir=" + (dir / "run")),
                      dir / "resumed.log") == 0);
  CHECK_THAT(read_file(dir / "resumed.log"), Catch::Contains("resumed from step 2"));
  REQUIRE(run_command(train_command(common + "run.dir=" + (dir / "one")), dir / "one.log") == 0);
  const double max_diff = max_weight_difference(dir / "one/model.safetensors", dir / "run/model.safetensors");
  INFO("max |1 rank - 2 ranks resumed| = " << max_diff);
  CHECK(max_diff < 1e-4);
}

TEST_CASE("the final sample grid is rank 0's alone: the others neither wait for it nor fail with it",
          "[distributed]") {
  TempDir dir("ddp-finish");
  // A non-empty folder where the final sample grid goes: the rename onto it fails on rank 0,
  // after the final weights (grids are .png with OpenCV, else .safetensors). Had rank 1 waited
  // in a collective for the grid, it would have learned of the failure and exited 1.
  fs::create_directories(dir / "run/samples.png/occupied");
  fs::create_directories(dir / "run/samples.safetensors/occupied");
  const std::string args = "train.steps=2 train.log_every=1 sample.at_end=true sample.steps=2 "
                           "sample.num_per_class=1 run.dir=" + (dir / "run");
  pid_t rank0 = start_rank(0, 2, 29645, args, dir / "rank0.log");
  pid_t rank1 = start_rank(1, 2, 29645, args, dir / "rank1.log");
  CHECK(wait_for(rank0) == 1);
  CHECK(wait_for(rank1) == 0);
  const std::string log0 = read_file(dir / "rank0.log"), log1 = read_file(dir / "rank1.log");
  INFO(log0 << "\n---\n" << log1);
  CHECK_THAT(log0, Catch::Contains(dir / "run/samples."));
  // The weights, written under every rank's watch, are there.
  CHECK(fs::exists(dir / "run/model.safetensors"));
  CHECK(fs::exists(dir / "run/ema.safetensors"));
}

TEST_CASE("a rank that dies makes the others fail with an error, not hang", "[distributed]") {
  TempDir dir("ddp");
  const std::string args = "train.steps=100000 train.dist_timeout_s=20 run.dir=" + (dir / "run");
  pid_t rank0 = start_rank(0, 2, 29641, args, dir / "rank0.log");
  pid_t rank1 = start_rank(1, 2, 29641, args, dir / "rank1.log");
  // Let them train a little, then kill rank 1 without warning.
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  auto trained = [&] {
    return fs::exists(dir / "run/metrics.jsonl") && fs::file_size(dir / "run/metrics.jsonl") > 0;
  };
  while (!trained() && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  REQUIRE(trained());
  kill(rank1, SIGKILL);
  wait_for(rank1);
  const auto killed_at = std::chrono::steady_clock::now();
  const int code = wait_for(rank0);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - killed_at).count();
  CHECK(code == 1);
  CHECK(seconds < 30);  // within the timeout (20 s) and some slack
  auto log = read_file(dir / "rank0.log");
  INFO(log);
  CHECK_THAT(log, Catch::Contains("rank 0: all-reduce failed: rank 1 stopped answering"));
}

#endif  // DITLAB_WITH_GLOO
