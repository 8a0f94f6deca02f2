// The `dit` executable end to end: exit codes, messages and the files it writes.
#include <catch2/catch.hpp>

#include <ATen/ATen.h>

#include <filesystem>

#include "src/io/atomic_file.h"
#include "src/io/safetensors.h"
#include "tests/test_support.h"

using namespace ditlab;
using ditlab::testing::TempDir;
using ditlab::testing::dit_binary;
using ditlab::testing::run_command;

namespace {
std::string debug_config() { return ditlab::testing::source_dir() + "/configs/debug/dit.yaml"; }
}  // namespace

TEST_CASE("dit reports usage errors with exit code 2 and config errors with 1", "[cli]") {
  TempDir dir("cli");
  CHECK(run_command(dit_binary(), dir / "log") == 2);
  CHECK_THAT(read_file(dir / "log"), Catch::Contains("usage: dit"));
  CHECK(run_command(dit_binary() + " frobnicate", dir / "log") == 2);
  CHECK(run_command(dit_binary() + " train --bogus", dir / "log") == 2);
  CHECK_THAT(read_file(dir / "log"), Catch::Contains("unknown option '--bogus'"));
  CHECK(run_command(dit_binary() + " train --config " + debug_config() + " train.lrr=1", dir / "log") == 1);
  CHECK_THAT(read_file(dir / "log"), Catch::Contains("train.lrr") && Catch::Contains("train.lr"));
  CHECK(run_command(dit_binary() + " train --config " + debug_config() + " data.path=" + dir.path() +
                        " run.dir=" + (dir / "run"),
                    dir / "log") == 1);
  CHECK_THAT(read_file(dir / "log"), Catch::Contains("train-images-idx3-ubyte.gz"));
  CHECK(run_command(dit_binary() + " sample --weights " + (dir / "none.safetensors") + " --out " +
                        (dir / "x.png"),
                    dir / "log") == 1);
  CHECK_THAT(read_file(dir / "log"), Catch::Contains("none.safetensors"));
  CHECK(run_command(dit_binary() + " forward --model DiT-S/2 train.lr=1", dir / "log") == 2);
  CHECK_THAT(read_file(dir / "log"), Catch::Contains("no config overrides"));
  // Logs and errors go to stderr: stdout holds only the command's output.
  CHECK(run_command("(" + dit_binary() + " config --config " + debug_config() +
                        " train.lrr=1 2>/dev/null)",
                    dir / "log") == 1);
  CHECK(read_file(dir / "log").empty());
  CHECK(run_command("(" + dit_binary() + " config --config " + debug_config() + " 2>/dev/null)",
                    dir / "log") == 0);
  CHECK_THAT(read_file(dir / "log"), Catch::StartsWith("model:\n  name: \"dit\""));
  CHECK(run_command(dit_binary() + " config --docs", dir / "log") == 0);
  CHECK_THAT(read_file(dir / "log"), Catch::Contains("`train.lr`"));
  // Every command's help is asked for, not a usage error, dit mup's (which has subcommands) too.
  for (const char* command : {"train", "sample", "bench", "sweep", "mup", "mup coord-check"}) {
    INFO(command);
    CHECK(run_command(dit_binary() + " " + command + " --help", dir / "log") == 0);
    CHECK_THAT(read_file(dir / "log"), Catch::Contains("dit " + std::string(command).substr(0, 3)));
  }
  CHECK(run_command(dit_binary() + " mup frobnicate", dir / "log") == 2);
}

