#include <catch2/catch.hpp>

#include <ATen/ATen.h>
#include <torch/autograd.h>

#include <cmath>

#include "models/dim/mamba_mixer.h"

using namespace ditlab;

namespace {
// Mamba's recurrent (inference "step") form, token by token: a rolling window of the last
// d_conv inputs for the causal conv and the SSM state h, written independently of forward().
at::Tensor recurrent_forward(MambaMixerImpl& m, const at::Tensor& input) {
  const int64_t batch = input.size(0), length = input.size(1), k = m.options.d_conv;
  auto window = at::zeros({batch, m.d_inner, k});
  auto state = at::zeros({batch, m.d_inner, m.options.d_state});
  auto A = -at::exp(m.A_log);
  auto conv_w = m.conv1d->weight.squeeze(1);  // [d_inner, k]
  std::vector<at::Tensor> outs;
  for (int64_t l = 0; l < length; ++l) {
    auto xz = m.in_proj->forward(input.select(1, l));  // [b, 2 d_inner]
    auto x = xz.narrow(1, 0, m.d_inner), z = xz.narrow(1, m.d_inner, m.d_inner);
    window = at::cat({window.narrow(2, 1, k - 1), x.unsqueeze(2)}, 2);
    x = at::silu((window * conv_w).sum(2) + m.conv1d->bias);
    auto parts = m.x_proj->forward(x);
    auto dt = parts.narrow(1, 0, m.dt_rank);
    auto B = parts.narrow(1, m.dt_rank, m.options.d_state);
    auto C = parts.narrow(1, m.dt_rank + m.options.d_state, m.options.d_state);
    auto delta = at::softplus(m.dt_proj->forward(dt));  // [b, d_inner]
    state = at::exp(delta.unsqueeze(2) * A) * state + delta.unsqueeze(2) * B.unsqueeze(1) * x.unsqueeze(2);
    auto y = (state * C.unsqueeze(1)).sum(2) + m.D * x;
    outs.push_back(m.out_proj->forward(y * at::silu(z)));
  }
  return at::stack(outs, 1);
}
}  // namespace

TEST_CASE("the Mamba mixer's parallel form equals its token-by-token recurrence", "[dim]") {
  torch::manual_seed(11);
  MambaOptions o;
  o.d_model = 24;
  MambaMixer mixer(o);
  CHECK(mixer->dt_rank == 2);  // ceil(24 / 16)
  CHECK(mixer->d_inner == 48);
  torch::NoGradGuard no_grad;
  auto x = at::randn({2, 21, 24});
  auto parallel = mixer->forward(x);
  auto recurrent = recurrent_forward(*mixer, x);
  CHECK(parallel.sizes() == at::IntArrayRef({2, 21, 24}));
  CHECK(at::allclose(parallel, recurrent, 1e-4, 1e-5));
  // Causal: changing the last token leaves every earlier output as it was.
  auto changed = x.clone();
  changed.select(1, 20).normal_();
  auto after = mixer->forward(changed);
  CHECK(at::allclose(after.narrow(1, 0, 20), parallel.narrow(1, 0, 20), 1e-5, 1e-6));
  CHECK_FALSE(at::allclose(after.select(1, 20), parallel.select(1, 20), 1e-3, 1e-3));
}

TEST_CASE("the Mamba mixer starts with Mamba's initialisation", "[dim]") {
  torch::manual_seed(12);
  MambaOptions o;
  o.d_model = 32;
  MambaMixer mixer(o);
  CHECK(at::allclose(mixer->A_log[5], at::log(at::arange(1, 17, at::kFloat))));
  CHECK(at::equal(mixer->D, at::ones({64})));
  auto dt = at::softplus(mixer->dt_proj->bias);  // the initial step sizes
  CHECK(dt.min().item<double>() >= 1e-3 * 0.999);
  CHECK(dt.max().item<double>() <= 0.1 * 1.001);
  CHECK(mixer->dt_proj->weight.abs().max().item<double>() <= 1.0 / std::sqrt(2.0));
  CHECK_FALSE(mixer->in_proj->bias.defined());
}
