#include "src/distributed/grad_reducer.h"

#include <ATen/ATen.h>
#include <torch/autograd.h>

namespace ditlab {

GradReducer::GradReducer(std::vector<at::Tensor> parameters, Communicator& communicator,
                         int64_t bucket_bytes)
    : parameters_(std::move(parameters)), communicator_(communicator) {
  std::vector<size_t> bucket;
  int64_t bytes = 0;
  for (size_t i = parameters_.size(); i-- > 0;) {
    const auto& p = parameters_[i];
    // A bucket holds one dtype; it closes when full.
    if (!bucket.empty() && (bytes >= bucket_bytes ||
                            parameters_[bucket.front()].scalar_type() != p.scalar_type())) {
      buckets_.push_back(std::move(bucket));
      bucket.clear();
      bytes = 0;
    }
    bucket.push_back(i);
    bytes += p.numel() * static_cast<int64_t>(p.element_size());
  }
  if (!bucket.empty()) buckets_.push_back(std::move(bucket));
}

void GradReducer::reduce() {
  if (communicator_.world_size() == 1) return;
  torch::NoGradGuard no_grad;
  for (const auto& bucket : buckets_) {
    std::vector<at::Tensor> pieces;
    for (size_t i : bucket) {
      auto& p = parameters_[i];
      if (!p.grad().defined()) p.mutable_grad() = at::zeros_like(p);
      pieces.push_back(p.grad().reshape({-1}));
    }
    at::Tensor flat = at::cat(pieces);  // [sum of numel]
    communicator_.all_reduce_sum(flat);
    int64_t offset = 0;
    for (size_t i : bucket) {
      auto& g = parameters_[i].mutable_grad();
      g.copy_(flat.narrow(0, offset, g.numel()).view_as(g));
      offset += g.numel();
    }
  }
}

}  // namespace ditlab
