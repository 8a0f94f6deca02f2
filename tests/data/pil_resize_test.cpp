// pil_resize against Pillow. Every expected value was computed once with Pillow 9.4.0 (Debian
// 12's python3-pil), on mode "L" images (one channel; RGB runs the same arithmetic per channel):
//   from PIL import Image; import numpy as np
//   L = lambda v, w, h: Image.fromarray(np.array(v, np.uint8).reshape(h, w), "L")
//   np.array(L(values, w, h).resize((out_w, out_h), Image.BOX or Image.BICUBIC)).ravel().tolist()
#ifdef DITLAB_WITH_OPENCV
#include <catch2/catch.hpp>

#include <cstdint>
#include <opencv2/core.hpp>
#include <vector>

#include "data/pil_resize.h"

using namespace ditlab;

namespace {

// A one-channel image of `width` x `height` from row-major values.
cv::Mat gray(const std::vector<int>& values, int width, int height) {
  cv::Mat image(height, width, CV_8UC1);
  for (int i = 0; i < width * height; ++i) image.data[i] = static_cast<uint8_t>(values[i]);
  return image;
}

std::vector<int> values_of(const cv::Mat& image) {
  std::vector<int> values;
  for (int y = 0; y < image.rows; ++y) {
    const uint8_t* row = image.ptr<uint8_t>(y);
    values.insert(values.end(), row, row + image.cols * image.channels());
  }
  return values;
}

}  // namespace

TEST_CASE("BOX takes Pillow's half-open box where a box edge meets a pixel centre", "[data]") {
  // 9 -> 4: scale 2.25; output 1 spans [2.25, 4.5], whose right end is pixel 4's centre.
  // Pillow's box is 1 on (-0.5, 0.5], so output 1 averages pixels 2, 3, 4 (60, 90, 120) to 90;
  // the box [-0.5, 0.5) of Pillow before 7.0 would leave pixel 4 out and give 75.
  // L(list(range(0, 270, 30)), 9, 1).resize((4, 1), Image.BOX)
  cv::Mat ramp = gray({0, 30, 60, 90, 120, 150, 180, 210, 240}, 9, 1);
  CHECK(values_of(pil_resize(ramp, 4, 1, PilFilter::kBox)) == std::vector<int>{15, 90, 165, 225});
}

TEST_CASE("BICUBIC upscales with Pillow's a = -0.5 kernel and clips to 0 ... 255", "[data]") {
  // L([0, 0, 255, 255], 4, 1).resize((9, 1), Image.BICUBIC)
  cv::Mat step = gray({0, 0, 255, 255}, 4, 1);
  CHECK(values_of(pil_resize(step, 9, 1, PilFilter::kBicubic)) ==
        std::vector<int>{0, 0, 0, 8, 128, 247, 255, 255, 255});
}

TEST_CASE("BICUBIC downscales with Pillow's antialiasing (the kernel widened by the scale)",
          "[data]") {
  // 63 alternating columns 0, 255, 0, ... -> 32: a 4-tap kernel (OpenCV's INTER_CUBIC) would
  // alias the stripes; Pillow's 8-tap kernel averages them to about 128.
  // a = np.zeros((1, 63), np.uint8); a[:, 1::2] = 255
  // Image.fromarray(a, "L").resize((32, 1), Image.BICUBIC)
  std::vector<int> stripes(63);
  for (int x = 0; x < 63; ++x) stripes[x] = x % 2 == 1 ? 255 : 0;
  CHECK(values_of(pil_resize(gray(stripes, 63, 1), 32, 1, PilFilter::kBicubic)) ==
        std::vector<int>{109, 129, 128, 128, 128, 128, 128, 128, 128, 127, 127,
                         128, 128, 128, 127, 127, 127, 127, 128, 128, 128, 127,
                         127, 128, 128, 128, 128, 128, 128, 128, 129, 109});
}

TEST_CASE("pil_resize resamples only the axes whose size changes", "[data]") {
  // A column of 5 -> 3 (BICUBIC) and -> 2 (BOX): the vertical pass alone.
  // L([0, 255, 0, 255, 100], 1, 5).resize((1, 3), Image.BICUBIC) and .resize((1, 2), Image.BOX)
  cv::Mat column = gray({0, 255, 0, 255, 100}, 1, 5);
  CHECK(values_of(pil_resize(column, 1, 3, PilFilter::kBicubic)) ==
        std::vector<int>{106, 122, 164});
  CHECK(values_of(pil_resize(column, 1, 2, PilFilter::kBox)) == std::vector<int>{85, 178});
  // The same size is a copy.
  cv::Mat same = pil_resize(column, 1, 5, PilFilter::kBicubic);
  CHECK(values_of(same) == values_of(column));
  CHECK(same.data != column.data);
}

TEST_CASE("pil_resize treats every channel alike", "[data]") {
  // Each channel of a 3- or 4-channel image is what the channel alone gives.
  for (int channels : {3, 4}) {
    INFO(channels << " channels");
    cv::Mat image(11, 13, CV_8UC(channels));
    for (int y = 0; y < image.rows; ++y) {
      for (int x = 0; x < image.cols * channels; ++x) {
        image.ptr<uint8_t>(y)[x] = static_cast<uint8_t>((x * 29 + y * 71) % 256);
      }
    }
    for (PilFilter filter : {PilFilter::kBox, PilFilter::kBicubic}) {
      cv::Mat resized = pil_resize(image, 6, 17, filter);
      REQUIRE(resized.type() == image.type());
      std::vector<cv::Mat> planes, resized_planes;
      cv::split(image, planes);
      cv::split(resized, resized_planes);
      for (int c = 0; c < channels; ++c) {
        CHECK(values_of(resized_planes[c]) == values_of(pil_resize(planes[c], 6, 17, filter)));
      }
    }
  }
}
#endif
