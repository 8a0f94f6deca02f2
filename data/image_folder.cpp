#ifdef DITLAB_WITH_OPENCV
#include "data/image_folder.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include "src/common/error.h"

namespace ditlab {
namespace fs = std::filesystem;

cv::Mat center_crop_adm(const cv::Mat& rgb, int64_t size) {
  cv::Mat image = rgb;
  while (std::min(image.cols, image.rows) >= 2 * size) {
    cv::resize(image, image, cv::Size(image.cols / 2, image.rows / 2), 0, 0, cv::INTER_AREA);
  }
  double scale = static_cast<double>(size) / std::min(image.cols, image.rows);
  cv::resize(image, image,
             cv::Size(static_cast<int>(std::round(image.cols * scale)),
                      static_cast<int>(std::round(image.rows * scale))),
             0, 0, cv::INTER_CUBIC);
  int x = (image.cols - static_cast<int>(size)) / 2, y = (image.rows - static_cast<int>(size)) / 2;
  return image(cv::Rect(x, y, static_cast<int>(size), static_cast<int>(size))).clone();
}

ImageFolder::ImageFolder(const std::string& root, int64_t image_size, int64_t limit)
    : image_size_(image_size) {
  if (!fs::is_directory(root)) {
    throw IoError("image folder not found: '" + root + "' (data.path; expected root/<class>/<image>)");
  }
  for (const auto& entry : fs::directory_iterator(root)) {
    if (entry.is_directory()) classes_.push_back(entry.path().filename().string());
  }
  std::sort(classes_.begin(), classes_.end());
  static const std::vector<std::string> kExtensions = {".jpg", ".jpeg", ".png", ".bmp",
                                                       ".webp", ".tif", ".tiff", ".ppm"};
  for (size_t label = 0; label < classes_.size(); ++label) {
    std::vector<std::string> paths;
    // Nested folders count too, as in torchvision's ImageFolder.
    for (const auto& entry : fs::recursive_directory_iterator(fs::path(root) / classes_[label])) {
      std::string ext = entry.path().extension().string();
      std::transform(ext.begin(), ext.end(), ext.begin(), ::tolower);
      if (entry.is_regular_file() &&
          std::find(kExtensions.begin(), kExtensions.end(), ext) != kExtensions.end()) {
        paths.push_back(entry.path().string());
      }
    }
    if (paths.empty()) {
      throw IoError("image folder '" + root + "': class folder '" + classes_[label] +
                    "' holds no images (remove it, or it would be a class without examples)");
    }
    std::sort(paths.begin(), paths.end());
    for (auto& p : paths) files_.emplace_back(std::move(p), static_cast<int64_t>(label));
  }
  if (classes_.empty()) {
    throw IoError("image folder '" + root + "' holds no class sub-folders (expected root/<class>/<image>)");
  }
  if (limit > 0 && limit < size()) files_.resize(limit);
}

Batch ImageFolder::get_batch(const std::vector<int64_t>& indices) const {
  const int64_t n = static_cast<int64_t>(indices.size()), s = image_size_;
  auto pixels = at::empty({n, s, s, 3}, at::TensorOptions().dtype(at::kByte));
  auto labels = at::empty({n}, at::TensorOptions().dtype(at::kLong));
  for (int64_t i = 0; i < n; ++i) {
    const auto& [path, label] = files_.at(indices[i]);
    cv::Mat bgr = cv::imread(path, cv::IMREAD_COLOR);
    if (bgr.empty()) throw IoError("cannot decode image '" + path + "' (corrupt or unsupported)");
    cv::Mat rgb;
    cv::cvtColor(bgr, rgb, cv::COLOR_BGR2RGB);  // checkpoints trained with PIL expect RGB
    cv::Mat crop = center_crop_adm(rgb, s);
    std::memcpy(pixels[i].data_ptr(), crop.data, static_cast<size_t>(s * s * 3));
    labels[i] = label;
  }
  // [N, S, S, 3] uint8 -> [N, 3, S, S] in [-1, 1]
  Batch batch;
  batch.images = pixels.permute({0, 3, 1, 2}).to(at::kFloat).div_(127.5).sub_(1.0).contiguous();
  batch.labels = labels;
  return batch;
}

}  // namespace ditlab
#endif  // DITLAB_WITH_OPENCV
