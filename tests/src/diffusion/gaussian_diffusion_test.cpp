#include <catch2/catch.hpp>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include <cmath>

#include "src/diffusion/gaussian_diffusion.h"
#include "src/diffusion/likelihoods.h"
#include "src/diffusion/noise_schedule.h"
#include "src/diffusion/samplers.h"

using namespace ditlab;

namespace {
GaussianDiffusion linear_diffusion(bool learn_sigma = true) {
  return GaussianDiffusion(make_betas("linear", 1000), learn_sigma);
}
at::Tensor steps(std::vector<int64_t> t) { return at::tensor(t, at::kLong); }
}  // namespace

TEST_CASE("the scaled-linear schedule is linear in sqrt(beta), as Stable Diffusion's", "[diffusion]") {
  auto betas = make_betas("scaled_linear", 1000, 0.00085, 0.012);
  REQUIRE(betas.size() == 1000);
  CHECK(betas.front() == Approx(0.00085));
  CHECK(betas.back() == Approx(0.012));
  const double mid = std::sqrt(0.00085) + (std::sqrt(0.012) - std::sqrt(0.00085)) * 500.0 / 999.0;
  CHECK(betas[500] == Approx(mid * mid));
  CHECK(std::sqrt(betas[2]) - std::sqrt(betas[1]) == Approx(std::sqrt(betas[999]) - std::sqrt(betas[998])));
  // Stable Diffusion's final alphas_cumprod is about 0.0047 (sqrt ~ 0.068): far less noise at
  // t = 999 than DiT's linear schedule (4e-5).
  GaussianDiffusion d(betas, false);
  CHECK(d.tables().alphas_cumprod[999].item<double>() == Approx(0.00466).epsilon(0.02));
}

TEST_CASE("the linear schedule spans 1e-4 .. 0.02 and abar is the running product", "[diffusion]") {
  auto betas = make_betas("linear", 1000);
  REQUIRE(betas.size() == 1000);
  CHECK(betas.front() == Approx(1e-4));
  CHECK(betas.back() == Approx(0.02));
  CHECK(betas[500] - betas[499] == Approx((0.02 - 1e-4) / 999));
  auto d = linear_diffusion();
  double prod = 1;
  for (int t = 0; t < 1000; ++t) {
    prod *= 1 - betas[t];
    if (t % 111 == 0) CHECK(d.tables().alphas_cumprod[t].item<double>() == Approx(prod).epsilon(1e-12));
  }
  // The schedule nearly destroys the signal: abar_999 ~ 4e-5.
  CHECK(d.tables().alphas_cumprod[999].item<double>() == Approx(4.04e-5).epsilon(0.01));
  // Any other T keeps the same total noise by scaling.
  CHECK(make_betas("linear", 100).back() == Approx(0.2));
  // ... up to where the last beta would reach 1 (T = 20 at the default beta_end 0.02).
  CHECK(make_betas("linear", 21).back() < 1.0);
  CHECK_THROWS_WITH(make_betas("linear", 20), Catch::Contains("diffusion.beta_end") &&
                                                  Catch::Contains("diffusion.steps 20"));
  auto cosine = make_betas("cosine", 1000);
  CHECK(*std::max_element(cosine.begin(), cosine.end()) <= 0.999);
}

TEST_CASE("q(x_t | x_0) has the closed-form moments", "[diffusion]") {
  auto d = linear_diffusion();
  at::manual_seed(0);
  const int64_t n = 20000;
  auto x0 = at::full({n, 1, 1, 1}, 0.7);
  for (int64_t step : {0, 100, 500, 999}) {
    auto t = at::full({n}, step, at::kLong);
    auto xt = d.q_sample(x0, t, at::randn({n, 1, 1, 1}));
    double abar = d.tables().alphas_cumprod[step].item<double>();
    CHECK(xt.mean().item<double>() == Approx(std::sqrt(abar) * 0.7).margin(0.03));
    CHECK(xt.var().item<double>() == Approx(1 - abar).epsilon(0.05).margin(1e-4));
    auto mv = d.q_mean_variance(x0.narrow(0, 0, 1), t.narrow(0, 0, 1));
    CHECK(mv.mean.item<double>() == Approx(std::sqrt(abar) * 0.7).epsilon(1e-6));
    CHECK(mv.variance.item<double>() == Approx(1 - abar).epsilon(1e-4));  // float32 near 1e-4
  }
}

