// Sweep files: reading, grid expansion, commands, and the results table.
#include <catch2/catch.hpp>

#include <csignal>
#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "src/common/error.h"
#include "src/io/atomic_file.h"
#include "tests/test_support.h"
#include "trainers/sweep.h"

using namespace ditlab;
using ditlab::testing::TempDir;

namespace {
std::string write_sweep(const TempDir& dir, const std::string& body) {
  const std::string path = dir / "sweep.yaml";
  std::ofstream(path) << "base: " << ditlab::testing::source_dir() << "/configs/debug/dit.yaml\n"
                      << "dir: " << dir.path() << "/runs\n" << body;
  return path;
}
}  // namespace

TEST_CASE("a sweep grid expands into named runs, first key slowest", "[sweep]") {
  TempDir dir("sweep");
  const SweepSpec spec = read_sweep(write_sweep(dir, "overrides: [train.steps=3]\n"
                                                     "grid:\n  model.hidden_size: [32, 64]\n"
                                                     "  model.conditioning: [adaln_zero, adaln, in_context]\n"
                                                     "eval: [--num-samples, '100']\n"));
  CHECK(spec.eval);
  const auto runs = expand_sweep(spec);
  REQUIRE(runs.size() == 6);
  CHECK(runs[0].name == "hidden_size-32_conditioning-adaln_zero");
  CHECK(runs[2].name == "hidden_size-32_conditioning-in_context");
  CHECK(runs[3].name == "hidden_size-64_conditioning-adaln_zero");
  CHECK(runs[5].run_dir == dir.path() + "/runs/hidden_size-64_conditioning-in_context");
  CHECK(runs[4].overrides == std::vector<std::string>{"train.steps=3", "model.hidden_size=64",
                                                      "model.conditioning=adaln",
                                                      "run.dir=" + dir.path() + "/runs/hidden_size-64_conditioning-adaln"});
  const std::string train = train_command(spec, runs[1], "dit");
  CHECK_THAT(train, Catch::StartsWith("dit train --config '") && Catch::Contains("--resume auto") &&
                        Catch::Contains("'model.conditioning=adaln'"));
  CHECK(eval_command(spec, runs[1], "dit") ==
        "dit eval --run-dir '" + runs[1].run_dir + "' '--num-samples' '100'");
}

TEST_CASE("exclude leaves out the combinations it names", "[sweep]") {
  TempDir dir("sweep-exclude");
  const SweepSpec spec = read_sweep(write_sweep(dir, "grid:\n  model.hidden_size: [32, 64]\n"
                                                     "  model.conditioning: [adaln_zero, adaln, in_context]\n"
                                                     "exclude:\n  - {model.hidden_size: 64, model.conditioning: adaln}\n"
                                                     "  - {model.conditioning: in_context}\n"));
  const auto runs = expand_sweep(spec);
  std::vector<std::string> names;
  for (const auto& run : runs) names.push_back(run.name);
  CHECK(names == std::vector<std::string>{"hidden_size-32_conditioning-adaln_zero", "hidden_size-32_conditioning-adaln",
                                          "hidden_size-64_conditioning-adaln_zero"});
  CHECK_THROWS_WITH(read_sweep(write_sweep(dir, "grid:\n  model.depth: [1, 2]\nexclude:\n  - {model.dept: 1}\n")),
                    Catch::Contains("exclude[0]") && Catch::Contains("'model.dept' is not a key of the grid"));
  CHECK_THROWS_WITH(read_sweep(write_sweep(dir, "grid:\n  model.depth: [1, 2]\nexclude:\n  - {model.depth: 3}\n")),
                    Catch::Contains("'3' is not one of grid.model.depth's values"));
  CHECK_THROWS_WITH(read_sweep(write_sweep(dir, "grid:\n  model.depth: [1, 2]\nexclude: {model.depth: 1}\n")),
                    Catch::Contains("'exclude' must be a list"));
  CHECK_THROWS_WITH(expand_sweep(read_sweep(write_sweep(dir, "grid:\n  model.depth: [1]\nexclude:\n  - {model.depth: 1}\n"))),
                    Catch::Contains("leaves no runs"));
}

