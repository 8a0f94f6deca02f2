#include <catch2/catch.hpp>

#include <algorithm>
#include <numeric>

#include "data/held_out_split.h"

using namespace ditlab;

TEST_CASE("a held-out split spreads evenly over the dataset and leaves the rest to train", "[data]") {
  // 10 classes of 100 images in class order (as an image folder): 100 held out take 10 of each.
  const HeldOutSplit split = even_held_out_split(1000, 100);
  REQUIRE(split.held_out.size() == 100);
  REQUIRE(split.training.size() == 900);
  for (int64_t k = 0; k < 100; ++k) CHECK(split.held_out[k] == k * 1000 / 100);
  std::vector<int> per_class(10, 0);
  for (int64_t i : split.held_out) ++per_class[i / 100];
  CHECK(std::all_of(per_class.begin(), per_class.end(), [](int n) { return n == 10; }));
  // Together they are every index once.
  std::vector<int64_t> all = split.held_out;
  all.insert(all.end(), split.training.begin(), split.training.end());
  std::sort(all.begin(), all.end());
  std::vector<int64_t> expected(1000);
  std::iota(expected.begin(), expected.end(), 0);
  CHECK(all == expected);
  // Uneven counts: floor(k * 7 / 3) = 0, 2, 4.
  CHECK(even_held_out_split(7, 3).held_out == std::vector<int64_t>{0, 2, 4});
  CHECK(even_held_out_split(5, 5).training.empty());
  CHECK(even_held_out_split(5, 0).held_out.empty());
}
