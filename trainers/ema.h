// Exponential moving average of a model's weights (every parameter, the frozen pos_embed too,
// as the official DiT's update_ema). The shadow is a second backbone of the same architecture.
#pragma once
#include <ATen/core/Tensor.h>

#include <memory>
#include <vector>

#include "models/backbone.h"

namespace ditlab {

class Ema {
 public:
  // Copies `model`'s weights into `shadow` (a decay-0 start, as DiT's train.py).
  Ema(const Backbone& model, std::shared_ptr<Backbone> shadow);

  // shadow = decay * shadow + (1 - decay) * model
  void update(const Backbone& model, double decay);

  // shadow += weight * (model - shadow) over the trainable parameters, with `weight` (1 - decay)
  // a 0-dim float32 tensor on their device, never read back: 0 leaves the shadow as it is (a
  // skipped step). Frozen parameters never change, nor do their averages. `scratch`, one tensor
  // per trainable parameter in the model's order and of its shape, is overwritten (the training
  // step passes the gradients, which it no longer needs).
  void update(const Backbone& model, const at::Tensor& weight, const std::vector<at::Tensor>& scratch);

  // The decay at optimizer step `step` (0-based): `decay`, or with warm-up
  // min(decay, (1 + step) / (10 + step)) so that short runs do not sample from stale weights.
  static double decay_at(int64_t step, double decay, bool warmup);

  Backbone& shadow() { return *shadow_; }
  std::shared_ptr<Backbone> shadow_ptr() { return shadow_; }

 private:
  std::shared_ptr<Backbone> shadow_;
};

}  // namespace ditlab
