// Fashion-MNIST from its IDX files (gzip), as Debian's dataset-fashion-mnist installs them.
// All images live in memory as uint8 [N, 1, S, S] after padding (or resizing) 28 -> S.
#pragma once
#include "data/dataset.h"

namespace ditlab {

class FashionMnist : public Dataset {
 public:
  // split: train (60k), test (10k) or all (70k); limit > 0 keeps the first `limit` images.
  FashionMnist(const std::string& folder, const std::string& split, int64_t image_size,
               int64_t limit);

  int64_t size() const override { return labels_.size(0); }
  int64_t num_classes() const override { return 10; }
  int64_t channels() const override { return 1; }
  int64_t image_size() const override { return images_.size(2); }
  Batch get_batch(const std::vector<int64_t>& indices) const override;

  static const std::vector<std::string>& class_names();

 private:
  at::Tensor images_;  // uint8 [N, 1, S, S]
  at::Tensor labels_;  // int64 [N]
};

// Reads a gzip-compressed IDX file (magic 0x0801 labels or 0x0803 images) into uint8 with its
// dimensions; throws IoError naming the file when it is missing, truncated or not IDX.
at::Tensor read_idx_gz(const std::string& path);

}  // namespace ditlab
