// Ancestral DDPM and DDIM sampling loops over a (respaced) GaussianDiffusion.
// Guidance is the caller's business: the ModelFn it passes may already apply it.
#pragma once
#include <ATen/core/Generator.h>
#include <ATen/core/Tensor.h>

#include <functional>

#include "src/diffusion/gaussian_diffusion.h"

namespace ditlab {

struct SamplerOptions {
  bool clip_denoised = true;  // clamp the predicted x0 to [-1, 1] (pixels: yes; latents: no)
  double eta = 0.0;           // DDIM only: 0 deterministic, 1 DDPM-like
  // Called after each step with (steps done, total steps).
  std::function<void(int64_t, int64_t)> on_step;
  // Where the noise of each step comes from (a tensor shaped like its argument, on its device);
  // unset: `generator`. Lets a caller give every sample a stream of its own.
  std::function<at::Tensor(const at::Tensor&)> noise;
};

// x_T ~ noise, then p(x_{t-1} | x_t) down to t = 0 (no noise added at the last step).
at::Tensor ddpm_sample(const GaussianDiffusion& diffusion, const ModelFn& model,
                       const at::Tensor& noise, at::Generator generator,
                       const SamplerOptions& options);

// DDIM (Song et al.): x_{t-1} = sqrt(abar_prev) x0 + sqrt(1 - abar_prev - sigma^2) eps + sigma z.
at::Tensor ddim_sample(const GaussianDiffusion& diffusion, const ModelFn& model,
                       const at::Tensor& noise, at::Generator generator,
                       const SamplerOptions& options);

}  // namespace ditlab
