#include "trainers/ema.h"

#include <ATen/ATen.h>
#include <torch/autograd.h>

#include <algorithm>

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

double Ema::decay_at(int64_t step, double decay, bool warmup) {
  if (!warmup) return decay;
  double s = static_cast<double>(step);
  return std::min(decay, (1.0 + s) / (10.0 + s));
}

}  // namespace ditlab
