// The latent cache's format, written here by hand: the manifest, the shards, the dataset that
// reads them, and the errors for caches that are incomplete, foreign or malformed.
#include <catch2/catch.hpp>

#include <ATen/ATen.h>

#include <filesystem>
#include <fstream>
#include <limits>

#include "data/latent_cache.h"
#include "src/common/error.h"
#include "src/io/atomic_file.h"
#include "src/io/safetensors.h"
#include "tests/test_support.h"

using namespace ditlab;
using ditlab::testing::TempDir;

namespace {

LatentCacheManifest small_manifest() {
  LatentCacheManifest m;
  m.count = 5;
  m.shard_size = 2;
  m.num_classes = 3;
  m.latent_shape = {2, 2, 2};
  m.orientations = 2;
  m.source = {"fashion_mnist", "/data/fm", "train", 8, 5, 1};
  m.autoencoder.weights = "/vae/a.safetensors";
  m.autoencoder.crc32 = 0xdeadbeef;
  m.autoencoder.bytes = 1234;
  m.autoencoder.latent_channels = 2;
  m.autoencoder.downsampling = 4;
  m.autoencoder.scaling_factor = 0.18215;
  m.complete = true;
  m.command = "dit encode --out \"x\"";
  return m;
}

// Entry i holds i * 100 + its position within the entry, so every element is identifiable.
at::Tensor entry_values(int64_t i, const LatentCacheManifest& m) {
  return at::arange(m.orientations * m.parts() * 8, at::kFloat).view({m.orientations, m.parts(), 2, 2, 2}) +
         100.0 * static_cast<double>(i);
}

void write_cache(const std::string& dir, const LatentCacheManifest& m) {
  write_latent_manifest(dir, m);
  for (int64_t s = 0; s < m.num_shards(); ++s) {
    const int64_t first = s * m.shard_size, n = std::min(m.shard_size, m.count - first);
    std::vector<at::Tensor> entries;
    for (int64_t i = first; i < first + n; ++i) entries.push_back(entry_values(i, m));
    const auto dtype = m.dtype == "float16" ? at::kHalf : at::kFloat;
    write_safetensors(dir + "/" + LatentCacheManifest::shard_file(s),
                      {{"latents", at::stack(entries).to(dtype)},
                       {"labels", at::arange(first, first + n, at::kLong) % m.num_classes}},
                      {{"fingerprint", m.fingerprint()}});
  }
}

std::string io_error(const std::string& dir) {
  try {
    LatentCache cache(dir, 0);
  } catch (const IoError& e) {
    return e.what();
  }
  FAIL("expected an IoError for " + dir);
  return "";
}

}  // namespace

TEST_CASE("a latent cache's manifest round-trips and its entries read back exactly", "[latents][data]") {
  TempDir dir("cache");
  const LatentCacheManifest m = small_manifest();
  write_cache(dir.path(), m);
  const LatentCacheManifest back = read_latent_manifest(dir.path());
  CHECK(back.settings() == m.settings());
  CHECK(back.command == m.command);
  CHECK(back.complete);
  CHECK(back.fingerprint() == m.fingerprint());
  CHECK(m.num_shards() == 3);
  CHECK(LatentCacheManifest::shard_file(12) == "shard-00012.safetensors");

  LatentCache cache(dir.path(), 0);
  CHECK(cache.size() == 5);
  CHECK(cache.channels() == 2);
  CHECK(cache.image_size() == 2);
  CHECK(cache.num_classes() == 3);
  const Batch batch = cache.get_batch({4, 0, 3, 3});
  CHECK_FALSE(batch.images.defined());
  REQUIRE(batch.cached_latents.sizes() == at::IntArrayRef({4, 2, 2, 2, 2, 2}));
  const int64_t expected[] = {4, 0, 3, 3};
  for (int64_t i = 0; i < 4; ++i) {
    CHECK(at::equal(batch.cached_latents[i], entry_values(expected[i], m)));
    CHECK(batch.labels[i].item<int64_t>() == expected[i] % 3);
  }
  // A limit keeps the first entries; an index past it is an error naming the cache.
  LatentCache limited(dir.path(), 3);
  CHECK(limited.size() == 3);
  CHECK_THROWS_WITH(limited.get_batch({3}), Catch::Contains("index 3") && Catch::Contains(dir.path()));
}

TEST_CASE("float16 shards read as float32", "[latents][data]") {
  TempDir dir("cache16");
  LatentCacheManifest m = small_manifest();
  m.dtype = "float16";
  m.store = "sample";
  write_cache(dir.path(), m);
  LatentCache cache(dir.path(), 0);
  const Batch batch = cache.get_batch({1, 2});
  CHECK(batch.cached_latents.scalar_type() == at::kFloat);
  REQUIRE(batch.cached_latents.size(2) == 1);  // one part: the stored sample
  CHECK(at::equal(batch.cached_latents[1], entry_values(2, m)));  // small integers are exact in float16
}