TEST_CASE("dit train, then dit sample from the run directory or its weights", "[cli]") {
  TempDir dir("cli");
  auto run = dir / "run";
  REQUIRE(run_command(dit_binary() + " train --config " + debug_config() + " train.steps=4 run.dir=" +
                          run,
                      dir / "train.log") == 0);
#ifdef DITLAB_WITH_OPENCV
  CHECK(std::filesystem::exists(run + "/samples.png"));
  REQUIRE(run_command(dit_binary() + " sample --run-dir " + run + " --out " + (dir / "grid.png"),
                      dir / "sample.log") == 0);
  CHECK(std::filesystem::file_size(dir / "grid.png") > 1000);
#endif
  auto sample = [&](const std::string& source, const std::string& out, int seed) {
    return run_command(dit_binary() + " sample " + source + " --num-per-class 3 --steps 4 --seed " +
                           std::to_string(seed) + " --sampler ddpm --out " + out,
                       dir / "sample.log");
  };
  REQUIRE(sample("--run-dir " + run, dir / "a.safetensors", 1) == 0);
  REQUIRE(sample("--weights " + run + "/ema.safetensors", dir / "b.safetensors", 1) == 0);
  REQUIRE(sample("--run-dir " + run, dir / "c.safetensors", 2) == 0);
  auto a = read_safetensors(dir / "a.safetensors").tensors;
  auto b = read_safetensors(dir / "b.safetensors").tensors;
  auto c = read_safetensors(dir / "c.safetensors").tensors;
  CHECK(a.at("samples").sizes() == at::IntArrayRef({30, 1, 32, 32}));
  CHECK(a.at("labels").sizes() == at::IntArrayRef({30}));
  CHECK(a.at("labels")[29].item<int64_t>() == 9);
  CHECK(at::equal(a.at("samples"), b.at("samples")));  // same weights, same seed
  CHECK_FALSE(at::equal(a.at("samples"), c.at("samples")));
  CHECK(a.at("samples").abs().max().item<float>() <= 1.0f);
  // dit export: a checkpoint's weights alone, verified first.
  REQUIRE(run_command(dit_binary() + " export --checkpoint " + run + "/checkpoints/step-00000004 --ema --out " +
                          (dir / "exported.safetensors"),
                      dir / "export.log") == 0);
  auto exported = read_safetensors(dir / "exported.safetensors");
  auto ema = read_safetensors(run + "/ema.safetensors");
  CHECK(exported.metadata.at("step") == "4");
  for (const auto& [name, t] : ema.tensors) CHECK(at::equal(t, exported.tensors.at(name)));
  CHECK(run_command(dit_binary() + " export --checkpoint " + run + "/checkpoints/step-00000004 --out x.pt",
                    dir / "export.log") == 2);
  CHECK(run_command(dit_binary() + " export --checkpoint " + (dir / "nowhere") + " --out " + (dir / "y.safetensors"),
                    dir / "export.log") == 1);
  CHECK_THAT(read_file(dir / "export.log"), Catch::Contains("not found"));
  // Weights that do not fit the model named on the command line: the key is named.
  CHECK(run_command(dit_binary() + " forward --model DiT-S/2 --weights " + run +
                        "/ema.safetensors --inputs " + (dir / "a.safetensors") + " --output " +
                        (dir / "o.safetensors"),
                    dir / "forward.log") == 1);
  CHECK_THAT(read_file(dir / "forward.log"), Catch::Contains("weights do not fit the model") &&
                                                 Catch::Contains("the model expects"));
}

