// The dataset interface: random access by index, batches assembled in one copy.
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "src/config/experiment_config.h"

namespace ditlab {

struct LatentCacheManifest;

struct Batch {
  at::Tensor images;  // [N, C, H, W] float32 in [-1, 1]; undefined for a latent cache
  at::Tensor labels;  // [N] int64
  // A latent cache's entries (data/latent_cache.h): [N, orientations, parts, C, h, w] float32,
  // unscaled; undefined for image datasets.
  at::Tensor cached_latents;
};

class Dataset {
 public:
  virtual ~Dataset() = default;
  virtual int64_t size() const = 0;
  virtual int64_t num_classes() const = 0;
  virtual int64_t channels() const = 0;
  virtual int64_t image_size() const = 0;
  // Thread-safe: the prefetching loader calls it from a background thread.
  virtual Batch get_batch(const std::vector<int64_t>& indices) const = 0;
  // A latent cache's manifest; null for datasets of images.
  virtual const LatentCacheManifest* latent_cache() const { return nullptr; }
};

// The dataset named by data.name (fashion_mnist, image_folder or latents); throws IoError / ConfigError naming the path or key.
std::shared_ptr<Dataset> make_dataset(const DataConfig& config);

}  // namespace ditlab
