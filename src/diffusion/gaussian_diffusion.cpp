#include "src/diffusion/gaussian_diffusion.h"

#include <ATen/ATen.h>
#include <torch/autograd.h>

#include <cmath>

#include "src/common/error.h"
#include "src/diffusion/likelihoods.h"
#include "src/diffusion/noise_schedule.h"

namespace ditlab {
namespace {
at::Tensor to_tensor(const std::vector<double>& v) {
  return at::tensor(v, at::TensorOptions().dtype(at::kDouble));
}
}  // namespace

GaussianDiffusion::GaussianDiffusion(std::vector<double> betas, bool learn_sigma,
                                     std::vector<int64_t> timestep_map)
    : betas_(std::move(betas)), learn_sigma_(learn_sigma), timestep_map_(std::move(timestep_map)) {
  const int64_t T = num_timesteps();
  if (T < 1) throw ConfigError("a diffusion process needs at least one step");
  for (double b : betas_) {
    if (!(b > 0.0 && b <= 1.0)) throw ConfigError("betas must lie in (0, 1]");
  }
  if (timestep_map_.empty()) {
    for (int64_t i = 0; i < T; ++i) timestep_map_.push_back(i);
  }
  DITLAB_ASSERT(static_cast<int64_t>(timestep_map_.size()) == T, "timestep map size");

  std::vector<double> ac(T), ac_prev(T), post_var(T), c1(T), c2(T);
  double prod = 1.0;
  for (int64_t i = 0; i < T; ++i) {
    ac_prev[i] = prod;
    prod *= 1.0 - betas_[i];
    ac[i] = prod;
  }
  for (int64_t i = 0; i < T; ++i) {
    post_var[i] = betas_[i] * (1.0 - ac_prev[i]) / (1.0 - ac[i]);
    c1[i] = betas_[i] * std::sqrt(ac_prev[i]) / (1.0 - ac[i]);
    c2[i] = (1.0 - ac_prev[i]) * std::sqrt(1.0 - betas_[i]) / (1.0 - ac[i]);
  }
  // The posterior variance is 0 at t = 0; its log is clipped to the t = 1 value (a single-step
  // process has no t = 1 and keeps beta_0).
  std::vector<double> post_log(T), fixed_large(T);
  for (int64_t i = 0; i < T; ++i) {
    double v = i == 0 ? (T > 1 ? post_var[1] : betas_[0]) : post_var[i];
    post_log[i] = std::log(v);
    // FIXED_LARGE variance (used without learned sigma): beta_t, with the posterior variance at
    // t = 0 for a better decoder likelihood.
    fixed_large[i] = std::log(i == 0 ? (T > 1 ? post_var[1] : betas_[0]) : betas_[i]);
  }
  auto& tb = tables_;
  tb.betas = to_tensor(betas_);
  tb.alphas_cumprod = to_tensor(ac);
  tb.alphas_cumprod_prev = to_tensor(ac_prev);
  tb.sqrt_alphas_cumprod = tb.alphas_cumprod.sqrt();
  tb.sqrt_one_minus_alphas_cumprod = (1.0 - tb.alphas_cumprod).sqrt();
  tb.sqrt_recip_alphas_cumprod = (1.0 / tb.alphas_cumprod).sqrt();
  tb.sqrt_recipm1_alphas_cumprod = (1.0 / tb.alphas_cumprod - 1.0).sqrt();
  tb.posterior_variance = to_tensor(post_var);
  tb.posterior_log_variance_clipped = to_tensor(post_log);
  tb.posterior_mean_coef1 = to_tensor(c1);
  tb.posterior_mean_coef2 = to_tensor(c2);
  tb.log_betas = tb.betas.log();
  tb.fixed_large_log_variance = to_tensor(fixed_large);
  tb.timestep_map = at::tensor(timestep_map_, at::TensorOptions().dtype(at::kLong));
}

GaussianDiffusion GaussianDiffusion::respaced(const std::vector<int64_t>& kept) const {
  std::vector<int64_t> map;
  for (int64_t k : kept) map.push_back(timestep_map_.at(k));
  return GaussianDiffusion(respace_betas(betas_, kept), learn_sigma_, map);
}

void GaussianDiffusion::to(c10::Device device) {
  for (at::Tensor* table :
       {&tables_.betas, &tables_.alphas_cumprod, &tables_.alphas_cumprod_prev,
        &tables_.sqrt_alphas_cumprod, &tables_.sqrt_one_minus_alphas_cumprod,
        &tables_.sqrt_recip_alphas_cumprod, &tables_.sqrt_recipm1_alphas_cumprod,
        &tables_.posterior_variance, &tables_.posterior_log_variance_clipped,
        &tables_.posterior_mean_coef1, &tables_.posterior_mean_coef2, &tables_.log_betas,
        &tables_.fixed_large_log_variance, &tables_.timestep_map}) {
    *table = table->to(device);
  }
}

at::Tensor GaussianDiffusion::gather(const at::Tensor& table, const at::Tensor& t) const {
  // Gathered in float64, then cast: the reference does the same (numpy, then float). The cast
  // rounds alike on every device.
  auto values = table.index_select(0, t.to(table.device())).to(at::kFloat).to(t.device());
  return values.view({t.size(0), 1, 1, 1});  // [N] -> [N, 1, 1, 1]
}

at::Tensor GaussianDiffusion::model_timesteps(const at::Tensor& t) const {
  return tables_.timestep_map.index_select(0, t.to(tables_.timestep_map.device())).to(t.device());
}

at::Tensor GaussianDiffusion::q_sample(const at::Tensor& x0, const at::Tensor& t,
                                       const at::Tensor& noise) const {
  return gather(tables_.sqrt_alphas_cumprod, t) * x0 +
         gather(tables_.sqrt_one_minus_alphas_cumprod, t) * noise;
}

GaussianDiffusion::Gaussian GaussianDiffusion::q_mean_variance(const at::Tensor& x0,
                                                               const at::Tensor& t) const {
  auto mean = gather(tables_.sqrt_alphas_cumprod, t) * x0;
  // 1 - abar in float64 before the cast: in float32 it loses digits near t = 0.
  auto one_minus = 1.0 - tables_.alphas_cumprod;
  return {mean, gather(one_minus, t).expand_as(x0), gather(one_minus.log(), t).expand_as(x0)};
}

GaussianDiffusion::Gaussian GaussianDiffusion::q_posterior(const at::Tensor& x0,
                                                           const at::Tensor& x_t,
                                                           const at::Tensor& t) const {
  auto mean = gather(tables_.posterior_mean_coef1, t) * x0 +
              gather(tables_.posterior_mean_coef2, t) * x_t;
  return {mean, gather(tables_.posterior_variance, t).expand_as(x_t),
          gather(tables_.posterior_log_variance_clipped, t).expand_as(x_t)};
}

at::Tensor GaussianDiffusion::eps_from_xstart(const at::Tensor& x_t, const at::Tensor& t,
                                              const at::Tensor& pred_xstart) const {
  return (gather(tables_.sqrt_recip_alphas_cumprod, t) * x_t - pred_xstart) /
         gather(tables_.sqrt_recipm1_alphas_cumprod, t);
}

GaussianDiffusion::Prediction GaussianDiffusion::p_mean_variance(const at::Tensor& model_output,
                                                                 const at::Tensor& x_t,
                                                                 const at::Tensor& t,
                                                                 bool clip_denoised) const {
  const int64_t C = x_t.size(1);
  at::Tensor eps, log_variance;
  if (learn_sigma_) {
    if (model_output.size(1) != 2 * C) {
      throw ShapeError("learned-sigma diffusion expects " + std::to_string(2 * C) +
                       " output channels, the model gave " + std::to_string(model_output.size(1)));
    }
    auto parts = model_output.split(C, 1);  // [N, 2C, H, W] -> eps [N, C, H, W], v [N, C, H, W]
    eps = parts[0];
    // v in [-1, 1] interpolates the log variance between the clipped posterior and beta_t.
    auto frac = (parts[1] + 1.0) / 2.0;
    log_variance = frac * gather(tables_.log_betas, t) +
                   (1.0 - frac) * gather(tables_.posterior_log_variance_clipped, t);
  } else {
    eps = model_output;
    log_variance = gather(tables_.fixed_large_log_variance, t).expand_as(x_t);
  }
  auto pred_xstart = gather(tables_.sqrt_recip_alphas_cumprod, t) * x_t -
                     gather(tables_.sqrt_recipm1_alphas_cumprod, t) * eps;
  if (clip_denoised) pred_xstart = pred_xstart.clamp(-1.0, 1.0);
  auto mean = q_posterior(pred_xstart, x_t, t).mean;
  return {mean, log_variance.exp(), log_variance, pred_xstart, eps};
}

at::Tensor GaussianDiffusion::vb_terms_bpd(const at::Tensor& model_output, const at::Tensor& x0,
                                           const at::Tensor& x_t, const at::Tensor& t) const {
  auto truth = q_posterior(x0, x_t, t);
  auto pred = p_mean_variance(model_output, x_t, t, /*clip_denoised=*/false);
  auto kl = mean_flat(normal_kl(truth.mean, truth.log_variance, pred.mean, pred.log_variance)) /
            std::log(2.0);
  auto nll = -mean_flat(discretized_gaussian_log_likelihood(x0, pred.mean,
                                                            0.5 * pred.log_variance)) /
             std::log(2.0);
  return at::where(t == 0, nll, kl);
}

GaussianDiffusion::Losses GaussianDiffusion::training_losses(const ModelFn& model,
                                                             const at::Tensor& x0,
                                                             const at::Tensor& t,
                                                             const at::Tensor& noise) const {
  auto x_t = q_sample(x0, t, noise);
  auto output = model(x_t, model_timesteps(t));
  return losses_from_output(output, x0, x_t, t, noise);
}

GaussianDiffusion::Losses GaussianDiffusion::losses_from_output(const at::Tensor& model_output,
                                                                const at::Tensor& x0,
                                                                const at::Tensor& x_t,
                                                                const at::Tensor& t,
                                                                const at::Tensor& noise) const {
  const int64_t C = x0.size(1);
  auto output = model_output.to(at::kFloat);  // losses in fp32 even under autocast
  auto eps = learn_sigma_ ? output.narrow(1, 0, C) : output;
  auto mse = mean_flat((noise - eps).pow(2));
  at::Tensor vb = at::zeros_like(mse);
  if (learn_sigma_) {
    // Stop-gradient on the mean: the VLB trains only the variance head (improved DDPM).
    auto frozen = at::cat({eps.detach(), output.narrow(1, C, C)}, 1);
    vb = vb_terms_bpd(frozen, x0, x_t, t);
  }
  return {mse + vb, mse, vb};
}

}  // namespace ditlab
