// Sample grids as PNG (through OpenCV; builds without it raise a clear error instead).
#pragma once
#include <ATen/core/Tensor.h>

#include <string>

namespace ditlab {

// images [N, C, H, W] in [-1, 1] (C = 1 or 3), laid out row-major with `columns` per row and a
// 2-pixel border; upscaled (nearest) so that small images stay visible. Writes atomically.
void write_image_grid(const std::string& path, const at::Tensor& images, int64_t columns);

// The same layout as an uint8 [H', W', C] tensor (what the PNG holds), for tests.
at::Tensor make_image_grid(const at::Tensor& images, int64_t columns, int64_t upscale);

}  // namespace ditlab
