// DiT-MoE's sparse mixture-of-experts layer ("Scaling Diffusion Transformers to 16 Billion
// Parameters", feizc/DiT-MoE models.py SparseMoeBlock), replacing the MLP of every DiT block:
//   router: softmax(x W^T) over E experts (W [E, D], no bias), top-k (weights not renormalised)
//   y = sum over the k chosen experts of weight * SwiGLU_e(x) + SharedSwiGLU(x)
// Experts are bias-free SwiGLU MLPs with hidden ratio * D; the shared expert has hidden 2D.
// Dispatch groups the (token, choice) pairs by expert and runs each expert once on its slice.
// In training the load-balancing loss alpha * sum_i f_i P_i is kept for the backbone to return
// (f_i = E * share of assignments to expert i, P_i = mean router probability of expert i).
#pragma once
#include <ATen/core/Tensor.h>
#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/linear.h>
#include "models/layers/linear.h"
#include "models/mup/mup_modules.h"
#include "models/mup/width_roles.h"

namespace ditlab {

struct MoeOptions {
  int64_t num_experts = 0;        // 0: a dense MLP (plain DiT)
  int64_t experts_per_token = 2;  // k
  double capacity_factor = 0.0;   // 0: no limit; else at most ceil(cf * tokens * k / E) per expert
  double aux_loss_weight = 0.005; // alpha (the paper's; the official code uses 0.01)
};

// down(SiLU(gate(x)) * up(x)), no biases (official MoeMLP; keys gate_proj, up_proj, down_proj).
class SwiGluImpl : public torch::nn::Module {
 public:
  SwiGluImpl(int64_t dim, int64_t hidden);
  at::Tensor forward(const at::Tensor& x);
  void declare_width_roles(WidthRoles roles) const;  // all hidden
  Linear gate_proj{nullptr}, up_proj{nullptr}, down_proj{nullptr};
};
TORCH_MODULE(SwiGlu);

// The router: one weight [E, D] (key "weight"), kaiming-uniform initialised. Under µP it is a
// readout (fan-in D grows, E does not).
class MoeGateImpl : public torch::nn::Module, public MupReadout {
 public:
  MoeGateImpl(int64_t dim, int64_t num_experts);
  at::Tensor logits(const at::Tensor& tokens) const;  // [M, D] -> [M, E]
  at::Tensor weight;
};
TORCH_MODULE(MoeGate);

// Which experts each token went to, for the step's statistics and for tests.
struct MoeRouting {
  at::Tensor expert_index;   // [M, k] int64
  at::Tensor expert_weight;  // [M, k]
  at::Tensor probabilities;  // [M, E] router softmax
  at::Tensor tokens_per_expert;  // [E] int64, after the capacity limit
  at::Tensor aux_loss;       // scalar in training, undefined otherwise
};

class SparseMoeImpl : public torch::nn::Module {
 public:
  SparseMoeImpl(int64_t dim, double hidden_ratio, const MoeOptions& options);
  at::Tensor forward(const at::Tensor& x);  // [N, T, D] -> [N, T, D]

  // The routing of the last forward call (also in eval mode).
  const MoeRouting& last_routing() const { return routing_; }
  void declare_width_roles(WidthRoles roles) const;

  MoeOptions options;
  torch::nn::ModuleList experts{nullptr};
  MoeGate gate{nullptr};
  SwiGlu shared_experts{nullptr};

 private:
  MoeRouting routing_;
};
TORCH_MODULE(SparseMoe);

}  // namespace ditlab
