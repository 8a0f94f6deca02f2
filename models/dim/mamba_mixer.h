// The Mamba (v1) mixer as DiM uses it (mamba_ssm 1.2 modules/mamba_simple.py, unidirectional):
//   x, z = in_proj(h)                                  (D -> 2 d_inner, no bias)
//   x = SiLU(causal depthwise conv1d(x))               (kernel d_conv, left padding)
//   dt, B, C = x_proj(x)                               (d_inner -> dt_rank + 2 d_state, no bias)
//   delta = softplus(dt_proj(dt))                      (dt_rank -> d_inner, with bias)
//   y = selective_scan(x, delta, A = -exp(A_log), B, C, D) * SiLU(z)
//   out = out_proj(y)                                  (d_inner -> D, no bias)
// with Mamba's initialisation of A_log (log 1..d_state), D (1) and dt_proj (weights
// U(+-dt_rank^-0.5), bias = softplus^-1 of dt ~ exp(U[log 1e-3, log 1e-1]), dt >= 1e-4).
#pragma once
#include "models/mup/width_roles.h"
#include <ATen/core/Tensor.h>
#include <torch/nn/module.h>
#include <torch/nn/modules/conv.h>
#include <torch/nn/modules/linear.h>
#include "models/layers/linear.h"

namespace ditlab {

struct MambaOptions {
  int64_t d_model = 0;
  int64_t d_state = 16;
  int64_t d_conv = 3;  // DiM uses 3 (Mamba's default is 4)
  int64_t expand = 2;
  int64_t dt_rank = 0;  // 0: ceil(d_model / 16)
};

class MambaMixerImpl : public torch::nn::Module {
 public:
  explicit MambaMixerImpl(MambaOptions options);
  at::Tensor forward(const at::Tensor& h);  // [b, L, D] -> [b, L, D]
  void declare_width_roles(WidthRoles roles) const;

  MambaOptions options;
  int64_t d_inner, dt_rank;
  Linear in_proj{nullptr}, x_proj{nullptr}, dt_proj{nullptr}, out_proj{nullptr};
  torch::nn::Conv1d conv1d{nullptr};
  at::Tensor A_log, D;
};
TORCH_MODULE(MambaMixer);

}  // namespace ditlab
