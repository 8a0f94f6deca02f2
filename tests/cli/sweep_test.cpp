// dit train-classifier, dit sweep (training and evaluating two runs) and scripts/plot_scaling.py
// from the command line.
#include <catch2/catch.hpp>

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <thread>

#include "src/io/atomic_file.h"
#include "tests/test_support.h"

using namespace ditlab;
using ditlab::testing::TempDir;
using ditlab::testing::dit_binary;
using ditlab::testing::run_command;
using ditlab::testing::start_in_own_group;
using ditlab::testing::wait_or_kill_group;
namespace fs = std::filesystem;

namespace {

bool has_trained(const std::string& run_dir) {
  return fs::exists(run_dir + "/metrics.jsonl") && fs::file_size(run_dir + "/metrics.jsonl") > 0;
}
}  // namespace

TEST_CASE("dit sweep trains and evaluates a grid and tabulates it", "[sweep][eval]") {
  TempDir dir("sweep-cli");
  const std::string source = ditlab::testing::source_dir();
  REQUIRE(run_command(dit_binary() + " train-classifier --config " + source +
                          "/configs/eval/fashion_mnist_classifier.yaml data.limit=600 classifier.steps=5 "
                          "classifier.eval_images=100 classifier.channels=[8,8,8] run.dir=" + (dir / "classifier"),
                      dir / "classifier.log") == 0);
  CHECK_THAT(read_file(dir / "classifier.log"), Catch::Contains("held-out accuracy"));
  std::ofstream(dir / "sweep.yaml")
      << "base: " << source << "/configs/debug/dit.yaml\n"
      << "dir: " << dir.path() << "/runs\n"
      << "overrides: [train.steps=3, sample.at_end=false]\n"
      << "grid:\n  model.conditioning: [adaln_zero, in_context]\n"
      << "eval: [--num-samples, '40', --steps, '2', eval.batch_size=20, eval.reference_dir=" << dir.path()
      << "/reference, eval.classifier=" << dir.path() << "/classifier/classifier.safetensors]\n";
  REQUIRE(run_command(dit_binary() + " sweep --config " + (dir / "sweep.yaml") + " --print", dir / "print.log") == 0);
  const std::string printed = read_file(dir / "print.log");
  CHECK(std::count(printed.begin(), printed.end(), '\n') == 4);
  CHECK_THAT(printed, Catch::Contains(" train --config ") && Catch::Contains(" eval --run-dir "));

  REQUIRE(run_command(dit_binary() + " sweep --config " + (dir / "sweep.yaml"), dir / "sweep.log") == 0);
  const std::string csv = read_file(dir / "runs/results.csv");
  INFO(csv);
  CHECK_THAT(csv, Catch::Contains("conditioning-adaln_zero,adaln_zero,done,3,"));
  CHECK_THAT(csv, Catch::Contains("conditioning-in_context,in_context,done,3,"));
  CHECK(std::filesystem::exists(dir / "runs/conditioning-in_context/eval.json"));
  CHECK(std::filesystem::exists(dir / "runs/results.md"));
  CHECK(std::filesystem::exists(dir / "runs/logs/conditioning-adaln_zero.log"));
  // A second pass finds both runs finished and evaluated, and leaves them as they are.
  const std::string weights = read_file(dir / "runs/conditioning-in_context/ema.safetensors");
  REQUIRE(run_command(dit_binary() + " sweep --config " + (dir / "sweep.yaml"), dir / "again.log") == 0);
  CHECK(read_file(dir / "runs/conditioning-in_context/ema.safetensors") == weights);
  const std::string history = read_file(dir / "runs/conditioning-in_context/evals.jsonl");
  CHECK(std::count(history.begin(), history.end(), '\n') == 1);
  CHECK(read_file(dir / "runs/results.csv") == csv);
  REQUIRE(run_command(dit_binary() + " sweep --config " + (dir / "sweep.yaml") + " --collect", dir / "collect.log") == 0);
  CHECK(read_file(dir / "runs/results.csv") == csv);
}

