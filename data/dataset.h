// The dataset interface: random access by index, batches assembled in one copy.
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "src/config/experiment_config.h"

namespace ditlab {

struct Batch {
  at::Tensor images;  // [N, C, H, W] float32 in [-1, 1]
  at::Tensor labels;  // [N] int64
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
};

// The dataset named by data.name; throws IoError / ConfigError naming the path or key.
std::shared_ptr<Dataset> make_dataset(const DataConfig& config);

}  // namespace ditlab
