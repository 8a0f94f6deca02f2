#include "src/diffusion/samplers.h"

#include <ATen/ATen.h>
#include <torch/autograd.h>

namespace ditlab {
namespace {

at::Tensor step_indices(int64_t i, const at::Tensor& x) {
  return at::full({x.size(0)}, i, at::TensorOptions().dtype(at::kLong).device(x.device()));
}

at::Tensor fresh_noise(const at::Tensor& like, at::Generator& generator, const SamplerOptions& options) {
  if (options.noise) return options.noise(like);
  // Drawn on the CPU so that a seed gives the same samples on every device.
  return at::randn(like.sizes(), generator, at::TensorOptions().dtype(at::kFloat))
      .to(like.device());
}

}  // namespace

at::Tensor ddpm_sample(const GaussianDiffusion& diffusion, const ModelFn& model,
                       const at::Tensor& noise, at::Generator generator,
                       const SamplerOptions& options) {
  torch::NoGradGuard no_grad;
  auto x = noise;
  const int64_t T = diffusion.num_timesteps();
  for (int64_t i = T - 1; i >= 0; --i) {
    auto t = step_indices(i, x);
    auto out = model(x, diffusion.model_timesteps(t));
    auto pred = diffusion.p_mean_variance(out, x, t, options.clip_denoised);
    x = pred.mean;
    if (i > 0) x = x + (0.5 * pred.log_variance).exp() * fresh_noise(x, generator, options);
    if (options.on_step) options.on_step(T - i, T);
  }
  return x;
}

at::Tensor ddim_sample(const GaussianDiffusion& diffusion, const ModelFn& model,
                       const at::Tensor& noise, at::Generator generator,
                       const SamplerOptions& options) {
  torch::NoGradGuard no_grad;
  const auto& tb = diffusion.tables();
  auto x = noise;
  const int64_t T = diffusion.num_timesteps();
  for (int64_t i = T - 1; i >= 0; --i) {
    auto t = step_indices(i, x);
    auto out = model(x, diffusion.model_timesteps(t));
    auto pred = diffusion.p_mean_variance(out, x, t, options.clip_denoised);
    // Re-derive eps from the (possibly clipped) x0, as the reference does.
    auto eps = diffusion.eps_from_xstart(x, t, pred.pred_xstart);
    auto abar = diffusion.gather(tb.alphas_cumprod, t);
    auto abar_prev = diffusion.gather(tb.alphas_cumprod_prev, t);
    auto sigma = options.eta * ((1.0 - abar_prev) / (1.0 - abar)).sqrt() *
                 (1.0 - abar / abar_prev).sqrt();
    x = pred.pred_xstart * abar_prev.sqrt() + (1.0 - abar_prev - sigma.pow(2)).sqrt() * eps;
    if (i > 0 && options.eta > 0.0) x = x + sigma * fresh_noise(x, generator, options);
    if (options.on_step) options.on_step(T - i, T);
  }
  return x;
}

}  // namespace ditlab
