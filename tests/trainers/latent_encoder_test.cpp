// `dit encode` (trainers/latent_encoder.h): the cache holds the autoencoder's posterior of every
// image, resumes after an interruption, and training from it equals encoding on the fly.
#include <catch2/catch.hpp>

#include <ATen/ATen.h>
#include <torch/torch.h>

#include <filesystem>
#include <fstream>

#include "data/latent_cache.h"
#include "models/vae/autoencoder_stage.h"
#include "models/vae/vae_weights.h"
#include "src/common/error.h"
#include "src/common/sample_rng.h"
#include "src/config/config_loader.h"
#include "src/io/atomic_file.h"
#include "src/io/checksum.h"
#include "src/io/safetensors.h"
#include "tests/test_support.h"
#include "trainers/latent_encoder.h"
#include "trainers/trainer.h"

using namespace ditlab;
using ditlab::testing::TempDir;

namespace {

// A small untrained AutoencoderKL (1 -> 4 channels, downsampling 4): encoding needs no quality.
std::string random_autoencoder(const std::string& path, uint64_t seed) {
  torch::manual_seed(seed);
  AutoencoderSpec spec;
  spec.options.in_channels = spec.options.out_channels = 1;
  spec.options.block_out_channels = {8, 16, 16};
  spec.options.layers_per_block = 1;
  spec.options.norm_num_groups = 4;
  spec.scaling_factor = 0.5;
  save_autoencoder(AutoencoderKL(spec.options), spec, path);
  return path;
}

// configs/debug/dit.yaml on the first `limit` Fashion-MNIST images, with the autoencoder.
ExperimentConfig config_with(const std::string& weights, std::vector<std::string> overrides) {
  overrides.insert(overrides.begin(),
                   {"data.path=" + ditlab::testing::fashion_mnist_dir(), "data.limit=100",
                    "autoencoder.type=kl", "autoencoder.weights=" + weights, "sample.at_end=false",
                    "sample.clip_denoised=false", "model.patch_size=2", "train.log_every=1"});
  return load_experiment_config(ditlab::testing::source_dir() + "/configs/debug/dit.yaml", overrides);
}

EncodeOptions encode_options(const std::string& out, bool flip, int64_t shard_size = 48) {
  EncodeOptions o;
  o.out_dir = out;
  o.flip = flip;
  o.shard_size = shard_size;
  o.batch_size = 16;
  return o;
}

std::vector<double> logged_losses(const std::string& run_dir) {
  std::ifstream in(run_dir + "/metrics.jsonl");
  std::vector<double> losses;
  for (std::string line; std::getline(in, line);) {
    const auto at = line.find("\"loss\": ");
    REQUIRE(at != std::string::npos);
    losses.push_back(std::stod(line.substr(at + 8)));
  }
  return losses;
}

}  // namespace

TEST_CASE("dit encode caches the posterior of every image and of its mirror image", "[latents][encode]") {
  TempDir dir("encode");
  const std::string weights = random_autoencoder(dir / "vae.safetensors", 1);
  const ExperimentConfig config = config_with(weights, {});
  const EncodeSummary summary = encode_dataset(config, encode_options(dir / "cache", true));
  CHECK(summary.count == 100);
  CHECK(summary.shards_encoded == 3);  // 48 + 48 + 4

  const LatentCacheManifest m = read_latent_manifest(dir / "cache");
  CHECK(m.complete);
  CHECK(m.latent_shape == std::vector<int64_t>{4, 8, 8});
  CHECK(m.autoencoder.crc32 == crc32_of_file(weights));
  CHECK(m.autoencoder.scaling_factor == 0.5);
  CHECK(m.source.image_size == 32);
  CHECK(std::filesystem::exists(dir / "cache/config.yaml"));
  // Every shard carries the checksums that dit encode verifies on resuming.
  const auto shard_metadata = map_safetensors(dir / "cache/shard-00002.safetensors").metadata;
  CHECK(shard_metadata.count("latents_crc32") == 1);
  CHECK(shard_metadata.count("labels_crc32") == 1);

  // Against the autoencoder applied here to the same images, one at a time.
  LatentCache cache(dir / "cache", 0);
  auto images = make_dataset(config.data);
  auto stage = AutoencoderStage::create(config.autoencoder, c10::Device(c10::kCPU));
  const std::vector<int64_t> picked = {0, 47, 48, 99};
  const Batch cached = cache.get_batch(picked);
  const Batch original = images->get_batch(picked);
  CHECK(at::equal(cached.labels, original.labels));
  for (size_t i = 0; i < picked.size(); ++i) {
    const at::Tensor image = original.images.narrow(0, static_cast<int64_t>(i), 1);
    for (int64_t orientation = 0; orientation < 2; ++orientation) {
      INFO("image " << picked[i] << " orientation " << orientation);
      const DiagonalGaussian p = stage->posterior(orientation ? image.flip({3}) : image);
      const at::Tensor entry = cached.cached_latents[static_cast<int64_t>(i)][orientation];
      CHECK(at::allclose(entry[0], p.mean[0], 1e-5, 1e-6));
      CHECK(at::allclose(entry[1], p.std()[0], 1e-5, 1e-6));
    }
  }
  // The two orientations differ (the autoencoder is not mirror-symmetric).
  CHECK_FALSE(at::allclose(cached.cached_latents.select(1, 0), cached.cached_latents.select(1, 1)));
}

