// The latent pipeline end to end on Fashion-MNIST: an autoencoder from dit train-vae, a DiT
// trained on its latents, samples decoded back to images.
#include <catch2/catch.hpp>

#include <ATen/ATen.h>

#include <filesystem>

#include "models/vae/autoencoder_stage.h"
#include "src/common/error.h"
#include "src/config/config_loader.h"
#include "src/io/safetensors.h"
#include "tests/test_support.h"
#include "trainers/checkpoint.h"
#include "trainers/trainer.h"
#include "trainers/vae_trainer.h"

using namespace ditlab;
using ditlab::testing::TempDir;

namespace {
std::string tiny_autoencoder(const TempDir& dir) {
  auto config = load_experiment_config(
      ditlab::testing::source_dir() + "/configs/vae/fashion_mnist_f4.yaml",
      {"data.path=" + ditlab::testing::fashion_mnist_dir(), "data.limit=128", "autoencoder.train.steps=10",
       "autoencoder.train.eval_images=16", "autoencoder.block_out_channels=[8,16,16]",
       "autoencoder.norm_num_groups=4", "train.device=cpu", "run.dir=" + dir.path() + "/vae"});
  return train_vae(config, "test").weights_path;
}

ExperimentConfig latent_dit(const std::string& weights, const std::string& run_dir,
                            std::vector<std::string> overrides) {
  // The test's own overrides come last, so they win.
  overrides.insert(overrides.begin(), {"autoencoder.type=kl", "autoencoder.weights=" + weights,
                                     "sample.clip_denoised=false", "data.image_size=32", "model.patch_size=2",
                                     "sample.num_per_class=1", "sample.steps=3", "run.dir=" + run_dir});
  return load_experiment_config(ditlab::testing::source_dir() + "/configs/debug/dit.yaml", overrides);
}
}  // namespace

TEST_CASE("a DiT trains on autoencoder latents and its samples are decoded to images", "[vae][latents]") {
  TempDir dir("latents");
  const std::string weights = tiny_autoencoder(dir);
  const auto summary = train(latent_dit(weights, dir / "dit", {"train.steps=4"}));
  CHECK(summary.steps == 4);
  // The backbone sees 4 x 8 x 8 latents of the 1 x 32 x 32 images.
  auto model = read_safetensors(dir / "dit/model.safetensors").tensors;
  CHECK(model.at("x_embedder.proj.weight").size(1) == 4);
  CHECK(model.at("pos_embed").size(1) == (8 / 2) * (8 / 2));
  CHECK(std::filesystem::exists(dir / "dit/samples.png"));

  // Exact resume: the posterior samples come from the per-sample generators too.
  train(latent_dit(weights, dir / "split", {"train.steps=2"}));
  TrainOptions resume;
  resume.resume = "auto";
  train(latent_dit(weights, dir / "split", {"train.steps=4"}), resume);
  auto split = read_safetensors(dir / "split/model.safetensors").tensors;
  for (const auto& [name, t] : model) {
    INFO(name);
    CHECK(at::equal(t, split.at(name)));
  }
}

TEST_CASE("latent settings that cannot work are refused by name", "[vae][latents]") {
  TempDir dir("latents-bad");
  auto config = latent_dit("", dir / "a", {"train.steps=1"});
  CHECK_THROWS_WITH(train(config), Catch::Contains("autoencoder.weights"));
  const std::string weights = tiny_autoencoder(dir);
  config = latent_dit(weights, dir / "b", {"train.steps=1", "sample.clip_denoised=true"});
  CHECK_THROWS_WITH(train(config), Catch::Contains("sample.clip_denoised"));
  config = latent_dit(weights, dir / "c", {"train.steps=1", "data.image_size=34"});
  CHECK_THROWS_WITH(train(config), Catch::Contains("downsampling 4"));
  config = latent_dit(weights, dir / "d", {"train.steps=1", "model.in_channels=1"});
  CHECK_THROWS_WITH(train(config), Catch::Contains("model.in_channels is 1") && Catch::Contains("gives 4"));
  // Scaling: latents are scaling_factor times the posterior mean (sample_posterior off).
  AutoencoderConfig ac;
  ac.type = "kl";
  ac.weights = weights;
  ac.sample_posterior = false;
  ac.scaling_factor = 2.0;
  auto stage = AutoencoderStage::create(ac, c10::Device(c10::kCPU));
  auto images = at::rand({2, 1, 32, 32}) * 2 - 1;
  auto latents = stage->encode(images, {});
  ac.scaling_factor = 1.0;
  auto unscaled = AutoencoderStage::create(ac, c10::Device(c10::kCPU))->encode(images, {});
  CHECK(at::allclose(latents, 2.0 * unscaled));
  CHECK(at::allclose(stage->decode(latents), AutoencoderStage::create(ac, c10::Device(c10::kCPU))->decode(unscaled),
                     1e-5, 1e-5));
}