TEST_CASE("dit sweep --jobs runs several runs at once, with the results of one at a time", "[sweep]") {
  TempDir dir("sweep-jobs");
  const std::string source = ditlab::testing::source_dir();
  auto write_sweep = [&](const std::string& name) {
    std::ofstream(dir / (name + ".yaml"))
        << "base: " << source << "/configs/debug/dit.yaml\n"
        << "dir: " << dir.path() << "/" << name << "\n"
        << "overrides: [train.steps=3, train.threads=1, sample.at_end=false]\n"
        << "grid:\n  model.conditioning: [adaln_zero, adaln, in_context]\n";
    return dit_binary() + " sweep --config " + (dir / (name + ".yaml"));
  };
  REQUIRE(run_command(write_sweep("serial"), dir / "serial.log") == 0);
  // Three runs over two workers, each worker with its own GPU (the runs here stay on the CPU;
  // the variable is what they would see). The indices count the GPUs the sweep sees: entries 1
  // and 3 of the inherited list.
  REQUIRE(run_command("CUDA_VISIBLE_DEVICES=3,5,6,7 " + write_sweep("parallel") + " --devices 1,3",
                      dir / "parallel.log") == 0);
  const std::string log = read_file(dir / "parallel.log");
  CHECK_THAT(log, Catch::Contains("on GPU 5") && Catch::Contains("on GPU 7"));
  // The same table: runs are deterministic and independent of what runs beside them.
  CHECK(read_file(dir / "parallel/results.csv") == read_file(dir / "serial/results.csv"));
  CHECK(run_command(write_sweep("bad") + " --devices 0,x", dir / "bad.log") == 2);
  CHECK_THAT(read_file(dir / "bad.log"), Catch::Contains("--devices"));
  CHECK(run_command(write_sweep("bad") + " --devices 0,-1", dir / "bad.log") == 2);
  CHECK_THAT(read_file(dir / "bad.log"), Catch::Contains("--devices takes GPU indices"));
  CHECK(run_command(write_sweep("bad") + " --jobs 0", dir / "bad.log") == 2);
  CHECK(run_command("CUDA_VISIBLE_DEVICES=4,5 " + write_sweep("bad") + " --devices 0,2", dir / "bad.log") == 2);
  CHECK_THAT(read_file(dir / "bad.log"), Catch::Contains("--devices 2 is beyond the inherited CUDA_VISIBLE_DEVICES=4,5"));
  CHECK_FALSE(fs::exists(dir / "bad"));  // refused before any run started
}

