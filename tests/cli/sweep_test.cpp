// dit train-classifier, dit sweep (training and evaluating two runs), and the plotting scripts
// (scripts/plot_scaling.py, plot_metrics.py and the others' missing-module message) from the
// command line.
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

// The header of a dit sweep results.csv with one grid column.
const char* const kResultsHeader =
    "run,model.patch_size,status,step,loss,params_m,gmacs,training_flops,fid,precision,recall,"
    "inception_score,accuracy\n";

// A plotting script run with the system interpreter, as the documentation says.
std::string python_script(const std::string& name) {
  return "/usr/bin/python3 " + ditlab::testing::source_dir() + "/scripts/" + name + " ";
}

bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
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

TEST_CASE("plot_scaling.py --offset recovers a floor, and says when runs do not identify one",
          "[sweep][plots]") {
  TempDir dir("scaling-offset");
  // loss = 3 C^-0.2 + 0.05 (a floor) and fid = 900 C^-0.1 (none) over six compute budgets.
  std::ofstream csv(dir / "results.csv");
  csv.precision(12);
  csv << kResultsHeader;
  int i = 0;
  for (double c : {1e10, 1e11, 1e12, 1e13, 1e14, 1e15}) {
    csv << "r" << i << "," << (8 >> i % 3) << ",done,10," << 3 * std::pow(c, -0.2) + 0.05 << ",1,1,"
        << c << "," << 900 * std::pow(c, -0.1) << ",,,,\n";
    ++i;
  }
  csv.close();
  REQUIRE(run_command(python_script("plot_scaling.py") + (dir / "results.csv") + " --offset",
                      dir / "plot.log") == 0);
  std::string log = read_file(dir / "plot.log");
  INFO(log);
  CHECK(contains(log, "loss = 3 C^-0.200 + 0.05  (R^2 1.000)"));
  CHECK(contains(log, "c in [0.05, 0.05], b in [0.200, 0.200]"));  // exact data pin the floor down
  CHECK(contains(log, "fid = 900 C^-0.100 + 0  (R^2 1.000)"));
  CHECK_FALSE(contains(log, "WARNING"));
  CHECK(std::filesystem::exists(dir / "scaling_loss.png"));

  // The measured scaling study (docs/results.md): eight noisy runs fit every floor from 0 to the
  // best run's loss, so neither c nor b is identified, and the script says so.
  REQUIRE(run_command(python_script("plot_scaling.py") + ditlab::testing::source_dir() +
                          "/docs/images/scaling_results.csv --offset --out-prefix " +
                          (dir / "measured"),
                      dir / "measured.log") == 0);
  log = read_file(dir / "measured.log");
  INFO(log);
  CHECK(contains(log, "loss = 4.49 C^-0.141 + 0.0137  (R^2 0.766)"));
  CHECK(contains(log, "c in [0, 0.0572], b in [0.117, 0.420]"));
  CHECK(contains(log, "WARNING: c is not identified"));
  CHECK(contains(log, "WARNING: b is not identified"));
  CHECK(std::filesystem::exists(dir / "measured_loss.png"));
}

TEST_CASE("plot_scaling.py --frontier fits the runs lower than every run of less compute",
          "[sweep][plots]") {
  TempDir dir("scaling-frontier");
  std::ofstream csv(dir / "results.csv");
  csv << kResultsHeader;
  // (compute, loss, fid): loss frontier 1e12, 4e12, 1.6e13; fid frontier all but 4e12.
  const double runs[][3] = {
      {1e12, 0.5, 50}, {2e12, 0.6, 40}, {4e12, 0.4, 45}, {8e12, 0.45, 30}, {1.6e13, 0.3, 20}};
  int i = 0;
  for (const auto& r : runs) {
    csv << "r" << i << "," << (8 >> i % 3) << ",done,10," << r[1] << ",1,1," << r[0] << "," << r[2]
        << ",,,,\n";
    ++i;
  }
  csv.close();
  REQUIRE(run_command(python_script("plot_scaling.py") + (dir / "results.csv") + " --frontier",
                      dir / "plot.log") == 0);
  const std::string log = read_file(dir / "plot.log");
  INFO(log);
  CHECK(contains(log, "loss frontier: 3 of 5 runs: 1e+12 0.5, 4e+12 0.4, 1.6e+13 0.3"));
  CHECK(contains(log, "fid frontier: 4 of 5 runs: 1e+12 50, 2e+12 40, 8e+12 30, 1.6e+13 20"));
  CHECK(contains(log, "loss frontier = 82.1 C^-0.184"));  // the 3 frontier runs alone
  CHECK(std::filesystem::exists(dir / "scaling_loss.png"));
  CHECK(std::filesystem::exists(dir / "scaling_fid.png"));
}