TEST_CASE("dit flops reports the DiT paper's Gflops and parameters without building", "[cli]") {
  TempDir dir("flops");
  const std::pair<const char*, std::pair<double, double>> table[] = {
      {"DiT-S/2", {6.06, 32.96}}, {"DiT-B/2", {23.01, 130.51}}, {"DiT-L/2", {80.71, 458.10}},
      {"DiT-XL/2", {118.64, 675.13}}};  // parameters: the official layer shapes (XL/2 exact in the paper)
  for (const auto& [name, expected] : table) {
    const std::string log = dir / "flops.log";
    REQUIRE(ditlab::testing::run_command(ditlab::testing::dit_binary() + " flops --model " + name, log) == 0);
    const std::string out = read_file(log);
    CAPTURE(name, out);
    auto number_after = [&](const std::string& label) {
      auto at = out.find(label);
      REQUIRE(at != std::string::npos);
      return std::stod(out.substr(at + label.size()));
    };
    // Two decimals as printed; the paper's counter adds a little for norms (< 0.05%).
    CHECK(std::abs(number_after("GMACs / image") - expected.first) < 0.005 + 5e-4 * expected.first);
    CHECK(std::abs(number_after("parameters") / 1e6 - expected.second) < 0.005);
  }
  // A config's model at its data's shape (Fashion-MNIST: 32x32x1, 10 classes), unless a flag says
  // otherwise; and a wrong name.
  const std::string config = ditlab::testing::source_dir() + "/configs/fashion_mnist/dit_small.yaml";
  REQUIRE(ditlab::testing::run_command(ditlab::testing::dit_binary() + " flops --config " + config, dir / "fm.log") == 0);
  CHECK_THAT(read_file(dir / "fm.log"), Catch::Contains("(input 32x32x1, 10 classes)"));
  REQUIRE(ditlab::testing::run_command(ditlab::testing::dit_binary() + " flops --config " + config + " --in-channels 4",
                                       dir / "fm4.log") == 0);
  CHECK_THAT(read_file(dir / "fm4.log"), Catch::Contains("(input 32x32x4, 10 classes)"));
  const std::string log = dir / "bad.log";
  CHECK(ditlab::testing::run_command(ditlab::testing::dit_binary() + " flops --model DiT-Q/2", log) != 0);
  CHECK_THAT(read_file(log), Catch::Contains("DiT-Q/2") && Catch::Contains("valid names"));
}

TEST_CASE("dit refuses flag values it would otherwise misread", "[cli]") {
  TempDir dir("cli-values");
  const std::string log = dir / "log";
  // A switch given a value: --docs=false must not mean --docs.
  CHECK(run_command(dit_binary() + " config --docs=false", log) == 2);
  CHECK_THAT(read_file(log), Catch::Contains("--docs takes no value"));
  // Non-finite numbers (stod reads "nan" and "inf").
  CHECK(run_command(dit_binary() + " bench --model DiT-S/8 --input-size 16 --batch 2 --steps 1 --warmup 0 "
                                   "--threads 1 --device cpu --peak-tflops nan",
                    log) == 2);
  CHECK_THAT(read_file(log), Catch::Contains("--peak-tflops") && Catch::Contains("finite"));
  // An empty --config is not "no config"; a directory is not a config file.
  CHECK(run_command(dit_binary() + " config --config=", log) == 2);
  CHECK_THAT(read_file(log), Catch::Contains("--config"));
  CHECK(run_command(dit_binary() + " flops --config=", log) == 2);
  CHECK_THAT(read_file(log), Catch::Contains("--config"));
  CHECK(run_command(dit_binary() + " config --config " + dir.path(), log) == 1);
  CHECK_THAT(read_file(log), Catch::Contains(dir.path()) && Catch::Contains("not a regular file"));
}

TEST_CASE("dit flops prices only the models DiT would build", "[cli]") {
  TempDir dir("flops-bad");
  const std::string log = dir / "log";
  CHECK(run_command(dit_binary() + " flops --model DiT-S/4 --input-size 30", log) == 1);
  CHECK_THAT(read_file(log), Catch::Contains("model.input_size 30") && Catch::Contains("model.patch_size 4"));
  CHECK(run_command(dit_binary() + " flops --model DiT-S/4 --input-size 2", log) == 1);
  CHECK_THAT(read_file(log), Catch::Contains("model.input_size 2"));
  CHECK(run_command(dit_binary() + " flops --model DiT-S/4 --input-size 32", log) == 0);
}

TEST_CASE("dit bench takes train.precision from the config unless --precision is given", "[cli]") {
  TempDir dir("bench-precision");
  // On the CPU the device's default is fp32: bf16 can only come from train.precision.
  const std::string bench = dit_binary() + " bench --model DiT-S/8 --input-size 16 --batch 2 --steps 1 "
                                           "--warmup 0 --threads 1 --device cpu train.precision=bf16";
  REQUIRE(run_command(bench, dir / "config.log") == 0);
  CHECK_THAT(read_file(dir / "config.log"), Catch::Contains("\"precision\": \"bf16\""));
  REQUIRE(run_command(bench + " --precision fp32", dir / "flag.log") == 0);
  CHECK_THAT(read_file(dir / "flag.log"), Catch::Contains("\"precision\": \"fp32\""));
}
