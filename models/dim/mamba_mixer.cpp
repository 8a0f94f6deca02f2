#include "models/dim/mamba_mixer.h"

#include <ATen/ATen.h>
#include <torch/autograd.h>
#include <torch/nn/init.h>

#include <cmath>

#include "models/dim/selective_scan.h"
#include "src/common/error.h"
#include "models/mup/activation_probe.h"

namespace ditlab {

MambaMixerImpl::MambaMixerImpl(MambaOptions o) : options(o) {
  if (o.d_model < 1 || o.d_state < 1 || o.d_conv < 1 || o.expand < 1) {
    throw ConfigError("Mamba mixer: d_model, d_state, d_conv and expand must be >= 1");
  }
  d_inner = o.expand * o.d_model;
  dt_rank = o.dt_rank > 0 ? o.dt_rank : (o.d_model + 15) / 16;
  auto linear = [](int64_t in, int64_t out, bool bias) {
    return Linear(torch::nn::LinearOptions(in, out).bias(bias));
  };
  in_proj = register_module("in_proj", linear(o.d_model, 2 * d_inner, false));
  conv1d = register_module("conv1d", torch::nn::Conv1d(torch::nn::Conv1dOptions(d_inner, d_inner, o.d_conv)
                                                           .groups(d_inner)
                                                           .padding(o.d_conv - 1)));
  x_proj = register_module("x_proj", linear(d_inner, dt_rank + 2 * o.d_state, false));
  dt_proj = register_module("dt_proj", linear(dt_rank, d_inner, true));
  out_proj = register_module("out_proj", linear(d_inner, o.d_model, false));
  A_log = register_parameter("A_log", at::log(at::arange(1, o.d_state + 1, at::kFloat)).repeat({d_inner, 1}));
  D = register_parameter("D", at::ones({d_inner}));

  torch::NoGradGuard no_grad;
  const double bound = 1.0 / std::sqrt(static_cast<double>(dt_rank));
  torch::nn::init::uniform_(dt_proj->weight, -bound, bound);
  // dt ~ exp(U[log 1e-3, log 1e-1]), at least 1e-4; the bias is its inverse softplus.
  auto dt = at::exp(at::rand({d_inner}) * (std::log(0.1) - std::log(1e-3)) + std::log(1e-3)).clamp_min(1e-4);
  dt_proj->bias.copy_(dt + at::log(-at::expm1(-dt)));
}

void MambaMixerImpl::declare_width_roles(WidthRoles roles) const {
  // dt_rank = ceil(D / 16) grows with the width, so x_proj and dt_proj are hidden too; x_proj's
  // last 2 d_state rows (the scan's B and C) have a fixed fan-out: readout rows.
  for (const char* name : {"in_proj", "x_proj", "out_proj"}) {
    roles.layer(name, WidthRole::kHidden, InitLaw::kFanIn, /*bias=*/false);
  }
  roles.output_rows("x_proj.weight", 2 * options.d_state);
  roles.layer("dt_proj", WidthRole::kHidden, InitLaw::kFanIn);  // bias: dt's inverse softplus
  roles.layer("conv1d", WidthRole::kVector, InitLaw::kFanIn);   // depthwise, fan-in d_conv
  roles.param("A_log", WidthRole::kVector, InitLaw::kConstant);
  roles.param("D", WidthRole::kVector, InitLaw::kConstant);
}

at::Tensor MambaMixerImpl::forward(const at::Tensor& h) {
  const int64_t length = h.size(1);
  auto xz = in_proj->forward(h).transpose(1, 2);  // [b, 2 d_inner, L]
  auto x = xz.narrow(1, 0, d_inner), z = xz.narrow(1, d_inner, d_inner);
  x = at::silu(conv1d->forward(x).narrow(2, 0, length));  // causal: keep the first L outputs
  // The linears get contiguous inputs: for a transposed or narrowed one, at::matmul runs a
  // batched product against the expanded weight instead of one matrix product (on CPUs about
  // 10% of a DiM step, measured with the profiler), and the copies cost less.
  auto parts = x_proj->forward(x.transpose(1, 2).contiguous());  // [b, L, r + 2n]
  auto dt = parts.narrow(2, 0, dt_rank).contiguous();
  auto B = parts.narrow(2, dt_rank, options.d_state).transpose(1, 2);                    // [b, n, L]
  auto C = parts.narrow(2, dt_rank + options.d_state, options.d_state).transpose(1, 2);  // [b, n, L]
  auto delta = at::softplus(dt_proj->forward(dt)).transpose(1, 2);                       // [b, d, L]
  auto y = selective_scan(x, delta, -at::exp(A_log), B, C, D);
  y = y * at::silu(z);
  return probe("mixer", out_proj->forward(y.transpose(1, 2).contiguous()));
}

}  // namespace ditlab