TEST_CASE("a stored posterior sample does not depend on the sharding, and float16 halves the files",
          "[latents][encode]") {
  TempDir dir("encode-sample");
  const std::string weights = random_autoencoder(dir / "vae.safetensors", 2);
  const ExperimentConfig config = config_with(weights, {"data.limit=20"});
  EncodeOptions a = encode_options(dir / "a", false, 7);
  a.store = "sample";
  a.seed = 5;
  EncodeOptions b = a;
  b.out_dir = dir / "b";
  b.shard_size = 20;
  b.batch_size = 3;
  encode_dataset(config, a);
  encode_dataset(config, b);
  std::vector<int64_t> all(20);
  for (int64_t i = 0; i < 20; ++i) all[static_cast<size_t>(i)] = i;
  const at::Tensor la = LatentCache(dir / "a", 0).get_batch(all).cached_latents;
  const at::Tensor lb = LatentCache(dir / "b", 0).get_batch(all).cached_latents;
  REQUIRE(la.sizes() == at::IntArrayRef({20, 1, 1, 4, 8, 8}));
  CHECK(at::allclose(la, lb, 1e-5, 1e-6));
  // The draw of image 13: mean + std * noise from the generator of (seed 5, orientation 0, 13).
  auto stage = AutoencoderStage::create(config.autoencoder, c10::Device(c10::kCPU));
  const DiagonalGaussian p = stage->posterior(make_dataset(config.data)->get_batch({13}).images);
  // (Its stream is apart from training's: the step coordinate is 2^64 - 2 - orientation.)
  const at::Tensor noise = at::randn({4, 8, 8}, sample_generator(5, ~uint64_t{0} - 1, 13));
  CHECK(at::allclose(la[13][0][0], p.mean[0] + p.std()[0] * noise, 1e-5, 1e-6));

  EncodeOptions half = encode_options(dir / "half", false, 20);
  half.dtype = "float16";
  encode_dataset(config, half);
  EncodeOptions full = encode_options(dir / "full", false, 20);
  encode_dataset(config, full);
  const auto half_bytes = std::filesystem::file_size(dir / "half/shard-00000.safetensors");
  const auto full_bytes = std::filesystem::file_size(dir / "full/shard-00000.safetensors");
  CHECK(half_bytes < 0.6 * static_cast<double>(full_bytes));
  const at::Tensor lh = LatentCache(dir / "half", 0).get_batch(all).cached_latents;
  const at::Tensor lf = LatentCache(dir / "full", 0).get_batch(all).cached_latents;
  CHECK(at::allclose(lh, lf, 2e-3, 1e-3));
}

