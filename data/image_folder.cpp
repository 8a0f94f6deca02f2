#ifdef DITLAB_WITH_OPENCV
#include "data/image_folder.h"

#include <ATen/ATen.h>
#include <sys/stat.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>
#include <system_error>

#include "data/pil_resize.h"
#include "src/common/error.h"

namespace ditlab {
namespace fs = std::filesystem;
namespace {

// torchvision's IMG_EXTENSIONS (all of which OpenCV decodes), matched as it matches them: the
// lower-cased name ends with one.
bool is_image_name(const std::string& name) {
  static const char* const kExtensions[] = {".jpg", ".jpeg", ".png", ".ppm", ".bmp",
                                            ".pgm", ".tif",  ".tiff", ".webp"};
  std::string lower = name;
  std::transform(lower.begin(), lower.end(), lower.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  for (const char* ext : kExtensions) {
    const size_t n = std::strlen(ext);
    if (lower.size() >= n && lower.compare(lower.size() - n, n, ext) == 0) return true;
  }
  return false;
}

// One folder as os.walk yields it: its path and the names in it that are not folders.
struct WalkedFolder {
  std::string path;
  std::vector<std::string> names;
};

// os.walk(dir, followlinks=True), top-down: links to folders are followed, and a name that is
// not a folder (a link to a file, a dangling link) is a file. `ancestors` holds the (device,
// inode) of the folders above; a link back to one of them is not entered (os.walk would go
// round the cycle until the system refuses the path, listing the same files at every level).
void walk(const fs::path& dir, std::vector<std::pair<dev_t, ino_t>>& ancestors,
          std::vector<WalkedFolder>& folders) {
  struct stat info;
  if (::stat(dir.c_str(), &info) != 0) {
    throw IoError("image folder: cannot read '" + dir.string() + "': " + std::strerror(errno));
  }
  const std::pair<dev_t, ino_t> id{info.st_dev, info.st_ino};
  if (std::find(ancestors.begin(), ancestors.end(), id) != ancestors.end()) return;
  WalkedFolder folder{dir.string(), {}};
  std::vector<fs::path> subfolders;
  std::error_code ec;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    std::error_code type_ec;  // a dangling link is not a folder, as for os.walk
    if (it->is_directory(type_ec)) {
      subfolders.push_back(it->path());
    } else {
      folder.names.push_back(it->path().filename().string());
    }
  }
  if (ec) {
    throw IoError("image folder: cannot list '" + dir.string() + "': " + ec.message() +
                  " (fix its permissions, or move it out of data.path)");
  }
  folders.push_back(std::move(folder));
  ancestors.push_back(id);
  for (const auto& sub : subfolders) walk(sub, ancestors, folders);
  ancestors.pop_back();
}

// A class's images in torchvision's order (make_dataset): folders sorted by path, which is not
// depth-first ("c/a", "c/a-b", "c/a/deep": '-' sorts before '/'), and each folder's names
// sorted. std::string compares bytes as unsigned, which is Python's code point order for UTF-8.
std::vector<std::string> class_images(const fs::path& class_dir) {
  std::vector<WalkedFolder> folders;
  std::vector<std::pair<dev_t, ino_t>> ancestors;
  walk(class_dir, ancestors, folders);
  std::sort(folders.begin(), folders.end(),
            [](const WalkedFolder& a, const WalkedFolder& b) { return a.path < b.path; });
  std::vector<std::string> paths;
  for (auto& folder : folders) {
    std::sort(folder.names.begin(), folder.names.end());
    for (const auto& name : folder.names) {
      if (is_image_name(name)) paths.push_back((fs::path(folder.path) / name).string());
    }
  }
  return paths;
}

}  // namespace

cv::Mat center_crop_adm(const cv::Mat& rgb, int64_t size) {
  const int s = static_cast<int>(size);
  cv::Mat image = rgb;
  while (std::min(image.cols, image.rows) >= 2 * s) {
    image = pil_resize(image, image.cols / 2, image.rows / 2, PilFilter::kBox);
  }
  // Python's round() rounds half to even (70 x 0.75 = 52.5 -> 52), as nearbyint does in the
  // default rounding mode; std::round would give 53.
  const double scale = static_cast<double>(s) / std::min(image.cols, image.rows);
  const int width = static_cast<int>(std::nearbyint(image.cols * scale));
  const int height = static_cast<int>(std::nearbyint(image.rows * scale));
  image = pil_resize(image, width, height, PilFilter::kBicubic);
  DITLAB_ASSERT(image.cols >= s && image.rows >= s, "centre crop: ", image.cols, "x", image.rows,
                " is smaller than ", s);
  const int x = (image.cols - s) / 2, y = (image.rows - s) / 2;
  return image(cv::Rect(x, y, s, s)).clone();
}

ImageFolder::ImageFolder(const std::string& root, int64_t image_size, int64_t limit)
    : image_size_(image_size) {
  if (!fs::is_directory(root)) {
    throw IoError("image folder not found: '" + root +
                  "' (data.path; expected root/<class>/<image>)");
  }
  // Classes: every entry that is a folder or a link to one (os.scandir's is_dir()), sorted.
  for (const auto& entry : fs::directory_iterator(root)) {
    std::error_code ec;
    if (entry.is_directory(ec)) classes_.push_back(entry.path().filename().string());
  }
  std::sort(classes_.begin(), classes_.end());
  for (size_t label = 0; label < classes_.size(); ++label) {
    std::vector<std::string> paths = class_images(fs::path(root) / classes_[label]);
    if (paths.empty()) {
      throw IoError("image folder '" + root + "': class folder '" + classes_[label] +
                    "' holds no images (remove it, or it would be a class without examples)");
    }
    for (auto& p : paths) files_.emplace_back(std::move(p), static_cast<int64_t>(label));
  }
  if (classes_.empty()) {
    throw IoError("image folder '" + root +
                  "' holds no class sub-folders (expected root/<class>/<image>)");
  }
  if (limit > 0 && limit < size()) files_.resize(limit);
}

Batch ImageFolder::get_batch(const std::vector<int64_t>& indices) const {
  const int64_t n = static_cast<int64_t>(indices.size()), s = image_size_;
  auto pixels = at::empty({n, s, s, 3}, at::TensorOptions().dtype(at::kByte));
  auto labels = at::empty({n}, at::TensorOptions().dtype(at::kLong));
  for (int64_t i = 0; i < n; ++i) {
    const auto& [path, label] = files_.at(indices[i]);
    // torchvision's pil_loader does not apply the EXIF orientation; neither does this.
    cv::Mat bgr = cv::imread(path, cv::IMREAD_COLOR | cv::IMREAD_IGNORE_ORIENTATION);
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
