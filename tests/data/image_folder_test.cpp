#ifdef DITLAB_WITH_OPENCV
#include <catch2/catch.hpp>

#include <ATen/ATen.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <opencv2/imgcodecs.hpp>
#include <utility>
#include <vector>

#include "data/image_folder.h"
#include "src/common/error.h"
#include "tests/test_support.h"

using namespace ditlab;
using ditlab::testing::TempDir;

namespace {

// R = 7x + 13y, G = x^2 + 3y, B = 37 (x xor y), each mod 256: detail at every scale, no RNG.
// numpy: y, x = np.mgrid[0:h, 0:w]; np.stack([(7*x + 13*y) % 256, (x*x + 3*y) % 256,
//                                             ((x ^ y) * 37) % 256], -1).astype(np.uint8)
cv::Mat pattern(int width, int height) {
  cv::Mat image(height, width, CV_8UC3);
  for (int y = 0; y < height; ++y) {
    for (int x = 0; x < width; ++x) {
      uint8_t* p = image.ptr<uint8_t>(y) + 3 * x;
      p[0] = static_cast<uint8_t>((7 * x + 13 * y) % 256);
      p[1] = static_cast<uint8_t>((x * x + 3 * y) % 256);
      p[2] = static_cast<uint8_t>(((x ^ y) * 37) % 256);
    }
  }
  return image;
}

// The byte sum and the sum weighted by (i mod 251) + 1 over the row-major [H, W, C] bytes: any
// changed or moved pixel changes one of them.
//   flat = a.reshape(-1).astype(np.uint64)
//   (flat.sum(), (flat * (np.arange(flat.size) % 251 + 1)).sum())
std::pair<uint64_t, uint64_t> checksums(const cv::Mat& image) {
  uint64_t sum = 0, weighted = 0, i = 0;
  for (int y = 0; y < image.rows; ++y) {
    const uint8_t* row = image.ptr<uint8_t>(y);
    for (int v = 0; v < image.cols * image.channels(); ++v, ++i) {
      sum += row[v];
      weighted += row[v] * (i % 251 + 1);
    }
  }
  return {sum, weighted};
}

std::vector<int> rgb_at(const cv::Mat& image, int y, int x) {
  const uint8_t* p = image.ptr<uint8_t>(y) + 3 * x;
  return {p[0], p[1], p[2]};
}

}  // namespace

TEST_CASE("image folders number classes in sorted order and crop to the target size", "[data]") {
  TempDir dir("if");
  namespace fs = std::filesystem;
  // Class "b" holds red images, class "a" blue ones (OpenCV writes BGR).
  for (const auto& [cls, bgr] : {std::pair<std::string, cv::Scalar>{"b_red", {0, 0, 255}},
                                 {"a_blue", {255, 0, 0}}}) {
    fs::create_directories(fs::path(dir.path()) / cls);
    for (int i = 0; i < 2; ++i) {
      cv::Mat image(40 + 20 * i, 60, CV_8UC3, bgr);  // not square
      cv::imwrite(dir / (cls + "/" + std::to_string(i) + ".png"), image);
    }
  }
  std::ofstream(dir / "a_blue/notes.txt") << "ignored";
  ImageFolder folder(dir.path(), 16, 0);
  CHECK(folder.size() == 4);
  CHECK(folder.num_classes() == 2);
  CHECK(folder.classes() == std::vector<std::string>{"a_blue", "b_red"});
  auto batch = folder.get_batch({0, 3});
  CHECK(batch.images.sizes() == at::IntArrayRef({2, 3, 16, 16}));
  CHECK(batch.labels[0].item<int64_t>() == 0);
  CHECK(batch.labels[1].item<int64_t>() == 1);
  // RGB order: the blue image has its third channel at +1, the red one its first.
  CHECK(batch.images[0][2].mean().item<float>() == Approx(1.0f));
  CHECK(batch.images[0][0].mean().item<float>() == Approx(-1.0f));
  CHECK(batch.images[1][0].mean().item<float>() == Approx(1.0f));
}

