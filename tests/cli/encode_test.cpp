// `dit encode` from the command line: one rank and two ranks give the same cache, `dit train`
// trains from it and decodes its samples, and `dit bench --data` times the loader.
#include <catch2/catch.hpp>

#include <ATen/ATen.h>
#include <torch/torch.h>

#include <filesystem>

#include "data/latent_cache.h"
#include "models/vae/vae_weights.h"
#include "src/io/atomic_file.h"
#include "tests/test_support.h"

using namespace ditlab;
using ditlab::testing::TempDir;
using ditlab::testing::dit_binary;
using ditlab::testing::run_command;

namespace {
std::string encode_command(const std::string& weights, const std::string& out) {
  return dit_binary() + " encode --config " + ditlab::testing::source_dir() + "/configs/debug/dit.yaml --out " +
         out + " --flip --store sample --shard-size 16 --batch 8 data.limit=40 train.threads=1 "
         "autoencoder.type=kl autoencoder.weights=" + weights;
}
}  // namespace

TEST_CASE("dit encode on 2 ranks writes the cache of 1 rank, and dit train learns from it", "[encode][distributed]") {
  TempDir dir("encode-cli");
  torch::manual_seed(0);
  AutoencoderSpec spec;
  spec.options.in_channels = spec.options.out_channels = 1;
  spec.options.block_out_channels = {8, 16, 16};
  spec.options.layers_per_block = 1;
  spec.options.norm_num_groups = 4;
  const std::string weights = dir / "vae.safetensors";
  save_autoencoder(AutoencoderKL(spec.options), spec, weights);

  REQUIRE(run_command(encode_command(weights, dir / "one"), dir / "one.log") == 0);
  REQUIRE(run_command(ditlab::testing::source_dir() + "/scripts/launch.sh --nproc 2 --master-port 29651 -- " +
                          encode_command(weights, dir / "two"),
                      dir / "two.log") == 0);
  INFO(read_file(dir / "two.log"));
  CHECK_THAT(read_file(dir / "two.log"), Catch::Contains("2 ranks"));
  const LatentCacheManifest one = read_latent_manifest(dir / "one"), two = read_latent_manifest(dir / "two");
  CHECK(two.complete);
  CHECK(one.fingerprint() == two.fingerprint());
  REQUIRE(two.num_shards() == 3);
  std::vector<int64_t> all(40);
  for (int64_t i = 0; i < 40; ++i) all[static_cast<size_t>(i)] = i;
  const at::Tensor a = LatentCache(dir / "one", 0).get_batch(all).cached_latents;
  const at::Tensor b = LatentCache(dir / "two", 0).get_batch(all).cached_latents;
  CHECK(at::allclose(a, b, 1e-5, 1e-6));
  // Running it again finds every shard done.
  REQUIRE(run_command(encode_command(weights, dir / "one"), dir / "again.log") == 0);
  CHECK_THAT(read_file(dir / "again.log"), Catch::Contains("0 shards encoded and 3 kept"));
  // Other settings into the same folder on 2 ranks: rank 0 names the difference and rank 1
  // stops at once, saying so, rather than waiting for a collective that never comes.
  CHECK(run_command(ditlab::testing::source_dir() + "/scripts/launch.sh --nproc 2 --master-port 29652 -- " +
                        encode_command(weights, dir / "one") + " --dtype float16",
                    dir / "other.log") != 0);
  CHECK_THAT(read_file(dir / "other.log"), Catch::Contains("dtype = \"float32\"") &&
                                               Catch::Contains("rank 0 failed while preparing"));

  const std::string train = dit_binary() + " train --config " + ditlab::testing::source_dir() +
                            "/configs/debug/dit.yaml data.name=latents data.path=" + (dir / "one") +
                            " data.random_flip=true autoencoder.type=kl autoencoder.weights=" + weights +
                            " sample.clip_denoised=false model.patch_size=2 train.steps=2 "
                            "sample.steps=2 sample.num_per_class=1 run.dir=" + (dir / "run");
  REQUIRE(run_command(train, dir / "train.log") == 0);
  CHECK_THAT(read_file(dir / "train.log"), Catch::Contains("data latents (40 images"));
  CHECK(std::filesystem::exists(dir / "run/samples.png"));

  // The loader alone, timed.
  REQUIRE(run_command("(" + dit_binary() + " bench --data --config " + ditlab::testing::source_dir() +
                          "/configs/debug/dit.yaml data.name=latents data.path=" + (dir / "one") +
                          " --batch 8 --steps 3 2>/dev/null)",
                      dir / "bench.json") == 0);
  const std::string bench = read_file(dir / "bench.json");
  CAPTURE(bench);
  CHECK_THAT(bench, Catch::StartsWith("{\"mode\": \"data\", \"dataset\": \"latents\"") &&
                        Catch::Contains("\"images_per_s\": "));

  // Usage errors name the flag.
  CHECK(run_command(dit_binary() + " encode --config " + ditlab::testing::source_dir() + "/configs/debug/dit.yaml",
                    dir / "usage.log") == 2);
  CHECK_THAT(read_file(dir / "usage.log"), Catch::Contains("--out"));
}