TEST_CASE("bad sweep files are errors naming the file, the key or the run", "[sweep]") {
  TempDir dir("sweep-bad");
  CHECK_THROWS_WITH(read_sweep(dir / "none.yaml"), Catch::Contains("none.yaml") && Catch::Contains("does not exist"));
  CHECK_THROWS_WITH(read_sweep(write_sweep(dir, "grid:\n  model.depth: [1]\nruns: 3\n")),
                    Catch::Contains("unknown key 'runs'"));
  CHECK_THROWS_WITH(read_sweep(write_sweep(dir, "grid:\n  model.depth: 2\n")),
                    Catch::Contains("'grid.model.depth' must be a list"));
  CHECK_THROWS_WITH(read_sweep(write_sweep(dir, "grid: {}\n")), Catch::Contains("'grid' must map"));
  CHECK_THROWS_WITH(expand_sweep(read_sweep(write_sweep(dir, "grid:\n  model.depht: [1, 2]\n"))),
                    Catch::Contains("run 'depht-1'") && Catch::Contains("model.depht"));
  CHECK_THROWS_WITH(expand_sweep(read_sweep(write_sweep(dir, "grid:\n  model.conditioning: [adaln, sideways]\n"))),
                    Catch::Contains("run 'conditioning-sideways'"));
  CHECK_THROWS_WITH(expand_sweep(read_sweep(write_sweep(dir, "grid:\n  model.mlp_ratio: ['4', '4']\n"))),
                    Catch::Contains("two runs would be named"));
}

TEST_CASE("the results table reads each run's config, metrics and eval.json", "[sweep]") {
  TempDir dir("sweep-table");
  const SweepSpec spec = read_sweep(write_sweep(dir, "overrides: [train.steps=4, train.global_batch_size=8]\n"
                                                     "grid:\n  model.patch_size: [4, 8]\n"));
  const auto runs = expand_sweep(spec);
  // A finished run written by hand: its config, the last metrics line, weights, eval.json.
  std::filesystem::create_directories(runs[0].run_dir);
  std::ofstream(runs[0].run_dir + "/config.yaml")
      << "model:\n  name: dit\n  depth: 2\n  hidden_size: 64\n  num_heads: 2\n  patch_size: 4\n"
         "  input_size: 32\n  in_channels: 1\n  num_classes: 10\ntrain:\n  steps: 4\n  global_batch_size: 8\n";
  std::ofstream(runs[0].run_dir + "/metrics.jsonl") << "{\"step\": 2, \"loss\": 0.9}\n{\"step\": 4, \"loss\": 0.5}\n";
  std::ofstream(runs[0].run_dir + "/ema.safetensors") << "x";
  std::ofstream(runs[0].run_dir + "/eval.json") << "{\"step\": 4, \"fid\": 12.5, \"precision\": 0.7, \"recall\": 0.4, "
                                                   "\"inception_score\": 8.1, \"accuracy\": null}\n";
  const SweepTable table = collect_sweep(spec, runs);
  auto column = [&](const std::string& name) {
    return static_cast<size_t>(std::find(table.columns.begin(), table.columns.end(), name) - table.columns.begin());
  };
  REQUIRE(table.rows.size() == 2);
  const auto& done = table.rows[0];
  CHECK(done[column("model.patch_size")] == "4");
  CHECK(done[column("status")] == "done");
  CHECK(done[column("step")] == "4");
  CHECK(done[column("loss")] == "0.5");
  CHECK(done[column("fid")] == "12.5");
  CHECK(done[column("accuracy")] == "");
  // 6 x forward MACs x steps x batch.
  const double gmacs = std::stod(done[column("gmacs")]);
  CHECK(std::stod(done[column("training_flops")]) == Approx(6 * gmacs * 1e9 * 4 * 8).epsilon(1e-5));
  CHECK(table.rows[1][column("status")] == "missing");
  CHECK(finished_step(runs[0].run_dir) == 4);
  CHECK(evaluated_step(runs[0].run_dir) == 4);
  // An evaluation of earlier weights (the run was extended since) is left out of the row.
  std::ofstream(runs[0].run_dir + "/eval.json") << "{\"step\": 2, \"fid\": 30.0}\n";
  CHECK(collect_sweep(spec, runs).rows[0][column("fid")] == "");
  std::ofstream(runs[0].run_dir + "/eval.json") << "{\"step\": 4, \"fid\": 12.5}\n";
  write_sweep_table(spec, table);
  const std::string md = read_file(dir / "runs/results.md");
  CHECK_THAT(md, Catch::StartsWith("| run | model.patch_size | status"));
  CHECK_THAT(read_file(dir / "runs/results.csv"), Catch::Contains("patch_size-8,8,missing"));
  // A run killed while writing leaves a cut last line: the line before counts.
  std::ofstream(runs[0].run_dir + "/metrics.jsonl") << "{\"step\": 2, \"loss\": 0.9}\n{\"step\": 4, \"lo";
  const SweepTable cut = collect_sweep(spec, runs);
  CHECK(cut.rows[0][column("step")] == "2");
  CHECK(cut.rows[0][column("status")] == "incomplete");
  CHECK(finished_step(runs[0].run_dir) == -1);
}