TEST_CASE("plot_scaling.py plots legal inputs it cannot fit, and says why", "[sweep][plots]") {
  TempDir dir("scaling-nofit");
  // A sweep over the learning rate: every run has the same compute.
  std::ofstream lrs(dir / "lrs.csv");
  lrs << "run,train.lr,status,step,loss,params_m,gmacs,training_flops,fid,precision,recall,"
         "inception_score,accuracy\n"
      << "lr-0,0.0001,done,10,0.1,1,1,1e+12,,,,,\n"
      << "lr-1,0.001,done,10,0.2,1,1,1e+12,,,,,\n"
      << "lr-2,0.01,done,10,0.3,1,1,1e+12,,,,,\n";
  lrs.close();
  REQUIRE(run_command(python_script("plot_scaling.py") + (dir / "lrs.csv"), dir / "lrs.log") == 0);
  std::string log = read_file(dir / "lrs.log");
  INFO(log);
  CHECK(contains(log, "loss: no fit: compute does not vary"));
  CHECK_FALSE(contains(log, "loss = "));
  CHECK(std::filesystem::exists(dir / "scaling_loss.png"));  // the points, without a fit
  CHECK(contains(log, "fid: no finished run with a usable value; no plot"));

  // NaN, inf and non-positive values are dropped and counted; two runs are left, too few for
  // --offset.
  std::ofstream bad(dir / "bad.csv");
  bad << kResultsHeader << "r0,8,done,10,0.2,1,1,1e+12,,,,,\n"
      << "r1,4,done,10,nan,1,1,1e+13,,,,,\n"
      << "r2,2,done,10,0.1,1,1,inf,,,,,\n"
      << "r3,2,done,10,-1,1,1,1e+14,,,,,\n"
      << "r4,2,done,10,0.05,1,1,1e+15,,,,,\n";
  bad.close();
  REQUIRE(run_command(python_script("plot_scaling.py") + (dir / "bad.csv") +
                          " --offset --out-prefix " + (dir / "bad"),
                      dir / "bad.log") == 0);
  log = read_file(dir / "bad.log");
  INFO(log);
  CHECK(contains(log, "loss: dropped 3 of 5 run(s)"));
  CHECK(contains(log, "r1, r2, r3"));
  CHECK(contains(log, "a fit needs 3"));
  CHECK_FALSE(contains(log, "loss = "));
  CHECK(std::filesystem::exists(dir / "bad_loss.png"));
}

