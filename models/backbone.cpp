#include "models/backbone.h"

#include <ATen/ATen.h>

#include <sstream>

#include "src/common/error.h"

namespace ditlab {

at::Tensor Backbone::forward_with_cfg(const at::Tensor& x, const at::Tensor& t,
                                      const at::Tensor& y, double scale, int64_t cfg_channels) {
  const int64_t n = x.size(0);
  if (n % 2 != 0) throw ShapeError("forward_with_cfg needs an even batch ([cond; uncond])");
  const int64_t guided = cfg_channels == 0 ? shape().in_channels : cfg_channels;
  auto half = x.narrow(0, 0, n / 2);
  auto out = forward(at::cat({half, half}, 0), t, y).out;  // [N, C_out, H, W]
  if (guided > out.size(1)) {
    throw ShapeError("cfg_channels " + std::to_string(guided) + " exceeds the model's " +
                     std::to_string(out.size(1)) + " output channels");
  }
  auto eps = out.narrow(1, 0, guided);
  auto rest = out.narrow(1, guided, out.size(1) - guided);
  auto cond = eps.narrow(0, 0, n / 2), uncond = eps.narrow(0, n / 2, n / 2);
  auto guided_eps = uncond + scale * (cond - uncond);
  return at::cat({at::cat({guided_eps, guided_eps}, 0), rest}, 1);
}

void Backbone::check_input(const char* model, const at::Tensor& x) const {
  const BackboneShape s = shape();
  if (x.dim() == 4 && x.size(1) == s.in_channels && x.size(2) == s.input_size &&
      x.size(3) == s.input_size) {
    return;
  }
  std::ostringstream msg;
  msg << model << " expects x of shape [N, " << s.in_channels << ", " << s.input_size << ", "
      << s.input_size << "], got " << x.sizes();
  throw ShapeError(msg.str());
}

void Backbone::begin_sampling(const SamplingCache& cache) {
  if (cache.interval > 1) {
    throw ConfigError("sample.cache_interval " + std::to_string(cache.interval) +
                      ": this backbone has no feature cache (Skip-Cache needs a skip-dit model); "
                      "use sample.cache_interval=1");
  }
}

OptimizerScaling Backbone::optimizer_scaling(const std::string& name) const {
  auto it = optimizer_scaling_.find(name);
  return it == optimizer_scaling_.end() ? OptimizerScaling{} : it->second;
}

}  // namespace ditlab
