#include "data/epoch_sampler.h"

#include <ATen/ATen.h>

#include "src/common/error.h"
#include "src/common/sample_rng.h"

namespace ditlab {

EpochSampler::EpochSampler(int64_t dataset_size, int64_t global_batch_size, uint64_t seed)
    : dataset_size_(dataset_size), global_batch_size_(global_batch_size), seed_(seed) {
  if (global_batch_size < 1 || dataset_size < global_batch_size) {
    throw ConfigError("train.global_batch_size " + std::to_string(global_batch_size) +
                      " does not fit a dataset of " + std::to_string(dataset_size) +
                      " images (it must be between 1 and the dataset size)");
  }
  steps_per_epoch_ = dataset_size / global_batch_size;
}

const at::Tensor& EpochSampler::permutation(int64_t epoch) {
  if (epoch != cached_epoch_) {
    // A generator of its own per epoch: the order never depends on how many draws came before.
    auto generator = sample_generator(seed_, kEpochOrderStream, static_cast<uint64_t>(epoch));
    cached_permutation_ = at::randperm(dataset_size_, generator, at::TensorOptions().dtype(at::kLong));
    cached_epoch_ = epoch;
  }
  return cached_permutation_;
}

std::vector<int64_t> EpochSampler::global_batch(int64_t step) {
  const auto& perm = permutation(epoch_of(step));
  const int64_t start = (step % steps_per_epoch_) * global_batch_size_;
  const int64_t* data = perm.data_ptr<int64_t>() + start;
  return {data, data + global_batch_size_};
}

}  // namespace ditlab
