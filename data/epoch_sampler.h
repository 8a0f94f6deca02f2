// Which images form the global batch of each step: a pure function of (seed, epoch, step), so it
// needs no state beyond the step to resume, and every rank computes the same order.
// Each epoch is a fresh seeded permutation; the last incomplete batch of an epoch is dropped.
#pragma once
#include <cstdint>
#include <vector>

#include <ATen/core/Tensor.h>

namespace ditlab {

class EpochSampler {
 public:
  EpochSampler(int64_t dataset_size, int64_t global_batch_size, uint64_t seed);

  int64_t steps_per_epoch() const { return steps_per_epoch_; }
  int64_t epoch_of(int64_t step) const { return step / steps_per_epoch_; }

  // Dataset indices of the global batch at `step` (0-based).
  std::vector<int64_t> global_batch(int64_t step);

 private:
  const at::Tensor& permutation(int64_t epoch);

  int64_t dataset_size_, global_batch_size_, steps_per_epoch_;
  uint64_t seed_;
  int64_t cached_epoch_ = -1;
  at::Tensor cached_permutation_;
};

}  // namespace ditlab