TEST_CASE("the posterior q(x_{t-1} | x_t, x_0) equals Gaussian conditioning done by hand",
          "[diffusion]") {
  auto d = linear_diffusion();
  auto betas = make_betas("linear", 1000);
  auto x0 = at::tensor({0.3, -0.8, 0.1}).view({3, 1, 1, 1}).to(at::kFloat);
  auto xt = at::tensor({0.5, 1.2, -2.0}).view({3, 1, 1, 1}).to(at::kFloat);
  std::vector<int64_t> ts = {1, 250, 998};
  auto post = d.q_posterior(x0, xt, steps(ts));
  for (int i = 0; i < 3; ++i) {
    // Prior x_{t-1} | x_0 ~ N(sqrt(abar_prev) x0, 1 - abar_prev); likelihood
    // x_t | x_{t-1} ~ N(sqrt(alpha_t) x_{t-1}, beta_t). Multiply precisions.
    double abar_prev = 1;
    for (int s = 0; s < ts[i]; ++s) abar_prev *= 1 - betas[s];
    double beta = betas[ts[i]], alpha = 1 - beta;
    double precision = 1 / (1 - abar_prev) + alpha / beta;
    double var = 1 / precision;
    double mean = var * (std::sqrt(abar_prev) * x0[i].item<double>() / (1 - abar_prev) +
                         std::sqrt(alpha) * xt[i].item<double>() / beta);
    CHECK(post.mean[i].item<double>() == Approx(mean).epsilon(1e-4));
    CHECK(post.variance[i].item<double>() == Approx(var).epsilon(1e-4));
    CHECK(post.log_variance[i].item<double>() == Approx(std::log(var)).epsilon(1e-4));
  }
  // At t = 0 the log variance is clipped to the t = 1 value (the variance itself is 0).
  auto p0 = d.q_posterior(x0.narrow(0, 0, 1), xt.narrow(0, 0, 1), steps({0}));
  auto p1 = d.q_posterior(x0.narrow(0, 0, 1), xt.narrow(0, 0, 1), steps({1}));
  CHECK(p0.variance.item<double>() == 0.0);
  CHECK(p0.log_variance.item<double>() == Approx(p1.log_variance.item<double>()));
}

TEST_CASE("normal_kl matches the closed form", "[diffusion]") {
  at::manual_seed(1);
  auto m1 = at::randn({50}), m2 = at::randn({50}), lv1 = at::randn({50}), lv2 = at::randn({50});
  auto kl = normal_kl(m1, lv1, m2, lv2);
  for (int i = 0; i < 50; ++i) {
    double s1 = std::exp(0.5 * lv1[i].item<double>()), s2 = std::exp(0.5 * lv2[i].item<double>());
    double d = m1[i].item<double>() - m2[i].item<double>();
    double expected = std::log(s2 / s1) + (s1 * s1 + d * d) / (2 * s2 * s2) - 0.5;
    CHECK(kl[i].item<double>() == Approx(expected).epsilon(1e-4).margin(1e-6));
  }
  CHECK(normal_kl(at::zeros({1}), at::zeros({1}), at::zeros({1}), at::zeros({1})).item<double>() == 0.0);
}

TEST_CASE("the discretised Gaussian likelihood matches erf bins and sums to one", "[diffusion]") {
  const double mean = 0.13, log_scale = std::log(0.3);
  auto bins = at::linspace(-1, 1, 256, at::kDouble).to(at::kFloat);
  auto ll = discretized_gaussian_log_likelihood(bins, at::full({256}, mean), at::full({256}, log_scale));
  CHECK(ll.exp().sum().item<double>() == Approx(1.0).epsilon(1e-3));
  auto cdf = [&](double x) { return 0.5 * (1 + std::erf((x - mean) / (0.3 * std::sqrt(2.0)))); };
  for (int i : {0, 40, 128, 200, 255}) {
    double x = -1 + 2.0 * i / 255;
    double p = i == 0 ? cdf(x + 1 / 255.0) : i == 255 ? 1 - cdf(x - 1 / 255.0)
                                                      : cdf(x + 1 / 255.0) - cdf(x - 1 / 255.0);
    // The reference's tanh approximation of the CDF is good to about 1e-3.
    CHECK(std::exp(ll[i].item<double>()) == Approx(p).epsilon(5e-3).margin(2e-4));
  }
}

TEST_CASE("respacing keeps 0 and T-1 and preserves abar at the kept steps", "[diffusion]") {
  auto kept = space_timesteps(1000, "250");
  REQUIRE(kept.size() == 250);
  CHECK(kept.front() == 0);
  CHECK(kept.back() == 999);
  CHECK(kept[1] == 4);  // round(4.012)
  CHECK(space_timesteps(1000, "ddim50")[1] == 20);
  CHECK(space_timesteps(1000, "10,15").size() == 25);
  CHECK_THROWS(space_timesteps(1000, "2000"));
  CHECK(space_timesteps(1000, "ddim7").size() == 7);  // stride 143
  CHECK_THROWS(space_timesteps(1000, "ddim999"));       // no integer stride gives 999 steps
  CHECK_THROWS(space_timesteps(1000, "25x"));
  // One step starts from pure noise (respace.py's step 0 would return the noise).
  CHECK(space_timesteps(1000, "1") == std::vector<int64_t>{999});
  CHECK(space_timesteps(1000, "1,1") == std::vector<int64_t>{0, 500});
  auto base = linear_diffusion();
  auto spaced = base.respaced(kept);
  REQUIRE(spaced.num_timesteps() == 250);
  for (int i : {0, 1, 100, 249}) {
    CHECK(spaced.tables().alphas_cumprod[i].item<double>() ==
          Approx(base.tables().alphas_cumprod[kept[i]].item<double>()).epsilon(1e-9));
  }
  CHECK(at::equal(spaced.model_timesteps(steps({0, 1, 249})), steps({0, 4, 999})));
}

