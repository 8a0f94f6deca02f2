// ImageNet-style folders: root/<class>/<image>, read as torchvision's ImageFolder reads them, so
// labels and file indices match Python-trained checkpoints and Python data pipelines: classes
// numbered in sorted order, each class's files in the order of sorted(os.walk(class_dir,
// followlinks=True)) with each folder's names sorted. data.limit keeps the first N files in that
// order (so a small limit may cover only the first classes). Images are decoded per batch with
// OpenCV (EXIF orientation ignored, as PIL's loader does) and centre-cropped exactly as DiT does.
#pragma once
#include <opencv2/core/mat.hpp>

#include "data/dataset.h"

namespace ditlab {

class ImageFolder : public Dataset {
 public:
  ImageFolder(const std::string& root, int64_t image_size, int64_t limit);

  int64_t size() const override { return static_cast<int64_t>(files_.size()); }
  int64_t num_classes() const override { return static_cast<int64_t>(classes_.size()); }
  int64_t channels() const override { return 3; }
  int64_t image_size() const override { return image_size_; }
  Batch get_batch(const std::vector<int64_t>& indices) const override;

  const std::vector<std::string>& classes() const { return classes_; }
  // (path, label) in dataset order.
  const std::vector<std::pair<std::string, int64_t>>& files() const { return files_; }

 private:
  std::vector<std::string> classes_;
  std::vector<std::pair<std::string, int64_t>> files_;  // path, label
  int64_t image_size_;
};

// DiT's center_crop_arr (train.py, from ADM), pixel for pixel with Pillow: while the short side
// is at least 2 * size, halve both sides (floor) with Pillow's BOX filter; resize with Pillow's
// BICUBIC so the short side is `size` (the long side scaled and rounded half to even, as
// Python's round()); crop the centre square, offsets floored. RGB uint8 in and out.
cv::Mat center_crop_adm(const cv::Mat& rgb, int64_t size);

}  // namespace ditlab