TEST_CASE("SIGTERM to dit sweep checkpoints the running runs and starts no other", "[sweep][faults]") {
  TempDir dir("sweep-signal");
  // Two runs at once, long enough to be in progress when the signal comes, and a third that
  // must never start.
  std::ofstream(dir / "sweep.yaml")
      << "base: " << ditlab::testing::source_dir() << "/configs/debug/dit.yaml\n"
      << "dir: " << dir.path() << "/runs\n"
      << "overrides: [train.steps=100000, train.log_every=1, train.threads=1, sample.at_end=false]\n"
      << "grid:\n  model.conditioning: [adaln_zero, adaln, in_context]\n";
  const pid_t sweep = start_in_own_group(dit_binary() + " sweep --jobs 2 --config " + (dir / "sweep.yaml"),
                                         dir / "sweep.log");
  const std::string first = dir / "runs/conditioning-adaln_zero", second = dir / "runs/conditioning-adaln";
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(90);
  while (!(has_trained(first) && has_trained(second)) && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  const bool both_trained = has_trained(first) && has_trained(second);
  kill(sweep, SIGTERM);  // the sweep's pid alone, as `kill PID` or a scheduler would
  const int code = wait_or_kill_group(sweep, 120);
  const std::string log = read_file(dir / "sweep.log");
  INFO(log);
  REQUIRE(both_trained);
  CHECK(code == 1);
  CHECK_THAT(log, Catch::Contains("interrupted by signal 15") && Catch::Contains("to resume"));
  // Each running run got the stop, checkpointed and left no final weights.
  for (const std::string& name : {"conditioning-adaln_zero", "conditioning-adaln"}) {
    INFO(name);
    CHECK_THAT(read_file(dir / ("runs/logs/" + name + ".log")), Catch::Contains("stopped by signal 15"));
    CHECK_FALSE(fs::exists(dir / ("runs/" + name + "/model.safetensors")));
    CHECK(fs::exists(dir / ("runs/" + name + "/checkpoints")));
    CHECK_FALSE(fs::is_empty(dir / ("runs/" + name + "/checkpoints")));
  }
  CHECK_FALSE(fs::exists(dir / "runs/conditioning-in_context"));
  CHECK_FALSE(fs::exists(dir / "runs/logs/conditioning-in_context.log"));
  CHECK_FALSE(fs::exists(dir / "runs/results.csv"));
}

TEST_CASE("plot_scaling.py fits a power law to a sweep's results", "[sweep][plots]") {
  TempDir dir("scaling-plot");
  // loss = 2 C^-0.05 and fid = 900 C^-0.1 over four compute budgets.
  std::ofstream csv(dir / "results.csv");
  csv << "run,model.patch_size,status,step,loss,params_m,gmacs,training_flops,fid,precision,recall,inception_score,accuracy\n";
  int i = 0;
  for (double c : {1e12, 1e13, 1e14, 1e15}) {
    csv << "r" << i << "," << (8 >> i % 3) << ",done,10," << 2 * std::pow(c, -0.05) << ",1,1," << c << ","
        << 900 * std::pow(c, -0.1) << ",,,,\n";
    ++i;
  }
  csv << "r9,2,missing,,,,,,,,,,\n";
  csv.close();
  REQUIRE(run_command("/usr/bin/python3 " + ditlab::testing::source_dir() + "/scripts/plot_scaling.py " +
                          (dir / "results.csv"),
                      dir / "plot.log") == 0);
  const std::string log = read_file(dir / "plot.log");
  INFO(log);
  CHECK_THAT(log, Catch::Contains("loss = 2 C^-0.050") && Catch::Contains("(R^2 1.000)"));
  CHECK_THAT(log, Catch::Contains("fid = 900 C^-0.100"));
  CHECK(std::filesystem::exists(dir / "scaling_loss.png"));
  CHECK(std::filesystem::exists(dir / "scaling_fid.png"));
}

TEST_CASE("plot_metrics.py --evals plots a run's FID over training from evals.jsonl", "[plots]") {
  TempDir dir("evals-plot");
  std::ofstream evals(dir / "evals.jsonl");
  auto line = [&](int step, double fid, int samples) {
    evals << "{\"weights\": \"ema\", \"step\": " << step << ", \"features\": \"classifier-1\", \"num_samples\": "
          << samples << ", \"reference_images\": 100, \"sampler\": \"ddim\", \"sample_steps\": 20, "
          << "\"cfg_scale\": 3, \"fid\": " << fid << "}\n";
  };
  line(200, 40.0, 500);
  line(100, 55.0, 500);
  line(100, 99.0, 50);  // other settings: not comparable, left out
  line(300, 30.0, 500);
  evals.close();
  REQUIRE(run_command("/usr/bin/python3 " + ditlab::testing::source_dir() + "/scripts/plot_metrics.py " + dir.path() +
                          " --evals",
                      dir / "plot.log") == 0);
  const std::string log = read_file(dir / "plot.log");
  INFO(log);
  CHECK_THAT(log, Catch::Contains("fid at steps 100 55, 200 40, 300 30"));
  CHECK(std::filesystem::exists(dir / "fid.png"));
  CHECK(run_command("/usr/bin/python3 " + ditlab::testing::source_dir() + "/scripts/plot_metrics.py " + (dir / "none") +
                        " --evals",
                    dir / "none.log") != 0);
  CHECK_THAT(read_file(dir / "none.log"), Catch::Contains("evals.jsonl: not found"));
}
