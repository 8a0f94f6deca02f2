#include <catch2/catch.hpp>

#include <ATen/ATen.h>

#include <filesystem>
#include <fstream>

#include "models/registry.h"
#include "src/common/error.h"
#include "src/config/config_loader.h"
#include "src/io/atomic_file.h"
#include "src/io/safetensors.h"
#include "tests/test_support.h"
#include "trainers/sample_draws.h"
#include "trainers/trainer.h"

using namespace ditlab;
using ditlab::testing::TempDir;

namespace {
ExperimentConfig debug_config(const std::string& run_dir, std::vector<std::string> overrides = {}) {
  overrides.push_back("run.dir=" + run_dir);
  overrides.push_back("sample.at_end=false");
  return load_experiment_config(ditlab::testing::source_dir() + "/configs/debug/dit.yaml", overrides);
}

std::vector<std::string> lines(const std::string& path) {
  std::ifstream in(path);
  std::vector<std::string> out;
  for (std::string line; std::getline(in, line);) out.push_back(line);
  return out;
}

// The number after "key": in one metrics.jsonl record.
double value_of(const std::string& record, const std::string& key) {
  auto at = record.find("\"" + key + "\": ");
  REQUIRE(at != std::string::npos);
  return std::stod(record.substr(at + key.size() + 4));
}
}  // namespace

TEST_CASE("a short run lowers the loss and leaves a complete run directory", "[trainer]") {
  TempDir dir("train");
  auto run = dir / "run";
  auto summary = train(debug_config(run, {"train.steps=40", "train.log_every=10"}));
  INFO("first " << summary.first_loss << " last " << summary.last_loss);
  CHECK(summary.last_loss < 0.8 * summary.first_loss);
  for (const char* file : {"config.yaml", "run_info.yaml", "train.log", "metrics.jsonl",
                           "model.safetensors", "ema.safetensors"}) {
    INFO(file);
    CHECK(std::filesystem::exists(run + "/" + file));
  }
  auto metrics = lines(run + "/metrics.jsonl");
  REQUIRE(metrics.size() == 4);
  CHECK_THAT(metrics[0], Catch::StartsWith("{\"step\": 10, "));
  CHECK_THAT(metrics[3], Catch::Contains("\"loss\": "));
  CHECK_THAT(metrics[3], Catch::Contains("\"tflops\": "));
  // Without train.peak_tflops a CPU's peak is its measured matmul rate, so MFU is logged too.
  CHECK_THAT(metrics[3], Catch::Contains("\"mfu\": "));
  auto info = read_file(run + "/run_info.yaml");
  CHECK_THAT(info, Catch::Contains("libtorch_version"));
  CHECK_THAT(info, Catch::Contains("ditlab_git_revision"));
  // The resolved config, with the sizes taken from the data, reloads to the same config.
  ExperimentConfig saved;
  apply_yaml_text(saved, read_file(run + "/config.yaml"), "config.yaml");
  CHECK(saved.model.in_channels == 1);
  CHECK(saved.model.num_classes == 10);
  CHECK(saved.train.steps == 40);
  // The weights carry that config and load into the model it describes.
  auto weights = read_safetensors(run + "/ema.safetensors");
  CHECK(weights.metadata.at("config") == read_file(run + "/config.yaml"));
  CHECK(weights.tensors.count("blocks.1.adaLN_modulation.1.weight") == 1);
  // A second run into the same directory is refused instead of overwriting it.
  CHECK_THROWS_WITH(train(debug_config(run)), Catch::Contains("already holds a run"));
  // A global batch larger than the data is refused before a run directory exists.
  CHECK_THROWS_WITH(train(debug_config(dir / "too-big", {"data.limit=16", "train.global_batch_size=32"})),
                    Catch::Contains("train.global_batch_size 32") && Catch::Contains("dataset of 16"));
  CHECK_FALSE(std::filesystem::exists(dir / "too-big"));
}

