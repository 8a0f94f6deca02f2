#include "data/held_out_split.h"

#include "src/common/error.h"

namespace ditlab {

HeldOutSplit even_held_out_split(int64_t size, int64_t count) {
  DITLAB_ASSERT(count >= 0 && count <= size, "even_held_out_split: ", count, " of ", size);
  HeldOutSplit split;
  split.held_out.reserve(static_cast<size_t>(count));
  split.training.reserve(static_cast<size_t>(size - count));
  for (int64_t i = 0, next = 0; i < size; ++i) {
    const bool held = static_cast<int64_t>(split.held_out.size()) < count && i == next;
    (held ? split.held_out : split.training).push_back(i);
    if (held) next = (static_cast<int64_t>(split.held_out.size()) * size) / count;
  }
  return split;
}

}  // namespace ditlab
