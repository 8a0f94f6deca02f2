#include <catch2/catch.hpp>

#include <ATen/ATen.h>

#include "src/io/image_grid.h"

using namespace ditlab;

TEST_CASE("an image grid places tile i at row i / columns, column i % columns", "[image]") {
  // Five 2x2 grey images of levels -1, -0.5, 0, 0.5, 1 in a grid of 3 columns.
  auto images = at::linspace(-1, 1, 5).view({5, 1, 1, 1}).expand({5, 1, 2, 2}).contiguous();
  auto grid = make_image_grid(images, 3, /*upscale=*/1);
  // 2 rows x 3 columns of 2x2 tiles with a 2-pixel border: (2*4+2) x (3*4+2).
  REQUIRE(grid.sizes() == at::IntArrayRef({10, 14, 1}));
  auto pixel = [&](int64_t y, int64_t x) { return grid[y][x][0].item<uint8_t>(); };
  CHECK(pixel(2, 2) == 0);      // image 0: -1 -> 0
  CHECK(pixel(2, 6) == 64);     // image 1: -0.5 -> 63.75 rounds to 64
  CHECK(pixel(2, 10) == 128);   // image 2: 0 -> 127.5 rounds to 128
  CHECK(pixel(6, 2) == 191);    // image 3 starts the second row
  CHECK(pixel(6, 6) == 255);    // image 4
  CHECK(pixel(6, 10) == 200);   // no sixth image: background
  CHECK(pixel(0, 0) == 200);    // border
  auto big = make_image_grid(images, 3, 2);
  CHECK(big.sizes() == at::IntArrayRef({2 * 6 + 2, 3 * 6 + 2, 1}));
}
