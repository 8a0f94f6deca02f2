#include "trainers/step_means.h"

#include <ATen/ATen.h>

#include <algorithm>

namespace ditlab {

StepMeans::StepMeans(int64_t log_every, int64_t steps)
    : every_(std::max<int64_t>(1, std::min(log_every, steps))), steps_(steps) {}

bool StepMeans::add(int64_t step, const std::vector<at::Tensor>& values) {
  if (sums_.empty()) {
    for (const auto& v : values) sums_.push_back(v.detach().to(at::kDouble));
  } else {
    for (size_t i = 0; i < values.size(); ++i) sums_[i] = sums_[i] + values[i].detach().to(at::kDouble);
  }
  ++count_;
  return count_ == every_ || step + 1 == steps_;
}

std::vector<double> StepMeans::take() {
  std::vector<double> means;
  if (!sums_.empty()) {
    const at::Tensor all = (at::stack(sums_) / static_cast<double>(count_)).to(at::kCPU);
    for (int64_t i = 0; i < all.size(0); ++i) means.push_back(all[i].item<double>());
  }
  sums_.clear();
  count_ = 0;
  return means;
}

}  // namespace ditlab
