// Closed-form pieces of the variational bound (improved DDPM, as in the official DiT code).
#pragma once
#include <ATen/core/Tensor.h>

namespace ditlab {

// KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2))), elementwise, in nats.
at::Tensor normal_kl(const at::Tensor& mean1, const at::Tensor& logvar1, const at::Tensor& mean2,
                     const at::Tensor& logvar2);

// The tanh approximation of the standard normal CDF used by the reference decoder NLL.
at::Tensor approx_standard_normal_cdf(const at::Tensor& x);

// log-likelihood of x (in [-1, 1], 256 bins of width 2/255) under a Gaussian discretised to those
// bins; the outermost bins extend to infinity. Elementwise, in nats.
at::Tensor discretized_gaussian_log_likelihood(const at::Tensor& x, const at::Tensor& means,
                                               const at::Tensor& log_scales);

// Mean over every dimension but the first: [N, ...] -> [N].
at::Tensor mean_flat(const at::Tensor& x);

}  // namespace ditlab