TEST_CASE("a sweep's evaluations count only when made with the sweep's eval arguments", "[sweep]") {
  TempDir dir("sweep-eval");
  const SweepSpec spec = read_sweep(write_sweep(dir, "eval: [--num-samples, \"500\"]\n"
                                                     "grid:\n  model.patch_size: [4]\n"));
  REQUIRE(spec.eval);
  const auto runs = expand_sweep(spec);
  const std::string run_dir = runs[0].run_dir;
  std::filesystem::create_directories(run_dir);
  auto write_eval = [&](const std::string& command) {
    std::ofstream(run_dir + "/eval.json") << "{\"step\": 4, \"fid\": 12.5, \"num_samples\": 50, \"command\": \""
                                          << command << "\"}\n";
  };
  // What the sweep itself runs (eval_command), as dit eval records its command line.
  write_eval("/opt/dit eval --run-dir " + run_dir + " --num-samples 500");
  CHECK(evaluation_is_current(spec, runs[0], 4));
  CHECK_FALSE(evaluation_is_current(spec, runs[0], 6));  // other weights
  // By hand, with fewer samples: redone by the sweep, left out of its table.
  write_eval("/opt/dit eval --run-dir " + run_dir + " --num-samples 50");
  CHECK_FALSE(evaluation_is_current(spec, runs[0], 4));
  // A sweep without eval: takes whatever evaluated these weights.
  SweepSpec no_eval = spec;
  no_eval.eval = false;
  no_eval.eval_args.clear();
  CHECK(evaluation_is_current(no_eval, runs[0], 4));
}

TEST_CASE("sweep device indices pick from an inherited CUDA_VISIBLE_DEVICES", "[sweep]") {
  // Unset: the index is the GPU.
  CHECK(visible_device(0, nullptr) == "0");
  CHECK(visible_device(3, nullptr) == "3");
  // Set: the index counts the GPUs the sweep sees.
  CHECK(visible_device(0, "4,5,6,7") == "4");
  CHECK(visible_device(3, "4,5,6,7") == "7");
  CHECK(visible_device(1, "GPU-abc,GPU-def") == "GPU-def");
  CHECK(visible_device(1, " 4, 5") == "5");
  CHECK_THROWS_AS(visible_device(4, "4,5,6,7"), UsageError);
  CHECK_THROWS_WITH(visible_device(4, "4,5,6,7"), Catch::Contains("--devices 4") &&
                                                      Catch::Contains("CUDA_VISIBLE_DEVICES=4,5,6,7") &&
                                                      Catch::Contains("0..3"));
  CHECK_THROWS_WITH(visible_device(2, "GPU-abc,GPU-def"), Catch::Contains("CUDA_VISIBLE_DEVICES=GPU-abc,GPU-def"));
  CHECK_THROWS_WITH(visible_device(0, ""), Catch::Contains("0 GPUs visible"));
  CHECK_THROWS_WITH(visible_device(-1, nullptr), Catch::Contains("--devices takes GPU indices"));
}

TEST_CASE("a child killed by a signal or exiting with 128 + a signal number was stopped by it", "[sweep]") {
  // Real wait statuses, from a shell: std::system returns waitpid's status.
  CHECK(stop_signal_of(std::system("exit 0")) == 0);
  CHECK(stop_signal_of(std::system("exit 1")) == 0);
  CHECK(stop_signal_of(std::system("exit 128")) == 0);
  CHECK(stop_signal_of(std::system("exit 255")) == 0);  // beyond the signal numbers
  CHECK(stop_signal_of(std::system("exit 129")) == SIGHUP);
  CHECK(stop_signal_of(std::system("exit 130")) == SIGINT);  // dit train after a second Ctrl-C
  CHECK(stop_signal_of(std::system("exit 143")) == SIGTERM);
  CHECK(stop_signal_of(std::system("exit 159")) == 31);
  CHECK(stop_signal_of(std::system("kill -TERM $$")) == SIGTERM);
  CHECK(stop_signal_of(std::system("kill -KILL $$")) == SIGKILL);
  CHECK(stop_signal_of(-1) == 0);  // no child at all
}