TEST_CASE("incomplete, foreign and malformed caches are errors naming the file", "[latents][data]") {
  TempDir dir("cache-bad");
  const LatentCacheManifest m = small_manifest();
  CHECK_THAT(io_error(dir.path()), Catch::Contains("manifest.json is missing"));

  write_cache(dir.path(), m);
  LatentCacheManifest unfinished = m;
  unfinished.complete = false;
  write_latent_manifest(dir.path(), unfinished);
  CHECK_THAT(io_error(dir.path()), Catch::Contains("incomplete") && Catch::Contains("dit encode"));

  write_latent_manifest(dir.path(), m);
  std::filesystem::remove(dir / "shard-00001.safetensors");
  CHECK_THAT(io_error(dir.path()), Catch::Contains("shard-00001.safetensors is missing"));

  // Shards of other settings (here: another seed) do not belong to this manifest.
  write_cache(dir.path(), m);
  LatentCacheManifest other = m;
  other.seed = 9;
  write_latent_manifest(dir.path(), other);
  CHECK_THAT(io_error(dir.path()), Catch::Contains("shard-00000.safetensors") &&
                                       Catch::Contains("belongs to another latent cache"));

  // A shard whose shape disagrees with the manifest.
  write_cache(dir.path(), m);
  write_safetensors(dir / "shard-00002.safetensors",
                    {{"latents", at::zeros({1, 2, 2, 2, 3, 3})}, {"labels", at::zeros({1}, at::kLong)}},
                    {{"fingerprint", m.fingerprint()}});
  CHECK_THAT(io_error(dir.path()), Catch::Contains("shard-00002.safetensors") && Catch::Contains("latents are"));

  // A shard whose data does not match its stored checksum (checked on request: dit encode).
  write_cache(dir.path(), m);
  const at::Tensor latents = at::stack({entry_values(0, m), entry_values(1, m)});
  auto metadata = latent_shard_metadata(m, latents, at::zeros({2}, at::kLong));
  write_safetensors(dir / "shard-00000.safetensors",
                    {{"latents", latents}, {"labels", at::zeros({2}, at::kLong)}}, metadata);
  CHECK_NOTHROW(open_latent_shard(dir.path(), m, 0, true));
  write_safetensors(dir / "shard-00000.safetensors",
                    {{"latents", latents + 1}, {"labels", at::zeros({2}, at::kLong)}}, metadata);
  CHECK_NOTHROW(open_latent_shard(dir.path(), m, 0, false));
  CHECK_THROWS_WITH(open_latent_shard(dir.path(), m, 0, true),
                    Catch::Contains("shard-00000.safetensors") && Catch::Contains("checksum"));

  // A manifest with a key missing, or not a manifest at all.
  std::string text = read_file(dir / "manifest.json");
  const auto at = text.find("\"store\"");
  REQUIRE(at != std::string::npos);
  write_file_atomically(dir / "manifest.json", text.substr(0, at) + text.substr(text.find('\n', at) + 1));
  CHECK_THAT(io_error(dir.path()), Catch::Contains("manifest.json") && Catch::Contains("'store' is missing"));
  write_file_atomically(dir / "manifest.json", "{\"format\": \"something else\"}");
  CHECK_THAT(io_error(dir.path()), Catch::Contains("not a ditlab latent cache manifest"));
}

TEST_CASE("shard labels outside 0 to num_classes - 1 and corrupt labels are errors naming the shard",
          "[latents][data]") {
  TempDir dir("cache-labels");
  const LatentCacheManifest m = small_manifest();  // num_classes 3
  const at::Tensor latents = at::stack({entry_values(2, m), entry_values(3, m)});
  auto write_shard1 = [&](const at::Tensor& labels, const std::map<std::string, std::string>& metadata) {
    write_safetensors(dir / "shard-00001.safetensors", {{"latents", latents}, {"labels", labels}},
                      metadata);
  };
  // 3 would train as the null class, 7 and -1 index past the class embedding.
  for (int64_t label : {3, 7, -1}) {
    INFO("label " << label);
    write_cache(dir.path(), m);
    write_shard1(at::tensor({int64_t{1}, label}), {{"fingerprint", m.fingerprint()}});
    CHECK_THAT(io_error(dir.path()), Catch::Contains("shard-00001.safetensors") &&
                                         Catch::Contains("label " + std::to_string(label)) &&
                                         Catch::Contains("[0, 3)"));
  }

  // The labels have a checksum of their own, checked with the data on request (dit encode).
  const at::Tensor labels = at::tensor({int64_t{2}, int64_t{0}});
  auto metadata = latent_shard_metadata(m, latents, labels);
  CHECK(metadata.count("labels_crc32") == 1);
  write_shard1(labels, metadata);
  CHECK_NOTHROW(open_latent_shard(dir.path(), m, 1, true));
  write_shard1(at::tensor({int64_t{2}, int64_t{1}}), metadata);  // in range, but not what was written
  CHECK_NOTHROW(open_latent_shard(dir.path(), m, 1, false));
  CHECK_THROWS_WITH(open_latent_shard(dir.path(), m, 1, true),
                    Catch::Contains("shard-00001.safetensors") && Catch::Contains("labels do not match"));
  // Shards written before labels had a checksum still verify by their latents.
  metadata.erase("labels_crc32");
  write_shard1(at::tensor({int64_t{2}, int64_t{1}}), metadata);
  CHECK_NOTHROW(open_latent_shard(dir.path(), m, 1, true));
}