TEST_CASE("Skip-DiT trains on the shared trainer and starts from a DiT's weights", "[trainer]") {
  TempDir dir("train");
  auto dit_run = dir / "dit", skip_run = dir / "skip";
  train(debug_config(dit_run, {"train.steps=10", "model.depth=4"}));
  auto config = load_experiment_config(
      ditlab::testing::source_dir() + "/configs/debug/skip-dit.yaml",
      {"run.dir=" + skip_run, "train.steps=40", "train.log_every=10",
       "train.init_from=" + dit_run + "/model.safetensors", "sample.num_per_class=1"});
  auto summary = train(config);
  INFO("first " << summary.first_loss << " last " << summary.last_loss);
  CHECK(summary.last_loss < 0.8 * summary.first_loss);
  CHECK_THAT(read_file(skip_run + "/train.log"),
             Catch::Contains("tensors loaded; 8 model tensors kept their initialisation"));
  auto weights = read_safetensors(skip_run + "/model.safetensors").tensors;
  CHECK(weights.count("skip_linears.1.linear.weight") == 1);
  // Sampling with Skip-Cache ran at the end (the grid exists).
#ifdef DITLAB_WITH_OPENCV
  CHECK(std::filesystem::exists(skip_run + "/samples.png"));
#else
  CHECK(std::filesystem::exists(skip_run + "/samples.safetensors"));
#endif
  // Weights that do not fit are refused with the key named.
  auto bad = debug_config(dir / "bad", {"train.init_from=" + dit_run + "/model.safetensors",
                                        "model.hidden_size=32"});
  CHECK_THROWS_WITH(train(bad), Catch::Contains("train.init_from") && Catch::Contains("has shape"));
  // Weights trained in SP, in a µP model of the same shapes but another base width, would
  // compute another function (the multipliers are in the config): refused before any step.
  auto mup = debug_config(dir / "mup", {"train.init_from=" + dit_run + "/model.safetensors", "model.depth=4",
                                        "model.mup.enabled=true", "model.mup.base_width=32"});
  CHECK_THROWS_WITH(train(mup), Catch::Contains("train.init_from") &&
                                    Catch::Contains("the standard parametrization") &&
                                    Catch::Contains("base_width 32"));
  CHECK_FALSE(std::filesystem::exists(dir / "mup/checkpoints"));
  // At its base width µP is SP: accepted.
  CHECK_NOTHROW(train(debug_config(dir / "mup-base", {"train.init_from=" + dit_run + "/model.safetensors",
                                                      "model.depth=4", "train.steps=2", "model.mup.enabled=true",
                                                      "model.mup.base_width=64"})));
}

TEST_CASE("training is deterministic and independent of how the batch is split", "[trainer]") {
  TempDir dir("train");
  train(debug_config(dir / "a", {"train.steps=6"}));
  train(debug_config(dir / "b", {"train.steps=6"}));
  train(debug_config(dir / "c", {"train.steps=6", "train.grad_accum_steps=4"}));
  train(debug_config(dir / "d", {"train.steps=6", "train.seed=1"}));
  auto a = read_safetensors(dir / "a/model.safetensors").tensors;
  auto b = read_safetensors(dir / "b/model.safetensors").tensors;
  auto c = read_safetensors(dir / "c/model.safetensors").tensors;
  auto d = read_safetensors(dir / "d/model.safetensors").tensors;
  double max_split_diff = 0;
  bool seed_matters = false;
  for (const auto& [name, t] : a) {
    INFO(name);
    CHECK(at::equal(t, b.at(name)));  // same seed: bit-identical
    max_split_diff = std::max(max_split_diff, (t - c.at(name)).abs().max().item<double>());
    seed_matters = seed_matters || !at::equal(t, d.at(name));
  }
  // Micro-batches change only the floating-point summation order.
  CHECK(max_split_diff < 1e-4);
  CHECK(seed_matters);
  CHECK(lines(dir / "a/metrics.jsonl").back().substr(0, 40) ==
        lines(dir / "b/metrics.jsonl").back().substr(0, 40));
}

