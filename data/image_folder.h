// ImageNet-style folders: root/<class>/<image>, classes numbered in sorted order (as
// torchvision's ImageFolder, so labels match Python-trained checkpoints). data.limit keeps the
// first N files in that order (so a small limit may cover only the first classes). Images are decoded per
// batch with OpenCV and centre-cropped as ADM / DiT do.
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

 private:
  std::vector<std::string> classes_;
  std::vector<std::pair<std::string, int64_t>> files_;  // path, label
  int64_t image_size_;
};

// ADM's center_crop_arr: halve with area filtering while the short side is >= 2x the target,
// resize (bicubic) so the short side equals the target, then crop the centre. RGB uint8 in/out.
cv::Mat center_crop_adm(const cv::Mat& rgb, int64_t size);

}  // namespace ditlab