TEST_CASE("ADM centre crop halves large images, then resizes the short side", "[data]") {
  cv::Mat big(300, 500, CV_8UC3, cv::Scalar(10, 20, 30));
  cv::Mat crop = center_crop_adm(big, 64);
  CHECK(crop.rows == 64);
  CHECK(crop.cols == 64);
  CHECK(crop.at<cv::Vec3b>(32, 32)[2] == 30);
}

// The expected values below come from DiT's center_crop_arr (train.py) run with Pillow 9.4.0
// (Debian 12's python3-pil) on the same pixels:
//   def center_crop_arr(pil_image, image_size):
//       while min(*pil_image.size) >= 2 * image_size:
//           pil_image = pil_image.resize(tuple(x // 2 for x in pil_image.size), resample=Image.BOX)
//       scale = image_size / min(*pil_image.size)
//       pil_image = pil_image.resize(tuple(round(x * scale) for x in pil_image.size),
//                                    resample=Image.BICUBIC)
//       arr = np.array(pil_image)
//       crop_y = (arr.shape[0] - image_size) // 2
//       crop_x = (arr.shape[1] - image_size) // 2
//       return arr[crop_y: crop_y + image_size, crop_x: crop_x + image_size]
TEST_CASE("ADM centre crop matches DiT's center_crop_arr with Pillow on stripes", "[data]") {
  // a = np.zeros((63, 63, 3), np.uint8); a[:, 1::2] = 255; center_crop_arr(Image.fromarray(a), 32)
  // No halving (63 < 64); BICUBIC 63 -> 32 on both axes. Every row and channel is the same.
  cv::Mat stripes(63, 63, CV_8UC3, cv::Scalar(0, 0, 0));
  for (int x = 1; x < 63; x += 2) stripes.col(x).setTo(cv::Scalar(255, 255, 255));
  cv::Mat crop = center_crop_adm(stripes, 32);
  REQUIRE(crop.rows == 32);
  REQUIRE(crop.cols == 32);
  const std::vector<int> expected = {109, 129, 128, 128, 128, 128, 128, 128, 128, 127, 127,
                                     128, 128, 128, 127, 127, 127, 127, 128, 128, 128, 127,
                                     127, 128, 128, 128, 128, 128, 128, 128, 129, 109};
  for (int y = 0; y < 32; ++y) {
    for (int x = 0; x < 32; ++x) {
      INFO("pixel (" << y << ", " << x << ")");
      CHECK(rgb_at(crop, y, x) == std::vector<int>(3, expected[x]));
    }
  }
}

TEST_CASE("ADM centre crop matches DiT's center_crop_arr with Pillow on odd sizes", "[data]") {
  struct Case {
    int width, height, size;
    std::pair<uint64_t, uint64_t> sums;
    std::vector<std::pair<int, int>> where;  // (y, x)
    std::vector<std::vector<int>> rgb;
  };
  const std::vector<Case> cases = {
      // No halving; BICUBIC to 52 x 48: 70 * 0.75 = 52.5 rounds half to even (std::round: 53,
      // whose crop sums to (869323, 109019197)).
      {70, 64, 48, {868833, 108864295}, {{0, 0}, {47, 47}, {5, 17}, {24, 16}},
       {{22, 9, 106}, {76, 146, 98}, {21, 177, 51}, {77, 193, 30}}},
      // Portrait: BOX-halved to 75 x 100, then BICUBIC to 64 x 85, cropped at y = 10.
      {150, 200, 64, {1575827, 198361937}, {{0, 0}, {63, 63}, {5, 17}, {32, 21}},
       {{64, 74, 140}, {213, 163, 63}, {197, 154, 180}, {108, 138, 144}}},
      // Halved twice: 257 x 150, then 128 x 75 (halving 257 puts a box edge on a pixel centre;
      // a box closed at the other end, as before Pillow 7.0, would sum to (1574405, 198226676)),
      // then BICUBIC to 109 x 64.
      {514, 300, 64, {1574364, 198217796}, {{0, 0}, {63, 63}, {5, 17}, {32, 21}},
       {{153, 130, 91}, {61, 123, 126}, {84, 163, 88}, {62, 120, 127}}},
  };
  for (const auto& c : cases) {
    INFO(c.width << "x" << c.height << " -> " << c.size);
    cv::Mat crop = center_crop_adm(pattern(c.width, c.height), c.size);
    REQUIRE(crop.rows == c.size);
    REQUIRE(crop.cols == c.size);
    const auto sums = checksums(crop);
    CHECK(sums.first == c.sums.first);
    CHECK(sums.second == c.sums.second);
    for (size_t i = 0; i < c.where.size(); ++i) {
      INFO("pixel (" << c.where[i].first << ", " << c.where[i].second << ")");
      CHECK(rgb_at(crop, c.where[i].first, c.where[i].second) == c.rgb[i]);
    }
  }
}

