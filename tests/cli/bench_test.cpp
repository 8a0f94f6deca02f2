// `dit bench` and scripts/race.sh on the CPU: short runs, no timing assertions.
#include <catch2/catch.hpp>

#include <fstream>
#include <sstream>

#include "tests/test_support.h"

using ditlab::testing::TempDir;
using ditlab::testing::dit_binary;
using ditlab::testing::run_command;

namespace {
std::string read_all(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

// The number after "key": in a one-line JSON record.
double json_number(const std::string& json, const std::string& key) {
  const std::string needle = "\"" + key + "\": ";
  auto at = json.find(needle);
  if (at == std::string::npos) throw std::runtime_error("no " + key + " in " + json);
  return std::stod(json.substr(at + needle.size()));
}
}  // namespace

TEST_CASE("dit bench times training steps and sampling and prints one JSON line", "[bench]") {
  TempDir dir("bench");
  const std::string common = " --model DiT-S/8 --input-size 16 --batch 2 --steps 2 --warmup 1 --threads 1";
  // stdout alone (the log goes to stderr): run_command sends both to its file otherwise.
  REQUIRE(run_command("(" + dit_binary() + " bench" + common + " 2>/dev/null)", dir / "train.json") == 0);
  const std::string train = read_all(dir / "train.json");
  CAPTURE(train);
  REQUIRE(train.rfind("{", 0) == 0);
  CHECK(std::count(train.begin(), train.end(), '\n') == 1);
  for (const char* key : {"images_per_s", "step_ms_median", "step_ms_min", "step_ms_max", "tflops",
                          "peak_tflops", "mfu", "peak_memory_mb", "gmacs_per_image"}) {
    CHECK(json_number(train, key) > 0);
  }
  // The reserved peak is the CUDA allocator's; a CPU has none.
  CHECK_THAT(train, Catch::Contains("\"peak_memory_kind\": \"cpu_max_rss\", \"peak_reserved_mb\": null"));
  CHECK(json_number(train, "step_ms_min") <= json_number(train, "step_ms_median"));
  CHECK(json_number(train, "step_ms_median") <= json_number(train, "step_ms_max"));
  // images/s and TFLOP/s follow from the median step and 6 x MACs per image.
  const double ms = json_number(train, "step_ms_median");
  CHECK(json_number(train, "images_per_s") == Approx(2 / (ms / 1e3)).epsilon(1e-3));
  CHECK(json_number(train, "tflops") ==
        Approx(6 * json_number(train, "gmacs_per_image") * 1e9 * 2 / (ms / 1e3) / 1e12).epsilon(1e-2));

  REQUIRE(run_command("(" + dit_binary() + " bench --sample" + common + " sample.steps=3 2>/dev/null)",
                      dir / "sample.json") == 0);
  const std::string sample = read_all(dir / "sample.json");
  CAPTURE(sample);
  CHECK_THAT(sample, Catch::Contains("\"mode\": \"sample\""));
  CHECK(json_number(sample, "images_per_s") > 0);
  CHECK_THAT(train, Catch::Contains("\"checkpoint_blocks\": false"));

  // Activation checkpointing is a model key; the line says it was on.
  REQUIRE(run_command("(" + dit_binary() + " bench" + common + " model.checkpoint_blocks=true 2>/dev/null)",
                      dir / "checkpointed.json") == 0);
  CHECK_THAT(read_all(dir / "checkpointed.json"), Catch::Contains("\"checkpoint_blocks\": true"));

  CHECK_THAT(read_all(dir / "checkpointed.json"), Catch::Contains("\"cuda_graph\": false"));
  // A CUDA graph on a CPU: a clear error naming the key, exit 1.
  CHECK(run_command(dit_binary() + " bench" + common + " --device cpu train.cuda_graph=true", dir / "graph.log") == 1);
  CHECK_THAT(read_all(dir / "graph.log"), Catch::Contains("train.cuda_graph") && Catch::Contains("cpu"));

  CHECK(run_command(dit_binary() + " bench --model DiT-S/8 --precision fp16", dir / "bad.log") == 2);
  CHECK_THAT(read_all(dir / "bad.log"), Catch::Contains("--precision must be fp32 or bf16"));
}

TEST_CASE("dit bench --count-ops writes the step's operator calls by name", "[bench]") {
  TempDir dir("bench-ops");
  REQUIRE(run_command("(" + dit_binary() + " bench --model DiT-S/8 --input-size 16 --batch 2 --steps 1 "
                          "--warmup 1 --threads 1 --count-ops " + (dir / "ops.json") + " 2>/dev/null)",
                      dir / "train.json") == 0);
  const std::string line = read_all(dir / "train.json");
  const std::string ops = read_all(dir / "ops.json");
  CAPTURE(line, ops);
  // DiT-S: 12 blocks of 5 linear layers (qkv, proj, two MLP layers, adaLN), the timestep MLP's 2
  // and the final layer's 2, each called once in the forward (backward calls mm, not linear).
  CHECK(json_number(ops, "aten::linear") == 5 * 12 + 4);
  CHECK(json_number(ops, "aten::_foreach_add_") >= 1);  // the optimizer's and EMA's foreach kernels
  CHECK(json_number(line, "aten_ops_per_step") > 1000);
  // Without the flag nothing is counted.
  REQUIRE(run_command("(" + dit_binary() + " bench --model DiT-S/8 --input-size 16 --batch 2 --steps 1 "
                          "--warmup 0 --threads 1 2>/dev/null)",
                      dir / "plain.json") == 0);
  CHECK_THAT(read_all(dir / "plain.json"), Catch::Contains("\"aten_ops_per_step\": null"));
}

TEST_CASE("dit bench --config times the model at the shape its data gives", "[bench]") {
  TempDir dir("bench-config");
  const std::string config = ditlab::testing::source_dir() + "/configs/debug/dit.yaml";
  // Fashion-MNIST: 32x32 pixels, 1 channel, 10 classes (the config leaves all three to the data).
  REQUIRE(run_command("(" + dit_binary() + " bench --config " + config +
                          " --batch 2 --steps 1 --warmup 0 --threads 1 2>/dev/null)",
                      dir / "train.json") == 0);
  const std::string train = read_all(dir / "train.json");
  CAPTURE(train);
  CHECK(json_number(train, "input_size") == 32);
  CHECK(json_number(train, "in_channels") == 1);
  // A flag wins over the data; the rest still comes from it.
  REQUIRE(run_command("(" + dit_binary() + " bench --config " + config +
                          " --input-size 16 --batch 2 --steps 1 --warmup 0 --threads 1 2>/dev/null)",
                      dir / "small.json") == 0);
  CHECK(json_number(read_all(dir / "small.json"), "input_size") == 16);
  CHECK(json_number(read_all(dir / "small.json"), "in_channels") == 1);
  // Without the data the shape must be given.
  CHECK(run_command(dit_binary() + " bench --config " + config + " data.path=" + (dir / "nowhere") +
                        " --batch 2 --steps 1 --warmup 0",
                    dir / "bad.log") == 2);
  CHECK_THAT(read_all(dir / "bad.log"), Catch::Contains("nowhere") && Catch::Contains("--input-size"));
}

TEST_CASE("scripts/race.sh runs ditlab and the PyTorch reference and prints the ratio", "[bench]") {
  TempDir dir("race");
  const std::string command = "DIT=" + dit_binary() + " " + ditlab::testing::source_dir() +
                              "/scripts/race.sh --model DiT-S/8 --input-size 16 --batch 2 "
                              "--threads 1 --rounds 1 --steps 1 --warmup 0 --count-ops --out " +
                              (dir / "runs.jsonl");
  REQUIRE(run_command(command, dir / "race.log") == 0);
  const std::string out = read_all(dir / "race.log");
  CAPTURE(out);
  CHECK_THAT(out, Catch::Contains("time / ditlab") && Catch::Contains("pytorch-eager") &&
                      Catch::Contains("ditlab"));
  const std::string runs = read_all(dir / "runs.jsonl");
  CHECK(std::count(runs.begin(), runs.end(), '\n') == 2);  // one record per contestant
  // --count-ops: both contestants' operator calls, compared by name.
  CHECK_THAT(out, Catch::Contains("operator") && Catch::Contains("total"));
  CHECK(json_number(read_all(dir / "runs.ops-ditlab.json"), "aten::linear") ==
        json_number(read_all(dir / "runs.ops-pytorch.json"), "aten::linear"));
}