TEST_CASE("checkpoint.every writes checkpoints of intermediate steps and of the end", "[trainer]") {
  TempDir dir("train");
  train(debug_config(dir / "run", {"train.steps=6", "checkpoint.every=2"}));
  namespace fs = std::filesystem;
  for (const char* step : {"step-00000002", "step-00000004", "step-00000006"}) {
    INFO(step);
    auto weights = read_safetensors(dir / ("run/checkpoints/" + std::string(step) + "/ema.safetensors"));
    CHECK(weights.metadata.at("step") == std::to_string(std::stoll(std::string(step).substr(5))));
  }
  auto at2 = read_safetensors(dir / "run/checkpoints/step-00000002/model.safetensors").tensors;
  auto at6 = read_safetensors(dir / "run/checkpoints/step-00000006/model.safetensors").tensors;
  auto final_weights = read_safetensors(dir / "run/model.safetensors").tensors;
  CHECK_FALSE(at::equal(at2.at("final_layer.linear.weight"), at6.at("final_layer.linear.weight")));
  CHECK(at::equal(at6.at("final_layer.linear.weight"), final_weights.at("final_layer.linear.weight")));
}

TEST_CASE("per-sample draws depend only on (seed, step, global index)", "[trainer]") {
  auto whole = draw_for_samples(5, 3, 0, 8, 1000, {1, 4, 4}, 0.5, true);
  auto first = draw_for_samples(5, 3, 0, 4, 1000, {1, 4, 4}, 0.5, true);
  auto second = draw_for_samples(5, 3, 4, 4, 1000, {1, 4, 4}, 0.5, true);
  CHECK(at::equal(whole.t, at::cat({first.t, second.t})));
  CHECK(at::equal(whole.noise, at::cat({first.noise, second.noise})));
  CHECK(at::equal(whole.drop, at::cat({first.drop, second.drop})));
  CHECK(at::equal(whole.flip, at::cat({first.flip, second.flip})));
  auto next_step = draw_for_samples(5, 4, 0, 8, 1000, {1, 4, 4}, 0.5, true);
  CHECK_FALSE(at::equal(whole.noise, next_step.noise));
  // Rates: about half dropped and flipped over many samples; never with probability 0.
  auto many = draw_for_samples(0, 0, 0, 2000, 1000, {1, 1, 1}, 0.1, false);
  CHECK(many.drop.to(at::kFloat).mean().item<double>() == Approx(0.1).margin(0.03));
  CHECK_FALSE(many.flip.any().item<bool>());
  CHECK(many.t.min().item<int64_t>() >= 0);
  CHECK(many.t.max().item<int64_t>() <= 999);
  CHECK(many.noise.std().item<double>() == Approx(1.0).margin(0.1));
}

TEST_CASE("U-DiT trains on the shared trainer and samples with guidance", "[trainer]") {
  TempDir dir("train");
  auto run = dir / "udit";
  auto config = load_experiment_config(
      ditlab::testing::source_dir() + "/configs/debug/u-dit.yaml",
      {"run.dir=" + run, "train.steps=30", "train.log_every=10", "sample.num_per_class=1",
       "sample.steps=4"});
  auto summary = train(config);
  INFO("first " << summary.first_loss << " last " << summary.last_loss);
  CHECK(summary.last_loss < 0.8 * summary.first_loss);
  auto weights = read_safetensors(run + "/ema.safetensors").tensors;
  CHECK(weights.count("latent.0.attn2.logit_scale") == 1);
#ifdef DITLAB_WITH_OPENCV
  CHECK(std::filesystem::exists(run + "/samples.png"));
#else
  CHECK(std::filesystem::exists(run + "/samples.safetensors"));
#endif
}

TEST_CASE("DiM trains on the shared trainer and samples with guidance", "[trainer]") {
  TempDir dir("train");
  auto run = dir / "dim";
  auto config = load_experiment_config(
      ditlab::testing::source_dir() + "/configs/debug/dim.yaml",
      {"run.dir=" + run, "train.steps=30", "train.log_every=10", "sample.num_per_class=1",
       "sample.steps=4", "model.checkpoint_blocks=true"});
  auto summary = train(config);
  INFO("first " << summary.first_loss << " last " << summary.last_loss);
  CHECK(summary.last_loss < 0.8 * summary.first_loss);
  auto weights = read_safetensors(run + "/ema.safetensors").tensors;
  CHECK(weights.count("blocks.4.mixer.A_log") == 1);
  CHECK(weights.count("skip_linears.1.linear.weight") == 1);
}

