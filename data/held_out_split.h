// A held-out set spread evenly over a dataset: image folders are sorted by class, so the last
// images would all be of the last classes (and those classes would never train).
#pragma once
#include <cstdint>
#include <vector>

namespace ditlab {

struct HeldOutSplit {
  std::vector<int64_t> held_out;  // `count` indices: floor(k * size / count), k = 0 .. count - 1
  std::vector<int64_t> training;  // the rest, ascending
};

// Requires 0 <= count <= size.
HeldOutSplit even_held_out_split(int64_t size, int64_t count);

}  // namespace ditlab