TEST_CASE("image folders list files in torchvision's order and follow folder links", "[data]") {
  // torchvision's make_dataset: for each class, sorted(os.walk(class_dir, followlinks=True)),
  // each folder's names sorted. Folders sort by path, so c/a-b comes between c/a and c/a/deep
  // ('-' sorts before '/'), and c's own b.png before c/a/x.png. Checked with that Python on the
  // same tree (without the loop, which Python would follow 40 levels deep).
  namespace fs = std::filesystem;
  TempDir dir("if");
  const fs::path root = fs::path(dir.path()) / "root", outside = fs::path(dir.path()) / "outside";
  for (const char* sub : {"c/a/deep", "c/a-b", "d"}) fs::create_directories(root / sub);
  fs::create_directories(outside);
  cv::Mat image(8, 8, CV_8UC3, cv::Scalar(0, 0, 0));
  for (const char* name : {"c/b.png", "c/a/x.png", "c/a/deep/w.png", "c/a-b/z.png"}) {
    REQUIRE(cv::imwrite((root / name).string(), image));
  }
  fs::rename(root / "c/a-b/z.png", root / "c/a-b/z.PNG");  // extensions in any case
  REQUIRE(cv::imwrite((outside / "y.jpg").string(), image));
  fs::create_directory_symlink(outside, root / "c/link");  // followed
  fs::create_directory_symlink("..", root / "c/a/loop");   // back to c: not entered again
  std::ofstream((root / "c/notes.txt").string()) << "ignored";
  // A .pgm (in torchvision's IMG_EXTENSIONS) is an image; grey becomes R = G = B, as PIL's
  // convert("RGB") does.
  REQUIRE(cv::imwrite((root / "d/g.pgm").string(), cv::Mat(8, 8, CV_8UC1, cv::Scalar(200))));

  ImageFolder folder(root.string(), 8, 0);
  std::vector<std::string> paths, expected_paths;
  std::vector<int64_t> labels;
  for (const auto& [path, label] : folder.files()) {
    paths.push_back(path);
    labels.push_back(label);
  }
  for (const char* name :
       {"c/b.png", "c/a/x.png", "c/a-b/z.PNG", "c/a/deep/w.png", "c/link/y.jpg", "d/g.pgm"}) {
    expected_paths.push_back((root / name).string());
  }
  CHECK(paths == expected_paths);
  CHECK(labels == std::vector<int64_t>{0, 0, 0, 0, 0, 1});
  auto batch = folder.get_batch({5});
  CHECK(batch.labels[0].item<int64_t>() == 1);
  CHECK(batch.images.min().item<float>() == Approx(200 / 127.5 - 1));
  CHECK(batch.images.max().item<float>() == Approx(200 / 127.5 - 1));
}

TEST_CASE("broken image folders are errors naming the path", "[data]") {
  TempDir dir("if");
  CHECK_THROWS_WITH(ImageFolder(dir / "none", 16, 0), Catch::Contains("none"));
  CHECK_THROWS_WITH(ImageFolder(dir.path(), 16, 0), Catch::Contains("no class sub-folders"));
  std::filesystem::create_directories(dir / "empty");
  CHECK_THROWS_WITH(ImageFolder(dir.path(), 16, 0), Catch::Contains("'empty' holds no images"));
  std::filesystem::remove(dir / "empty");
  std::filesystem::create_directories(dir / "c");
  std::ofstream(dir / "c/broken.png") << "not a png";
  ImageFolder folder(dir.path(), 16, 0);
  CHECK_THROWS_WITH(folder.get_batch({0}), Catch::Contains("broken.png"));
}
#endif