TEST_CASE("a manifest's count and shard_size are bounded so that no shard arithmetic overflows",
          "[latents][data]") {
  TempDir dir("cache-huge");
  const LatentCacheManifest m = small_manifest();
  write_cache(dir.path(), m);
  // shard_size = INT64_MAX made (size + shard_size - 1) wrap: no shard was opened and get_batch
  // indexed an empty list.
  for (const auto& [key, value] :
       {std::pair<std::string, int64_t>{"shard_size", std::numeric_limits<int64_t>::max()},
        {"shard_size", int64_t{1} << 41},
        {"shard_size", 0},
        {"count", int64_t{1} << 41},
        {"count", -5}}) {
    INFO(key << " = " << value);
    LatentCacheManifest bad = m;
    (key == "count" ? bad.count : bad.shard_size) = value;
    write_latent_manifest(dir.path(), bad);
    CHECK_THAT(io_error(dir.path()), Catch::Contains("manifest.json") &&
                                         Catch::Contains("'" + key + "' is " + std::to_string(value)));
  }
  // A shard larger than the cache is fine: one shard holds everything.
  LatentCacheManifest one = m;
  one.shard_size = int64_t{1} << 40;
  write_latent_manifest(dir.path(), one);
  write_safetensors(dir / "shard-00000.safetensors",
                    {{"latents", at::stack({entry_values(0, m), entry_values(1, m), entry_values(2, m),
                                            entry_values(3, m), entry_values(4, m)})},
                     {"labels", at::arange(5, at::kLong) % 3}},
                    {{"fingerprint", one.fingerprint()}});
  LatentCache cache(dir.path(), 0);
  CHECK(cache.size() == 5);
  CHECK(at::equal(cache.get_batch({4}).cached_latents[0], entry_values(4, m)));
}

TEST_CASE("settings that differ from an existing cache are named", "[latents][data]") {
  const LatentCacheManifest m = small_manifest();
  LatentCacheManifest other = m;
  other.dtype = "bfloat16";
  CHECK_THROWS_WITH(require_same_settings("/c", m, other),
                    Catch::Contains("dtype = \"float32\"") && Catch::Contains("\"bfloat16\""));
  // The paths may move (the dataset and the autoencoder are identified by their checksums), the
  // limit says nothing the count does not, and the values are stored unscaled.
  other = m;
  other.source.path = "/elsewhere";
  other.autoencoder.weights = "/elsewhere/vae.safetensors";
  other.source.limit = 0;
  other.autoencoder.scaling_factor = 1.0;
  CHECK_NOTHROW(require_same_settings("/c", m, other));
  CHECK(other.fingerprint() == m.fingerprint());
  other.autoencoder.crc32 = 1;
  CHECK_THROWS_WITH(require_same_settings("/c", m, other), Catch::Contains("autoencoder.crc32"));
  other = m;
  other.source.sample_crc32 = 7;
  CHECK_THROWS_WITH(require_same_settings("/c", m, other), Catch::Contains("source.sample_crc32"));
}

TEST_CASE("data.name latents checks flips and the image size against the cache", "[latents][data]") {
  TempDir dir("cache-cfg");
  LatentCacheManifest m = small_manifest();
  m.orientations = 1;
  write_cache(dir.path(), m);
  DataConfig config;
  config.name = "latents";
  config.path = dir.path();
  config.image_size = 8;
  CHECK(make_dataset(config)->size() == 5);
  config.random_flip = true;
  CHECK_THROWS_WITH(make_dataset(config), Catch::Contains("dit encode --flip"));
  config.random_flip = false;
  config.image_size = 16;
  CHECK_THROWS_WITH(make_dataset(config), Catch::Contains("data.image_size=8"));
}
