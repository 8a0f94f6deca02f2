// Gaussian diffusion as in the official DiT code (ported there from improved DDPM / ADM):
// epsilon prediction, optionally learned variance (interpolated between beta_t and the clipped
// posterior variance), hybrid loss MSE + VLB with a stop-gradient on the mean.
// No backbone knowledge here: the model is any function (x_t, t) -> output.
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

#include <functional>
#include <vector>

namespace ditlab {

// (x_t [N,C,H,W], original timesteps [N] int64) -> model output [N, C or 2C, H, W].
using ModelFn = std::function<at::Tensor(const at::Tensor& x_t, const at::Tensor& t)>;

class GaussianDiffusion {
 public:
  // `timestep_map[i]` is the original timestep fed to the model at step i of this (possibly
  // respaced) process; empty means the identity.
  GaussianDiffusion(std::vector<double> betas, bool learn_sigma,
                    std::vector<int64_t> timestep_map = {});

  // The process whose steps are `kept` original timesteps of this one (sampling with fewer steps).
  GaussianDiffusion respaced(const std::vector<int64_t>& kept) const;

  int64_t num_timesteps() const { return static_cast<int64_t>(betas_.size()); }
  bool learn_sigma() const { return learn_sigma_; }
  const std::vector<double>& betas() const { return betas_; }

  // Per-step constants gathered for a batch of step indices t [N]: float32 [N, 1, 1, 1].
  at::Tensor gather(const at::Tensor& table, const at::Tensor& t) const;

  // q(x_t | x_0) = N(sqrt(abar_t) x0, (1 - abar_t) I)
  at::Tensor q_sample(const at::Tensor& x0, const at::Tensor& t, const at::Tensor& noise) const;

  struct Gaussian {
    at::Tensor mean, variance, log_variance;
  };
  Gaussian q_mean_variance(const at::Tensor& x0, const at::Tensor& t) const;
  // q(x_{t-1} | x_t, x_0); log_variance is clipped at t = 0 (replaced by the t = 1 value).
  Gaussian q_posterior(const at::Tensor& x0, const at::Tensor& x_t, const at::Tensor& t) const;

  struct Prediction {
    at::Tensor mean, variance, log_variance, pred_xstart, eps;
  };
  // p(x_{t-1} | x_t) from the model output at step indices t.
  Prediction p_mean_variance(const at::Tensor& model_output, const at::Tensor& x_t,
                             const at::Tensor& t, bool clip_denoised) const;

  // Original timesteps for step indices t (what the model is fed).
  at::Tensor model_timesteps(const at::Tensor& t) const;

  struct Losses {
    at::Tensor loss, mse, vb;  // per sample [N]; vb is zeros without learned sigma
  };
  Losses training_losses(const ModelFn& model, const at::Tensor& x0, const at::Tensor& t,
                         const at::Tensor& noise) const;
  // The same from an already computed model output (for callers that need the output too).
  Losses losses_from_output(const at::Tensor& model_output, const at::Tensor& x0,
                            const at::Tensor& x_t, const at::Tensor& t,
                            const at::Tensor& noise) const;

  // The vb term alone: KL(q(x_{t-1}|x_t,x_0) || p(x_{t-1}|x_t)) in bits, or the decoder NLL at
  // t = 0. Per sample [N].
  at::Tensor vb_terms_bpd(const at::Tensor& model_output, const at::Tensor& x0,
                          const at::Tensor& x_t, const at::Tensor& t) const;

  at::Tensor eps_from_xstart(const at::Tensor& x_t, const at::Tensor& t,
                             const at::Tensor& pred_xstart) const;

  // Moves the tables to `device`. Gathers for batches there then read nothing back to the host:
  // with the tables on the CPU, each gather for a GPU batch is a device-to-host copy of the
  // timesteps, that is a wait for all queued work (and impossible inside a CUDA graph capture).
  void to(c10::Device device);

  // Tables (float64; on the CPU unless moved, and gathered on the tables' device).
  struct Tables {
    at::Tensor betas, alphas_cumprod, alphas_cumprod_prev, sqrt_alphas_cumprod,
        sqrt_one_minus_alphas_cumprod, sqrt_recip_alphas_cumprod, sqrt_recipm1_alphas_cumprod,
        posterior_variance, posterior_log_variance_clipped, posterior_mean_coef1,
        posterior_mean_coef2, log_betas, fixed_large_log_variance, timestep_map;
  };
  const Tables& tables() const { return tables_; }

 private:
  std::vector<double> betas_;
  bool learn_sigma_;
  std::vector<int64_t> timestep_map_;
  Tables tables_;
};

}  // namespace ditlab