TEST_CASE("training losses: a perfect noise predictor has zero MSE, and vb uses the NLL at t = 0",
          "[diffusion]") {
  auto d = linear_diffusion(/*learn_sigma=*/true);
  at::manual_seed(2);
  auto x0 = at::rand({4, 1, 4, 4}) * 2 - 1;
  auto noise = at::randn({4, 1, 4, 4});
  auto t = steps({0, 10, 500, 999});
  ModelFn oracle = [&](const at::Tensor&, const at::Tensor&) {
    return at::cat({noise, at::zeros_like(noise)}, 1);  // exact eps, v = 0
  };
  auto losses = d.training_losses(oracle, x0, t, noise);
  CHECK(losses.mse.abs().max().item<double>() < 1e-10);
  // With the exact eps the model mean equals the true posterior mean, so for t > 0 the KL only
  // reflects the variance mismatch and is small and non-negative.
  CHECK(losses.vb.narrow(0, 1, 3).min().item<double>() >= -1e-6);
  auto x_t = d.q_sample(x0, t, noise);
  auto direct = d.vb_terms_bpd(oracle(x_t, t), x0, x_t, t);
  CHECK(at::allclose(direct, losses.vb));
  // t = 0: the decoder NLL in bits, which is large compared to the KL terms.
  CHECK(losses.vb[0].item<double>() > losses.vb[1].item<double>());
  CHECK(at::allclose(losses.loss, losses.mse + losses.vb));
}

TEST_CASE("the vb term trains the variance only (stop-gradient on the mean)", "[diffusion]") {
  auto d = linear_diffusion(true);
  auto x0 = at::rand({2, 1, 2, 2}) * 2 - 1;
  auto noise = at::randn({2, 1, 2, 2});
  auto out = at::randn({2, 2, 2, 2}).requires_grad_(true);
  auto t = steps({3, 400});
  auto x_t = d.q_sample(x0, t, noise);
  auto losses = d.losses_from_output(out, x0, x_t, t, noise);
  losses.vb.sum().backward();
  CHECK(out.grad().narrow(1, 0, 1).abs().max().item<double>() == 0.0);
  CHECK(out.grad().narrow(1, 1, 1).abs().max().item<double>() > 0.0);
}

TEST_CASE("DDPM and DDIM sample a known Gaussian data distribution", "[diffusion]") {
  // Data x0 ~ N(mu, s^2) per pixel. The optimal noise predictor is known in closed form:
  // E[eps | x_t] = sqrt(1 - abar) (x_t - sqrt(abar) mu) / (abar s^2 + 1 - abar).
  const double mu = 0.4, s = 0.5;
  auto base = GaussianDiffusion(make_betas("linear", 1000), /*learn_sigma=*/false);
  ModelFn optimal = [&](const at::Tensor& x, const at::Tensor& t_model) {
    auto abar = base.gather(base.tables().alphas_cumprod, t_model);
    return (1 - abar).sqrt() * (x - abar.sqrt() * mu) / (abar * s * s + 1 - abar);
  };
  SamplerOptions options;
  options.clip_denoised = false;
  // Samples of `spec`'s respacing from 4000 fixed noises.
  auto sample = [&](const char* sampler, const std::string& spec) {
    auto d = base.respaced(space_timesteps(1000, spec));
    auto gen = at::detail::createCPUGenerator(7);
    auto noise = at::randn({4000, 1, 2, 2}, gen, at::TensorOptions().dtype(at::kFloat));
    return std::string(sampler) == "ddpm" ? ddpm_sample(d, optimal, noise, gen, options)
                                          : ddim_sample(d, optimal, noise, gen, options);
  };
  for (const char* sampler : {"ddpm", "ddim"}) {
    // 250 steps: DDIM's discretisation shrinks the spread by ~6% at 50 steps, ~1% here.
    auto x = sample(sampler, "250");
    INFO(sampler);
    CHECK(x.mean().item<double>() == Approx(mu).margin(0.02));
    CHECK(x.std().item<double>() == Approx(s).epsilon(0.05));
  }
  // One DDIM step from T-1 is the optimal predictor's E[x0 | x_T], about mu: no longer noise.
  CHECK(sample("ddim", "1").mean().item<double>() == Approx(mu).margin(0.02));
}

TEST_CASE("a one-step linear schedule is beta_start rescaled, as np.linspace(lo, hi, 1)", "[diffusion]") {
  // 1000 * 1e-4 = 0.1; beta_end's 20 is never used.
  const auto betas = make_betas("linear", 1, 1e-4, 0.02);
  REQUIRE(betas.size() == 1);
  CHECK(betas[0] == Approx(0.1));
}
