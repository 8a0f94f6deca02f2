#include "src/io/image_grid.h"

#include <ATen/ATen.h>

#include "src/common/error.h"
#include "src/io/atomic_file.h"
#ifdef DITLAB_WITH_OPENCV
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>
#endif

namespace ditlab {

at::Tensor make_image_grid(const at::Tensor& images, int64_t columns, int64_t upscale) {
  if (images.dim() != 4 || (images.size(1) != 1 && images.size(1) != 3)) {
    throw ShapeError("an image grid needs images [N, 1 or 3, H, W]");
  }
  constexpr int64_t kBorder = 2;
  const int64_t n = images.size(0), c = images.size(1);
  const int64_t h = images.size(2) * upscale, w = images.size(3) * upscale;
  const int64_t rows = (n + columns - 1) / columns;
  auto pixels = ((images.detach().to(at::kCPU, at::kFloat).clamp(-1, 1) + 1) * 127.5).round();
  if (upscale > 1) pixels = pixels.repeat_interleave(upscale, 2).repeat_interleave(upscale, 3);
  // A light grey background between the tiles.
  auto grid = at::full({c, rows * (h + kBorder) + kBorder, columns * (w + kBorder) + kBorder}, 200.0);
  for (int64_t i = 0; i < n; ++i) {
    int64_t r = i / columns, col = i % columns;
    grid.narrow(1, kBorder + r * (h + kBorder), h)
        .narrow(2, kBorder + col * (w + kBorder), w)
        .copy_(pixels[i]);
  }
  return grid.permute({1, 2, 0}).to(at::kByte).contiguous();  // [H', W', C]
}

void write_image_grid(const std::string& path, const at::Tensor& images, int64_t columns) {
#ifdef DITLAB_WITH_OPENCV
  // Tiles of at least 64 pixels, so 32x32 samples are not postage stamps.
  int64_t upscale = std::max<int64_t>(1, 64 / std::max<int64_t>(1, images.size(3)));
  auto grid = make_image_grid(images, columns, upscale);
  cv::Mat mat(static_cast<int>(grid.size(0)), static_cast<int>(grid.size(1)),
              grid.size(2) == 3 ? CV_8UC3 : CV_8UC1, grid.data_ptr());
  if (grid.size(2) == 3) cv::cvtColor(mat, mat, cv::COLOR_RGB2BGR);
  std::vector<uchar> png;
  if (!cv::imencode(".png", mat, png)) throw IoError("cannot encode PNG for '" + path + "'");
  write_file_atomically(path, std::string(png.begin(), png.end()));
#else
  throw IoError("cannot write '" + path + "': this build has no OpenCV (DITLAB_WITH_OPENCV=OFF); "
                "write samples as .safetensors instead");
#endif
}

}  // namespace ditlab