TEST_CASE("an interrupted encode resumes, keeping its finished shards, and refuses other settings",
          "[latents][encode]") {
  TempDir dir("encode-resume");
  const std::string weights = random_autoencoder(dir / "vae.safetensors", 3);
  const ExperimentConfig config = config_with(weights, {});
  const std::string out = dir / "cache";
  encode_dataset(config, encode_options(out, false));
  const std::string shard0 = read_file(out + "/shard-00000.safetensors");
  const std::string shard1 = read_file(out + "/shard-00001.safetensors");

  // As if interrupted after the first shard: the manifest is not complete, shard 1 is missing
  // and shard 2 was cut short (a copy by other means than dit encode's atomic writes).
  LatentCacheManifest m = read_latent_manifest(out);
  m.complete = false;
  write_latent_manifest(out, m);
  std::filesystem::remove(out + "/shard-00001.safetensors");
  const std::string shard2 = read_file(out + "/shard-00002.safetensors");
  write_file_atomically(out + "/shard-00002.safetensors", shard2.substr(0, shard2.size() / 2));
  CHECK_THROWS_WITH(LatentCache(out, 0), Catch::Contains("incomplete"));

  const EncodeSummary resumed = encode_dataset(config, encode_options(out, false));
  CHECK(resumed.shards_kept == 1);
  CHECK(resumed.shards_encoded == 2);
  CHECK(read_file(out + "/shard-00000.safetensors") == shard0);  // not rewritten
  CHECK(read_file(out + "/shard-00001.safetensors") == shard1);  // the same numbers again
  CHECK(read_file(out + "/shard-00002.safetensors") == shard2);
  CHECK(read_latent_manifest(out).complete);
  CHECK(LatentCache(out, 0).size() == 100);

  // A shard of the right size with a corrupt byte, and a shard of another cache, are found by
  // their checksum and fingerprint and encoded again.
  std::string corrupt = shard0;
  corrupt[corrupt.size() - 100] ^= 0x40;
  write_file_atomically(out + "/shard-00000.safetensors", corrupt);
  encode_dataset(config_with(weights, {"data.limit=48"}), encode_options(dir / "foreign", false));
  std::filesystem::copy_file(dir / "foreign/shard-00000.safetensors", out + "/shard-00001.safetensors",
                             std::filesystem::copy_options::overwrite_existing);
  const EncodeSummary repaired = encode_dataset(config, encode_options(out, false));
  CHECK(repaired.shards_encoded == 2);
  CHECK(repaired.shards_kept == 1);
  CHECK(read_file(out + "/shard-00000.safetensors") == shard0);
  CHECK(read_file(out + "/shard-00001.safetensors") == shard1);

  // The same folder with other settings: refused by name, nothing touched.
  CHECK_THROWS_WITH(encode_dataset(config, encode_options(out, true)),
                    Catch::Contains("orientations = 1") && Catch::Contains("another --out"));
  CHECK_THROWS_WITH(encode_dataset(config_with(weights, {"data.limit=50"}), encode_options(out, false)),
                    Catch::Contains("count = 100"));
  const std::string other = random_autoencoder(dir / "other.safetensors", 4);
  CHECK_THROWS_WITH(encode_dataset(config_with(other, {}), encode_options(out, false)),
                    Catch::Contains("autoencoder.crc32"));
  // The dataset is identified by its first and last images too: the test split of the same
  // size differs there from the training split.
  encode_dataset(config_with(weights, {"data.split=test"}), encode_options(dir / "test-split", false));
  CHECK(read_latent_manifest(dir / "test-split").source.sample_crc32 != read_latent_manifest(out).source.sample_crc32);
  CHECK(read_file(out + "/shard-00000.safetensors") == shard0);
  // Options that make no sense.
  EncodeOptions bad = encode_options(dir / "x", false);
  bad.store = "means";
  CHECK_THROWS_WITH(encode_dataset(config, bad), Catch::Contains("--store 'means'"));
  CHECK_THROWS_WITH(encode_dataset(config_with(weights, {"autoencoder.type=identity"}),
                                   encode_options(dir / "y", false)),
                    Catch::Contains("autoencoder.type kl"));
}

