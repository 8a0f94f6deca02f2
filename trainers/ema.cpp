#include "trainers/ema.h"

#include <ATen/ATen.h>
#include <torch/autograd.h>

#include <algorithm>

#include "src/common/compat.h"
#include "src/io/module_weights.h"

namespace ditlab {

Ema::Ema(const Backbone& model, std::shared_ptr<Backbone> shadow) : shadow_(std::move(shadow)) {
  load_state_dict(*shadow_, state_dict(model), "EMA initialisation");
  for (auto& p : shadow_->parameters()) p.set_requires_grad(false);
}

void Ema::update(const Backbone& model, double decay) {
  torch::NoGradGuard no_grad;
  auto source = model.parameters();
  auto target = shadow_->parameters();
  // One fused pass per list instead of a kernel launch per tensor.
  at::_foreach_mul_(target, decay);
  at::_foreach_add_(target, source, 1.0 - decay);
}

void Ema::update(const Backbone& model, const at::Tensor& weight,
                 const std::vector<at::Tensor>& scratch) {
  torch::NoGradGuard no_grad;
  std::vector<at::Tensor> source, target;
  auto shadow = shadow_->parameters();
  auto params = model.parameters();
  for (size_t i = 0; i < params.size(); ++i) {
    if (!params[i].requires_grad()) continue;
    source.push_back(params[i]);
    target.push_back(shadow[i]);
  }
  TORCH_CHECK(scratch.size() == source.size(), "Ema::update: ", scratch.size(),
              " scratch tensors for ", source.size(), " trainable parameters");
  // Multi-tensor kernels that take the weight as a tensor: the scratch holds weight * (model -
  // shadow), which is then added.
  compat::foreach_copy_(scratch, source);
  at::_foreach_sub_(scratch, target);
  compat::foreach_mul_(scratch, weight);
  at::_foreach_add_(target, scratch);
}

double Ema::decay_at(int64_t step, double decay, bool warmup) {
  if (!warmup) return decay;
  double s = static_cast<double>(step);
  return std::min(decay, (1.0 + s) / (10.0 + s));
}

}  // namespace ditlab
