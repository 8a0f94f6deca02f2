#include <catch2/catch.hpp>

#include <ATen/ATen.h>

#include <filesystem>

#include "models/vae/vae_weights.h"
#include "src/common/error.h"
#include "src/config/config_loader.h"
#include "tests/test_support.h"
#include "trainers/vae_trainer.h"

using namespace ditlab;
using ditlab::testing::TempDir;

TEST_CASE("PSNR is measured on [0, 1] images", "[vae]") {
  // A uniform error of 0.2 in [-1, 1] is 0.1 in [0, 1]: MSE 0.01, 20 dB.
  auto a = at::zeros({2, 1, 4, 4});
  CHECK(psnr_db(a, a + 0.2) == Approx(20.0));
  CHECK(psnr_db(a, a + 0.02) == Approx(40.0));
}

TEST_CASE("dit train-vae trains, reports held-out PSNR and writes loadable weights", "[vae]") {
  TempDir dir("train-vae");
  auto config = load_experiment_config(
      ditlab::testing::source_dir() + "/configs/vae/fashion_mnist_f4.yaml",
      {"data.path=" + ditlab::testing::fashion_mnist_dir(), "data.limit=256", "autoencoder.train.steps=40",
       "autoencoder.train.eval_images=32", "autoencoder.block_out_channels=[16,32,32]",
       "autoencoder.norm_num_groups=8", "train.device=cpu", "train.log_every=10", "run.dir=" + dir.path() + "/run"});
  const auto summary = train_vae(config, "test");
  CHECK(summary.last_loss < summary.first_loss);  // the reconstruction error falls
  CHECK(summary.psnr_db > 10.0);
  CHECK(summary.scaling_factor == Approx(1.0 / summary.latent_std));
  AutoencoderSpec spec;
  auto vae = load_autoencoder(summary.weights_path, "", &spec);
  CHECK(spec.scaling_factor == Approx(summary.scaling_factor).epsilon(1e-5));
  CHECK(spec.options.block_out_channels == std::vector<int64_t>{16, 32, 32});
  CHECK(std::filesystem::exists(dir / "run/reconstructions.png"));
  CHECK(std::filesystem::exists(dir / "run/config.yaml"));
  // A second run into the same directory would overwrite the autoencoder: refused.
  CHECK_THROWS_WITH(train_vae(config, "test"), Catch::Contains("already holds an autoencoder"));
  // The image size must be a multiple of the downsampling.
  auto odd = config;
  odd.data.image_size = 30;
  odd.run.dir = dir / "odd";
  CHECK_THROWS_WITH(train_vae(odd, "test"), Catch::Contains("data.image_size 30") && Catch::Contains("downsampling 4"));
}