TEST_CASE("training from a cache equals encoding every batch on the fly", "[latents][encode]") {
  TempDir dir("encode-train");
  const std::string weights = random_autoencoder(dir / "vae.safetensors", 5);
  const std::vector<std::string> common = {"data.limit=64", "data.random_flip=true", "train.steps=3"};
  encode_dataset(config_with(weights, common), encode_options(dir / "cache", true, 24));

  auto fly = common;
  fly.push_back("run.dir=" + dir / "fly");
  train(config_with(weights, fly));
  auto cached = common;
  cached.insert(cached.end(), {"data.name=latents", "data.path=" + dir / "cache", "run.dir=" + dir / "cached"});
  train(config_with(weights, cached));

  // The same images, flips, timesteps, noise and posterior draws: the same losses and weights,
  // up to float rounding between encoding in shards and in training batches.
  const auto a = logged_losses(dir / "fly"), b = logged_losses(dir / "cached");
  REQUIRE(a.size() == 3);
  REQUIRE(b.size() == 3);
  for (size_t i = 0; i < a.size(); ++i) CHECK(b[i] == Approx(a[i]).epsilon(1e-4));
  const auto wa = read_safetensors(dir / "fly/model.safetensors").tensors;
  const auto wb = read_safetensors(dir / "cached/model.safetensors").tensors;
  for (const auto& [name, t] : wa) {
    INFO(name);
    CHECK(at::allclose(t, wb.at(name), 1e-3, 1e-4));
  }
  // The comparison sees the latents: posterior means instead of samples change the weights.
  cached.insert(cached.end(), {"autoencoder.sample_posterior=false", "run.dir=" + dir / "means"});
  train(config_with(weights, cached));
  const auto wm = read_safetensors(dir / "means/model.safetensors").tensors;
  CHECK_FALSE(at::allclose(wa.at("x_embedder.proj.weight"), wm.at("x_embedder.proj.weight"), 1e-3, 1e-4));
}

TEST_CASE("a cache that does not fit the model or the autoencoder is refused by name", "[latents][encode]") {
  TempDir dir("encode-mismatch");
  const std::string weights = random_autoencoder(dir / "vae.safetensors", 6);
  const std::string cache = dir / "cache";
  encode_dataset(config_with(weights, {"data.limit=40"}), encode_options(cache, false, 40));
  auto from_cache = [&](const std::string& vae, std::vector<std::string> more) {
    more.insert(more.begin(), {"data.name=latents", "data.path=" + cache, "train.steps=1",
                               "run.dir=" + dir / "run"});
    return config_with(vae, more);
  };
  CHECK_NOTHROW(train(from_cache(weights, {})));
  const std::string other = random_autoencoder(dir / "other.safetensors", 7);
  CHECK_THROWS_WITH(train(from_cache(other, {"run.dir=" + dir / "r1"})),
                    Catch::Contains("other.safetensors") && Catch::Contains("not the autoencoder that encoded it"));
  CHECK_THROWS_WITH(train(from_cache(weights, {"autoencoder.type=identity", "run.dir=" + dir / "r2"})),
                    Catch::Contains("autoencoder.type=kl"));
  CHECK_THROWS_WITH(train(from_cache(weights, {"model.in_channels=8", "run.dir=" + dir / "r3"})),
                    Catch::Contains("model.in_channels is 8") && Catch::Contains("latent cache") &&
                        Catch::Contains("gives 4"));
  CHECK_THROWS_WITH(train(from_cache(weights, {"model.input_size=16", "run.dir=" + dir / "r4"})),
                    Catch::Contains("model.input_size is 16") && Catch::Contains("gives 8"));
  CHECK_THROWS_WITH(train(from_cache(weights, {"data.random_flip=true", "run.dir=" + dir / "r5"})),
                    Catch::Contains("--flip"));
  CHECK_THROWS_WITH(train(from_cache(weights, {"data.path=" + dir / "nothing", "run.dir=" + dir / "r6"})),
                    Catch::Contains("manifest.json is missing"));

  // A cache of stored samples cannot give posterior means.
  EncodeOptions sample = encode_options(dir / "samples", false, 40);
  sample.store = "sample";
  encode_dataset(config_with(weights, {"data.limit=40"}), sample);
  CHECK_THROWS_WITH(train(from_cache(weights, {"data.path=" + dir / "samples",
                                               "autoencoder.sample_posterior=false", "run.dir=" + dir / "r7"})),
                    Catch::Contains("--store moments"));
}
