#ifdef DITLAB_WITH_OPENCV
#include <catch2/catch.hpp>

#include <ATen/ATen.h>

#include <filesystem>
#include <fstream>
#include <opencv2/imgcodecs.hpp>

#include "data/image_folder.h"
#include "src/common/error.h"
#include "tests/test_support.h"

using namespace ditlab;
using ditlab::testing::TempDir;

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