TEST_CASE("DiT-MoE trains and logs its load-balancing loss and expert loads", "[trainer]") {
  TempDir dir("train");
  auto run = dir / "moe";
  auto config = load_experiment_config(
      ditlab::testing::source_dir() + "/configs/debug/dit-moe.yaml",
      {"run.dir=" + run, "train.steps=40", "train.log_every=10", "sample.at_end=false"});
  auto summary = train(config);
  INFO("first " << summary.first_loss << " last " << summary.last_loss);
  CHECK(summary.last_loss < 0.8 * summary.first_loss);
  auto metrics = lines(run + "/metrics.jsonl");
  REQUIRE(metrics.size() == 4);
  // The loss sums alpha * sum_i f_i P_i over the 2 layers; each term is alpha = 0.005 when
  // routing is uniform, and at most alpha * E / k (everything on k experts).
  const double aux = value_of(metrics[0], "aux_loss");
  CHECK(aux > 2 * 0.005 * 0.5);
  CHECK(aux <= 2 * 0.005 * 4 / 2);
  // Per layer and expert: tokens per step; 16 images x 64 tokens x 2 choices per layer.
  double layer1 = 0;
  for (int e = 0; e < 4; ++e) layer1 += value_of(metrics[0], "moe_tokens_per_expert.1." + std::to_string(e));
  CHECK(layer1 == Approx(16 * 64 * 2));
  CHECK_THAT(read_file(run + "/train.log"), Catch::Contains("aux_loss 0.0"));
}

TEST_CASE("the logged TFLOP/s and MFU follow 6 x MACs per image at the logged images/s", "[trainer]") {
  TempDir dir("train");
  auto run = dir / "mfu";
  train(debug_config(run, {"train.steps=4", "train.log_every=2", "train.peak_tflops=0.5"}));
  auto metrics = lines(run + "/metrics.jsonl");
  REQUIRE(metrics.size() == 2);
  ExperimentConfig saved;
  apply_yaml_text(saved, read_file(run + "/config.yaml"), "config.yaml");
  const double macs = static_cast<double>(build_backbone(saved.model)->forward_macs());
  const double images_per_sec = value_of(metrics[1], "images_per_sec");
  const double tflops = value_of(metrics[1], "tflops");
  CHECK(tflops == Approx(6 * macs * images_per_sec / 1e12).epsilon(1e-4));
  CHECK(value_of(metrics[1], "mfu") == Approx(tflops / 0.5).epsilon(1e-4));
}

TEST_CASE("sample.every writes grids during training without changing the training", "[trainer]") {
  TempDir dir("train");
  const std::vector<std::string> common = {"train.steps=5", "sample.steps=2", "sample.num_per_class=1"};
  auto with = common;
  with.push_back("sample.every=2");
  train(debug_config(dir / "plain", common));
  train(debug_config(dir / "sampled", with));
#ifdef DITLAB_WITH_OPENCV
  const std::string ext = ".png";
#else
  const std::string ext = ".safetensors";
#endif
  CHECK(std::filesystem::exists(dir / ("sampled/samples/step-00000002" + ext)));
  CHECK(std::filesystem::exists(dir / ("sampled/samples/step-00000004" + ext)));
  CHECK_FALSE(std::filesystem::exists(dir / ("sampled/samples/step-00000005" + ext)));  // the last is at_end's
  CHECK_FALSE(std::filesystem::exists(dir / "plain/samples"));
  // Sampling draws from generators of its own: the weights are those of the run without it.
  auto plain = read_safetensors(dir / "plain/ema.safetensors").tensors;
  auto sampled = read_safetensors(dir / "sampled/ema.safetensors").tensors;
  for (const auto& [name, t] : plain) CHECK(at::equal(t, sampled.at(name)));
}
