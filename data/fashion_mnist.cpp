#include "data/fashion_mnist.h"

#include <ATen/ATen.h>
#include <zlib.h>

#include <filesystem>

#include "src/common/error.h"

namespace ditlab {
namespace fs = std::filesystem;

at::Tensor read_idx_gz(const std::string& path) {
  if (!fs::exists(path)) {
    throw IoError("Fashion-MNIST file not found: '" + path +
                  "' (install Debian's dataset-fashion-mnist, or set data.path)");
  }
  gzFile file = gzopen(path.c_str(), "rb");
  if (!file) throw IoError("cannot open '" + path + "'");
  std::vector<uint8_t> bytes;
  uint8_t chunk[1 << 16];
  int n = 0;
  while ((n = gzread(file, chunk, sizeof(chunk))) > 0) bytes.insert(bytes.end(), chunk, chunk + n);
  int error = 0;
  const char* message = gzerror(file, &error);
  std::string why = message ? message : "";
  gzclose(file);
  if (n < 0 || (error != Z_OK && error != Z_STREAM_END)) {
    throw IoError("'" + path + "' is not a readable gzip file: " + why);
  }
  auto be32 = [&](size_t at) {
    return (uint32_t(bytes[at]) << 24) | (uint32_t(bytes[at + 1]) << 16) |
           (uint32_t(bytes[at + 2]) << 8) | uint32_t(bytes[at + 3]);
  };
  // IDX: two zero bytes, a type byte (0x08 = uint8), the number of dimensions, then each size.
  if (bytes.size() < 4 || bytes[0] != 0 || bytes[1] != 0 || bytes[2] != 0x08) {
    throw IoError("'" + path + "' is not an IDX file of uint8 values");
  }
  const size_t dims = bytes[3];
  if (dims < 1 || bytes.size() < 4 + 4 * dims) throw IoError("'" + path + "': truncated IDX header");
  std::vector<int64_t> shape;
  size_t count = 1;
  for (size_t d = 0; d < dims; ++d) {
    shape.push_back(be32(4 + 4 * d));
    count *= static_cast<size_t>(shape.back());
  }
  const size_t offset = 4 + 4 * dims;
  if (bytes.size() != offset + count) {
    throw IoError("'" + path + "': IDX header promises " + std::to_string(count) +
                  " values, the file holds " + std::to_string(bytes.size() - offset) +
                  " (truncated or corrupt)");
  }
  auto out = at::empty(shape, at::TensorOptions().dtype(at::kByte));
  std::memcpy(out.data_ptr(), bytes.data() + offset, count);
  return out;
}

namespace {
// 28x28 -> SxS: centred zero padding when S >= 28 (32 is the DiT-friendly default), area
// resampling otherwise.
at::Tensor fit_size(const at::Tensor& images, int64_t size) {
  const int64_t src = images.size(-1);
  if (size == src) return images;
  if (size > src) {
    const int64_t before = (size - src) / 2, after = size - src - before;
    return at::constant_pad_nd(images, {before, after, before, after}, 0);
  }
  auto resized = at::adaptive_avg_pool2d(images.to(at::kFloat), {size, size});
  return resized.round().clamp(0, 255).to(at::kByte);
}
}  // namespace

FashionMnist::FashionMnist(const std::string& folder, const std::string& split,
                           int64_t image_size, int64_t limit) {
  std::vector<std::string> prefixes;
  if (split == "train" || split == "all") prefixes.push_back("train");
  if (split == "test" || split == "all") prefixes.push_back("t10k");
  if (prefixes.empty()) throw ConfigError("data.split '" + split + "': expected train, test or all");
  std::vector<at::Tensor> images, labels;
  for (const auto& prefix : prefixes) {
    std::string image_path = (fs::path(folder) / (prefix + "-images-idx3-ubyte.gz")).string();
    std::string label_path = (fs::path(folder) / (prefix + "-labels-idx1-ubyte.gz")).string();
    auto im = read_idx_gz(image_path);
    auto lb = read_idx_gz(label_path);
    if (im.dim() != 3 || lb.dim() != 1 || im.size(0) != lb.size(0)) {
      throw IoError("'" + image_path + "' and '" + label_path +
                    "' do not hold matching images [N, 28, 28] and labels [N]");
    }
    if (lb.max().item<int64_t>() >= 10) throw IoError("'" + label_path + "': label >= 10");
    images.push_back(im);
    labels.push_back(lb.to(at::kLong));
  }
  images_ = at::cat(images, 0);
  labels_ = at::cat(labels, 0);
  if (limit > 0 && limit < images_.size(0)) {
    images_ = images_.narrow(0, 0, limit);
    labels_ = labels_.narrow(0, 0, limit);
  }
  images_ = fit_size(images_.unsqueeze(1), image_size).contiguous();  // [N, 1, S, S]
}

Batch FashionMnist::get_batch(const std::vector<int64_t>& indices) const {
  auto index = at::tensor(indices, at::TensorOptions().dtype(at::kLong));
  // One gather of uint8 pixels, then one conversion to [-1, 1] floats.
  auto pixels = images_.index_select(0, index);
  Batch batch;
  batch.images = pixels.to(at::kFloat).div_(127.5).sub_(1.0);
  batch.labels = labels_.index_select(0, index);
  return batch;
}

const std::vector<std::string>& FashionMnist::class_names() {
  static const std::vector<std::string> names = {"T-shirt/top", "Trouser", "Pullover", "Dress",
                                                 "Coat",        "Sandal",  "Shirt",    "Sneaker",
                                                 "Bag",         "Ankle boot"};
  return names;
}

}  // namespace ditlab
