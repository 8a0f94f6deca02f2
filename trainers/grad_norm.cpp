#include "trainers/grad_norm.h"

#include <ATen/ATen.h>
#include <torch/autograd.h>

namespace ditlab {

at::Tensor clip_grad_norm(const std::vector<at::Tensor>& parameters, double max_norm) {
  torch::NoGradGuard no_grad;
  std::vector<at::Tensor> grads;
  for (const auto& p : parameters) {
    if (p.grad().defined()) grads.push_back(p.grad());
  }
  if (grads.empty()) return at::zeros({});
  std::vector<at::Tensor> norms;
  norms.reserve(grads.size());
  for (const auto& g : grads) norms.push_back(g.to(at::kFloat).norm());
  auto total = at::stack(norms).norm();
  if (max_norm > 0) {
    auto factor = (max_norm / (total + 1e-6)).clamp_max(1.0);
    for (auto& g : grads) g.mul_(factor.to(g.scalar_type()));
  }
  return total;
}

}  // namespace ditlab
