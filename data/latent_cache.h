// A dataset of autoencoder latents, encoded once by `dit encode` (trainers/latent_encoder.h) so
// that training never runs the encoder (as fast-DiT's extract_features). A cache is a folder:
//   manifest.json             what is inside and how it was made (LatentCacheManifest below)
//   shard-00000.safetensors   "latents" [n, orientations, parts, C, h, w], "labels" [n] int64,
//   shard-00001.safetensors   n = shard_size (fewer in the last shard)
// orientations: 1, or 2 with horizontal-flip copies (index 1 encodes the mirrored image);
// parts: the posterior's (mean, std), or one posterior sample drawn at encoding time. Values are
// unscaled: the autoencoder stage applies its scaling factor when training reads them.
// Shards are memory-mapped, so opening a cache reads only their headers.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "data/dataset.h"

namespace ditlab {

struct LatentCacheManifest {
  // How the cache was made; two caches with equal settings() hold the same numbers.
  int64_t count = 0;
  int64_t shard_size = 0;
  int64_t num_classes = 0;
  std::vector<int64_t> latent_shape;  // C, h, w
  std::string dtype = "float32";      // float32, float16 or bfloat16
  std::string store = "moments";      // moments (mean, std) or sample
  int64_t orientations = 1;           // 2: flip copies
  int64_t seed = 0;                   // store=sample: the posterior draws' seed
  struct Source {
    std::string name, path, split;
    int64_t image_size = 0, limit = 0, channels = 0;
    uint32_t sample_crc32 = 0;  // of the first and last 8 images and labels: tells datasets apart
  } source;
  struct Autoencoder {
    std::string weights;
    uint32_t crc32 = 0;  // of the weights file: identifies the autoencoder
    int64_t bytes = 0;
    int64_t latent_channels = 0, downsampling = 0;
    double scaling_factor = 0.0;  // the one in effect when encoding (informative)
  } autoencoder;
  // Not settings:
  bool complete = false;  // false while `dit encode` runs or after it was interrupted
  std::string command;    // the command line that made it

  int64_t num_shards() const { return (count + shard_size - 1) / shard_size; }
  int64_t parts() const { return store == "moments" ? 2 : 1; }
  static std::string shard_file(int64_t shard);  // "shard-00003.safetensors"

  // Every setting as (dotted key, JSON value), in the manifest's order. `comparable` settings
  // are those that change the stored numbers: they leave out the paths (a moved dataset or
  // autoencoder is identified by its checksums), source.limit (count says what was kept) and the
  // scaling factor (values are stored unscaled).
  std::vector<std::pair<std::string, std::string>> settings(bool comparable = false) const;
  // A checksum of the comparable settings, stored in every shard to tie it to its manifest.
  std::string fingerprint() const;
};

std::string manifest_path(const std::string& cache_dir);
// Throws IoError naming the file and the key that is missing or malformed.
LatentCacheManifest read_latent_manifest(const std::string& cache_dir);
void write_latent_manifest(const std::string& cache_dir, const LatentCacheManifest& manifest);
// Throws ConfigError naming the first setting in which `existing` (the manifest in `cache_dir`)
// differs from `wanted`.
void require_same_settings(const std::string& cache_dir, const LatentCacheManifest& existing,
                           const LatentCacheManifest& wanted);

// One shard, mapped: its latents and labels after checking them against the manifest. Throws
// IoError naming the file when it is truncated, belongs to another cache, has other shapes, or a
// label outside [0, num_classes); with `verify_data`, also when its latents or labels do not match
// the CRC-32 stored with them (this reads the whole shard, so training, which opens every shard,
// skips it; shards written before labels had a checksum are checked for their latents only).
struct LatentShard {
  at::Tensor latents;  // [n, orientations, parts, C, h, w], viewing the mapped file (read-only)
  at::Tensor labels;   // [n] int64, viewing the mapped file (read-only)
};
LatentShard open_latent_shard(const std::string& cache_dir, const LatentCacheManifest& manifest,
                              int64_t shard, bool verify_data = false);
// The metadata `dit encode` stores with a shard's tensors: the manifest's fingerprint and the
// CRC-32 of the latents and of the labels.
std::map<std::string, std::string> latent_shard_metadata(const LatentCacheManifest& manifest,
                                                         const at::Tensor& latents,
                                                         const at::Tensor& labels);

class LatentCache : public Dataset {
 public:
  // The complete cache in `dir`; `limit` > 0 keeps its first `limit` entries.
  LatentCache(const std::string& dir, int64_t limit);

  int64_t size() const override { return size_; }
  int64_t num_classes() const override { return manifest_.num_classes; }
  int64_t channels() const override { return manifest_.latent_shape[0]; }
  int64_t image_size() const override { return manifest_.latent_shape[1]; }
  // labels, and cached_latents [N, orientations, parts, C, h, w] as float32.
  Batch get_batch(const std::vector<int64_t>& indices) const override;
  const LatentCacheManifest* latent_cache() const override { return &manifest_; }

 private:
  std::string dir_;
  LatentCacheManifest manifest_;
  std::vector<LatentShard> shards_;
  int64_t size_ = 0;
};

}  // namespace ditlab
