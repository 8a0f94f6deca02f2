#include "trainers/device_adamw.h"

#include <ATen/ATen.h>
#include <torch/autograd.h>
#include <torch/optim/adamw.h>

#include <map>
#include <tuple>

#include "src/common/compat.h"
#include "trainers/multi_tensor_adamw.h"

namespace ditlab {

// Parameters of one group, dtype and step count: one fused call, one step tensor.
struct DeviceAdamW::Bucket {
  size_t group = 0;
  std::vector<at::Tensor> params, exp_avgs, exp_avg_sqs;
  std::vector<torch::optim::AdamWParamState*> states;
  at::Tensor step;  // 0-dim float32 on the device: the updates applied so far
};

DeviceAdamW::DeviceAdamW(torch::optim::AdamW& optimizer, std::vector<double> lr_multipliers,
                         c10::Device device)
    : optimizer_(optimizer),
      lr_multipliers_(std::move(lr_multipliers)),
      device_(device),
      fused_(compat::fused_adamw_supported()) {
  for (auto& group : optimizer_.param_groups()) {
    if (static_cast<const torch::optim::AdamWOptions&>(group.options()).amsgrad()) {
      TORCH_CHECK(false, "DeviceAdamW: amsgrad is not supported");
    }
  }
  if (fused_) {
    for (size_t g = 0; g < lr_multipliers_.size(); ++g) {
      group_lr_.push_back(at::zeros({}, at::TensorOptions().dtype(at::kFloat).device(device_)));
    }
  }
}

DeviceAdamW::~DeviceAdamW() = default;

void DeviceAdamW::set_lr(double lr) {
  auto& groups = optimizer_.param_groups();
  for (size_t g = 0; g < groups.size(); ++g) {
    const double value = lr * lr_multipliers_[g];
    static_cast<torch::optim::AdamWOptions&>(groups[g].options()).lr(value);
    if (fused_) group_lr_[g].fill_(value);
  }
}

// Every parameter of the step has a gradient (the step zero-fills missing ones), so every one
// gets its state here, as its first update would give it.
void DeviceAdamW::build_buckets() {
  buckets_.clear();
  auto& groups = optimizer_.param_groups();
  for (size_t g = 0; g < groups.size(); ++g) {
    std::map<std::tuple<c10::ScalarType, int64_t>, size_t> index;
    for (auto& p : groups[g].params()) {
      auto* state = &adamw_state_of(optimizer_, p);
      auto key = std::make_tuple(p.scalar_type(), state->step());
      auto it = index.find(key);
      if (it == index.end()) {
        it = index.emplace(key, buckets_.size()).first;
        Bucket bucket;
        bucket.group = g;
        bucket.step = at::full({}, static_cast<double>(state->step()),
                               at::TensorOptions().dtype(at::kFloat).device(device_));
        buckets_.push_back(std::move(bucket));
      }
      Bucket& bucket = buckets_[it->second];
      bucket.params.push_back(p);
      bucket.exp_avgs.push_back(state->exp_avg());
      bucket.exp_avg_sqs.push_back(state->exp_avg_sq());
      bucket.states.push_back(state);
    }
  }
}

void DeviceAdamW::step(const at::Tensor& found_inf) {
  torch::NoGradGuard no_grad;
  if (!fused_) {
    if (found_inf.item<float>() != 0) return;
    multi_tensor_adamw_step(optimizer_);
    return;
  }
  if (buckets_.empty()) build_buckets();
  auto& groups = optimizer_.param_groups();
  for (auto& bucket : buckets_) {
    const auto& options = static_cast<const torch::optim::AdamWOptions&>(groups[bucket.group].options());
    std::vector<at::Tensor> grads;
    grads.reserve(bucket.params.size());
    for (const auto& p : bucket.params) {
      TORCH_CHECK(p.grad().defined(), "DeviceAdamW: a parameter has no gradient (the fused update "
                  "steps every parameter; give unreached ones zeros)");
      grads.push_back(p.grad());
    }
    // As PyTorch's fused AdamW: the count includes this update, and is taken back when skipped.
    bucket.step.add_(1);
    const std::vector<at::Tensor> steps(bucket.params.size(), bucket.step);
    compat::fused_adamw_(bucket.params, grads, bucket.exp_avgs, bucket.exp_avg_sqs, steps,
                         group_lr_[bucket.group], std::get<0>(options.betas()),
                         std::get<1>(options.betas()), options.weight_decay(), options.eps(),
                         found_inf);
    bucket.step.sub_(found_inf);
  }
}

void DeviceAdamW::reload() { buckets_.clear(); }

void DeviceAdamW::sync_to_host() {
  for (auto& bucket : buckets_) {
    const auto step = static_cast<int64_t>(bucket.step.item<float>());
    for (auto* state : bucket.states) state->step(step);
  }
}

}  // namespace ditlab
