#include "src/diffusion/likelihoods.h"

#include <ATen/ATen.h>

#include <cmath>

namespace ditlab {

at::Tensor normal_kl(const at::Tensor& mean1, const at::Tensor& logvar1, const at::Tensor& mean2,
                     const at::Tensor& logvar2) {
  return 0.5 * (-1.0 + logvar2 - logvar1 + at::exp(logvar1 - logvar2) +
                (mean1 - mean2).pow(2) * at::exp(-logvar2));
}

at::Tensor approx_standard_normal_cdf(const at::Tensor& x) {
  return 0.5 * (1.0 + at::tanh(std::sqrt(2.0 / M_PI) * (x + 0.044715 * x.pow(3))));
}

at::Tensor discretized_gaussian_log_likelihood(const at::Tensor& x, const at::Tensor& means,
                                               const at::Tensor& log_scales) {
  constexpr double kHalfBin = 1.0 / 255.0;
  // The reference clamps probabilities at 1e-12 before the log to keep it finite.
  constexpr double kMinProb = 1e-12;
  auto centered = x - means;
  auto inv_stdv = at::exp(-log_scales);
  auto cdf_plus = approx_standard_normal_cdf(inv_stdv * (centered + kHalfBin));
  auto cdf_min = approx_standard_normal_cdf(inv_stdv * (centered - kHalfBin));
  auto log_cdf_plus = at::log(cdf_plus.clamp_min(kMinProb));
  auto log_one_minus_cdf_min = at::log((1.0 - cdf_min).clamp_min(kMinProb));
  auto log_cdf_delta = at::log((cdf_plus - cdf_min).clamp_min(kMinProb));
  // Edges at +-0.999 rather than +-1 so that values rounded to the extreme bins land in them.
  return at::where(x < -0.999, log_cdf_plus,
                   at::where(x > 0.999, log_one_minus_cdf_min, log_cdf_delta));
}

at::Tensor mean_flat(const at::Tensor& x) { return x.flatten(1).mean(1); }

}  // namespace ditlab