TEST_CASE(
    "plot_metrics.py skips null values and a cut last line, and fails on a key without values",
    "[plots]") {
  TempDir dir("metrics-plot");
  const std::string settings =
      "\"weights\": \"ema\", \"features\": \"classifier-1\", \"num_samples\": 500, "
      "\"reference_images\": 100, \"sampler\": \"ddim\", \"sample_steps\": 20, \"cfg_scale\": 3";
  fs::create_directories(dir / "some");
  std::ofstream(dir / "some/evals.jsonl")
      << "{" << settings << ", \"step\": 100, \"fid\": 55, \"accuracy\": 0.3}\n"
      << "{" << settings << ", \"step\": 200, \"fid\": 40, \"accuracy\": null}\n"
      << "{" << settings << ", \"step\": 300, \"fid\": 30, \"accuracy\": 0.5}\n"
      << "{" << settings << ", \"step\": 400, \"fid\": 25, \"accuracy\": null}\n";
  REQUIRE(
      run_command(python_script("plot_metrics.py") + (dir / "some") + " --evals --keys accuracy",
                  dir / "some.log") == 0);
  CHECK_THAT(read_file(dir / "some.log"), Catch::Contains("accuracy at steps 100 0.3, 300 0.5"));
  CHECK(fs::exists(dir / "some/accuracy.png"));

  // Every accuracy null (an Inception evaluation has none): an error naming the key and the file.
  fs::create_directories(dir / "none");
  std::ofstream(dir / "none/evals.jsonl")
      << "{" << settings << ", \"step\": 100, \"fid\": 55, \"accuracy\": null}\n"
      << "{" << settings << ", \"step\": 200, \"fid\": 40, \"accuracy\": null}\n";
  CHECK(run_command(python_script("plot_metrics.py") + (dir / "none") + " --evals --keys accuracy",
                    dir / "none.log") != 0);
  CHECK_THAT(read_file(dir / "none.log"), Catch::Contains("none/evals.jsonl") &&
                                              Catch::Contains("no finite value of 'accuracy'"));
  CHECK_FALSE(fs::exists(dir / "none/accuracy.png"));

  // A run killed while writing leaves a cut last line: skipped with a warning.
  fs::create_directories(dir / "killed");
  std::ofstream(dir / "killed/metrics.jsonl")
      << "{\"step\": 100, \"loss\": 0.5, \"mse\": 0.4, \"vb\": 0.1}\n"
      << "{\"step\": 200, \"loss\": 0.3, \"mse\": 0.25, \"vb\": 0.05}\n"
      << "{\"step\": 450, \"lo";
  REQUIRE(run_command(python_script("plot_metrics.py") + (dir / "killed"), dir / "killed.log") ==
          0);
  CHECK_THAT(
      read_file(dir / "killed.log"),
      Catch::Contains("metrics.jsonl:3: skipping the last line") && Catch::Contains("wrote"));
  CHECK(fs::exists(dir / "killed/loss.png"));

  // A malformed line before the last is an error naming the file and the line.
  fs::create_directories(dir / "broken");
  std::ofstream(dir / "broken/metrics.jsonl")
      << "{\"step\": 100, \"loss\": 0.5, \"mse\": 0.4, \"vb\": 0.1}\n"
      << "{\"step\": 2\n"
      << "{\"step\": 300, \"loss\": 0.3, \"mse\": 0.25, \"vb\": 0.05}\n";
  CHECK(run_command(python_script("plot_metrics.py") + (dir / "broken"), dir / "broken.log") != 0);
  CHECK_THAT(read_file(dir / "broken.log"),
             Catch::Contains("broken/metrics.jsonl:2: not a JSON object"));
}

TEST_CASE("the plot scripts name a missing module and the interpreter to use", "[plots]") {
  TempDir dir("plots-no-modules");
  // -I -S: no site-packages and no PYTHONPATH, as a python3 without numpy and matplotlib (a
  // pyenv one first on PATH). Each script stops at its imports, before reading arguments.
  for (const std::string& name :
       {"plot_scaling.py", "plot_metrics.py", "plot_lr_sweep.py", "plot_coord_check.py"}) {
    INFO(name);
    const std::string log = dir / (name + ".log");
    CHECK(run_command("/usr/bin/python3 -I -S " + ditlab::testing::source_dir() + "/scripts/" +
                          name + " a b",
                      log) == 2);
    CHECK_THAT(read_file(log),
               Catch::Contains("is missing from") && Catch::Contains("/usr/bin/python3"));
    CHECK_THAT(read_file(log), !Catch::Contains("Traceback"));
  }
}
