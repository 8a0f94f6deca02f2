#include "data/fashion_mnist.h"

#include <ATen/ATen.h>
#include <zlib.h>

#include <algorithm>
#include <filesystem>
#include <memory>
#include <vector>

#include "src/common/error.h"

namespace ditlab {
namespace fs = std::filesystem;

namespace {

// At most 2^32 values (4 GiB): far beyond any IDX dataset (Fashion-MNIST's train images are 47M),
// and a bound on what a crafted header can make us allocate.
constexpr uint64_t kMaxIdxValues = uint64_t{1} << 32;

using GzFile = std::unique_ptr<gzFile_s, int (*)(gzFile)>;

// Up to `size` decompressed bytes into `out`; fewer only where the stream ends.
size_t read_gz(gzFile file, const std::string& path, uint8_t* out, size_t size) {
  size_t done = 0;
  while (done < size) {
    // gzread takes an unsigned count and returns an int: at most 1 GiB per call.
    const auto want = static_cast<unsigned>(std::min<size_t>(size - done, size_t{1} << 30));
    const int n = gzread(file, out + done, want);
    if (n <= 0) {
      int error = Z_OK;
      const char* message = gzerror(file, &error);
      if (n < 0 || (error != Z_OK && error != Z_STREAM_END)) {
        throw IoError("'" + path + "' is not a readable gzip file: " + (message ? message : ""));
      }
      break;
    }
    done += static_cast<size_t>(n);
  }
  return done;
}

}  // namespace

at::Tensor read_idx_gz(const std::string& path) {
  if (!fs::exists(path)) {
    throw IoError("Fashion-MNIST file not found: '" + path +
                  "' (install Debian's dataset-fashion-mnist, or set data.path)");
  }
  GzFile file(gzopen(path.c_str(), "rb"), gzclose);
  if (!file) throw IoError("cannot open '" + path + "'");
  // IDX: two zero bytes, a type byte (0x08 = uint8), the number of dimensions, then each size as
  // a big-endian uint32. The header is read first and then exactly the values it promises, so a
  // small file that decompresses without end cannot make us allocate without bound.
  uint8_t magic[4];
  if (read_gz(file.get(), path, magic, 4) < 4 || magic[0] != 0 || magic[1] != 0 ||
      magic[2] != 0x08) {
    throw IoError("'" + path + "' is not an IDX file of uint8 values");
  }
  const size_t dims = magic[3];
  std::vector<uint8_t> sizes(4 * dims);
  if (dims < 1 || read_gz(file.get(), path, sizes.data(), sizes.size()) < sizes.size()) {
    throw IoError("'" + path + "': truncated IDX header");
  }
  std::vector<int64_t> shape;
  std::string shape_text;
  uint64_t count = 1;
  for (size_t d = 0; d < dims; ++d) {
    const uint8_t* be = sizes.data() + 4 * d;
    const uint64_t dim =
        (uint64_t{be[0]} << 24) | (uint64_t{be[1]} << 16) | (uint64_t{be[2]} << 8) | be[3];
    shape.push_back(static_cast<int64_t>(dim));
    shape_text += (d ? ", " : "") + std::to_string(dim);
    // Checked: an unchecked product wraps (2^22 * 2^22 * 2^20 = 0 in 64 bits).
    if (dim != 0 && count > kMaxIdxValues / dim) {
      throw IoError("'" + path + "': IDX dimensions [" + shape_text +
                    (d + 1 < dims ? ", ..." : "") + "] hold more than 2^32 values (corrupt header)");
    }
    count *= dim;
  }
  auto out = at::empty(shape, at::TensorOptions().dtype(at::kByte));
  const size_t got = read_gz(file.get(), path, out.data_ptr<uint8_t>(), count);
  uint8_t extra = 0;
  if (got != count || read_gz(file.get(), path, &extra, 1) != 0) {
    throw IoError("'" + path + "': IDX header promises " + std::to_string(count) +
                  " values, the file holds " + (got < count ? std::to_string(got) : "more") +
                  " (truncated or corrupt)");
  }
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
    // Fashion-MNIST's images are 28x28; fit_size pads or resizes square images only.
    if (im.dim() != 3 || lb.dim() != 1 || im.size(0) != lb.size(0) || im.size(1) != 28 ||
        im.size(2) != 28) {
      throw IoError("'" + image_path + "' and '" + label_path +
                    "' do not hold matching images [N, 28, 28] and labels [N]");
    }
    if (lb.numel() > 0 && lb.max().item<int64_t>() >= 10) throw IoError("'" + label_path + "': label >= 10");
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
